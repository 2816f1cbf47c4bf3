"""Liveness, readiness (with the workers per queue) and Prometheus metrics."""

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from gateway.metrics import QUEUES, job_system_metrics
from gateway.state import State

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready when the job store answers. Beside it: the detection service's readiness and, per queue, whether a
    worker serves it (from the workers' heartbeats in Redis: no worker is asked, so this never waits on one)."""
    checks: dict = {}
    try:
        checks["redis"] = {"ok": bool(await run_in_threadpool(state.store.ping))}
    except Exception as e:
        checks["redis"] = {"ok": False, "error": type(e).__name__}
    try:
        r = await state.detection.get("/readyz", timeout=2.0)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        checks["detection"] = {"ok": r.status_code == 200, **({"model": body["model"]} if "model" in body else {}),
                               **({k: body[k] for k in ("fallback", "warning") if k in body})}
    except Exception as e:
        checks["detection"] = {"ok": False, "error": type(e).__name__}
    try:
        checks["workers"] = await run_in_threadpool(state.workers.by_queue, QUEUES)
    except Exception as e:
        checks["workers"] = {"error": type(e).__name__}
    ready = checks["redis"]["ok"]
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response:
    body = generate_latest()
    try:
        body += await run_in_threadpool(job_system_metrics, state)
    except Exception as e:  # Redis away: the gateway's own metrics still answer
        log.warning("job system metrics unavailable: %s", type(e).__name__)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
