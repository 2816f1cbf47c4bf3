"""GET /models: the base model and the caller's fine-tuned models."""

from datetime import datetime

from fastapi import APIRouter

from gateway.auth import Caller
from gateway.schemas import ModelList, ModelView
from gateway.state import State

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList)
def list_models(state: State, owner: Caller) -> ModelList:
    base = ModelView(id="base", kind="base", base_model=state.settings.sd_base_model or "tiny random test model")
    tuned = []
    for info in state.store.list_models(owner):
        created = info.get("created_at")
        tuned.append(ModelView(
            id=info["id"], kind="finetune", base_model=info.get("base_model"), method=info.get("method"),
            instance_prompt=info.get("instance_prompt"),
            created_at=datetime.fromisoformat(created) if isinstance(created, str) else None,
        ))
    return ModelList(models=[base, *tuned])
