"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.state import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: State) -> JSONResponse:
    """Ready when the job store answers; the detection service's own readiness is reported beside it."""
    from starlette.concurrency import run_in_threadpool

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
    ready = checks["redis"]["ok"]
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
