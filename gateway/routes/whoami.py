"""GET /whoami: the caller's owner id, its limits and the bytes its artifacts take."""

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from gateway.auth import Caller
from gateway.state import State
from services.contracts.account import Storage, WhoAmI

router = APIRouter(tags=["lifecycle"])


@router.get("/whoami", response_model=WhoAmI)
async def whoami(state: State, owner: Caller) -> WhoAmI:
    s = state.settings
    used = await run_in_threadpool(state.store.storage_used, owner)
    limits: dict[str, int | float | None] = {
        "rate_limit_per_minute": s.rate_limit_per_minute,
        "storage_quota_bytes": s.storage_quota_bytes,
        **s.limits.model_dump(include={"max_files", "max_file_bytes", "max_total_bytes", "max_image_pixels",
                                       "max_pages"}),
        "max_wait_s": s.max_wait_s,
    }
    for name in ("max_active_finetunes", "max_active_generates", "max_train_steps", "max_class_images",
                 "max_resolution"):  # per-owner job limits, where this deployment has them
        if hasattr(s, name):
            limits[name] = getattr(s, name)
    return WhoAmI(owner=owner, limits=limits, storage=Storage(bytes=used, quota_bytes=s.storage_quota_bytes))
