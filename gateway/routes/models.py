"""GET /models: the base model and the caller's fine-tuned models, and beside them the detection models."""

import logging
from datetime import datetime

import httpx
from fastapi import APIRouter
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gateway.auth import Caller
from gateway.state import State
from services.contracts.catalog import ModelList, ModelView
from services.contracts.detect import DetectionModelList

router = APIRouter(tags=["models"])
log = logging.getLogger(__name__)
DETECTION_MODELS_TIMEOUT_S = 2.0  # the console calls /models first: a hung detection service must not hold it


async def detection_models(client: httpx.AsyncClient) -> DetectionModelList | None:
    try:
        r = await client.get("/v1/models", timeout=DETECTION_MODELS_TIMEOUT_S)
        r.raise_for_status()
        return DetectionModelList.model_validate_json(r.content)
    except (httpx.HTTPError, ValidationError) as e:
        log.warning("detection models unavailable: %s", type(e).__name__)
        return None


@router.get("/models", response_model=ModelList)
async def list_models(state: State, owner: Caller) -> ModelList:
    base = ModelView(id="base", kind="base", base_model=state.settings.sd_base_model or "tiny random test model")
    tuned = []
    for info in await run_in_threadpool(state.store.list_models, owner):  # the store's client blocks
        created = info.get("created_at")
        tuned.append(ModelView(
            id=info["id"], kind="finetune", base_model=info.get("base_model"), method=info.get("method"),
            instance_prompt=info.get("instance_prompt"),
            created_at=datetime.fromisoformat(created) if isinstance(created, str) else None,
        ))
    return ModelList(models=[base, *tuned], detection=await detection_models(state.detection))
