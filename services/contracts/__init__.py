"""Contracts every side speaks (gateway, detection service, worker, client): request and result models, error
types and the one RFC 9457 renderer. Torch-free: `problems`, `detect`, `finetune`, `generate`, `jobs`, `catalog`,
`account` import only pydantic (and yaml); `http` adds FastAPI for the two HTTP services."""
