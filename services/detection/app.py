"""FastAPI app factory: wiring only. Routes: POST /v1/detect, GET /v1/models, /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.contracts.detect import DetectionModelList, DetectResponse
from services.contracts.problems import Problem, ProblemDetails

from .errors import BodyLimit, install_error_handlers, status_of
from .request_parsing import read_detect_request
from .service import DetectionService
from .settings import DetectionSettings

DETECT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "limit_side_len": {"type": "integer"}, "limit_type": {"enum": ["min", "max", "resize_long"]},
                "thresh": {"type": "number"}, "box_thresh": {"type": "number"},
                "unclip_ratio": {"type": "number"}, "box_type": {"enum": ["quad", "poly"]},
                "pages": {"type": "string", "examples": ["1-3,5"]}, "dpi": {"type": "integer"},
                "previews": {"type": "boolean"}, "model": {"type": "string"}}}},
            "application/json": {"schema": {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "byte"}},
                "params": {"type": "object"}}}},
        },
    }
}
PROBLEMS = {code: {"model": ProblemDetails, "content": {"application/problem+json": {}}} for code in (413, 415, 422, 503, 504)}


def get_service(request: Request) -> DetectionService:
    return request.app.state.service


Service = Annotated[DetectionService, Depends(get_service)]


def create_app(settings: DetectionSettings | None = None) -> FastAPI:
    settings = settings or DetectionSettings()
    service = DetectionService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        starting = asyncio.create_task(service.start())
        yield
        if not starting.done():
            await asyncio.wait([starting], timeout=30)
        await service.stop()

    app = FastAPI(title="DetBooth text detection", version="1", lifespan=lifespan)
    app.state.service = service
    install_error_handlers(app, settings.retry_after_s)
    app.add_middleware(BodyLimit, limit=settings.limits.max_total_bytes)

    @app.post("/v1/detect", response_model=DetectResponse, openapi_extra=DETECT_BODY, responses=PROBLEMS)
    async def detect(request: Request, service: Service) -> DetectResponse:
        if not service.ready:
            raise Problem(503, "Service not ready", f"state: {service.state}", type_="not-ready",
                          headers={"Retry-After": str(settings.retry_after_s)})
        started = time.perf_counter()
        status = 500
        try:
            images, params = await read_detect_request(request, settings)
            served = service.model_for(params.model)  # 422 naming the loaded models for any other
            results = await served.detector.detect(images, params)
            status = 200
        except Exception as exc:
            status = status_of(exc)
            raise
        finally:
            service.metrics.requests.labels(str(status)).inc()
            service.metrics.latency.observe(time.perf_counter() - started)
        service.metrics.images.inc(len(results))
        return DetectResponse(model=served.model.display_name, precision=served.precision, results=results)

    @app.get("/v1/models", response_model=DetectionModelList)
    async def models(service: Service) -> DetectionModelList:
        """The models this deployment loads, with the precision each one serves at."""
        return DetectionModelList(default=service.default, models=service.models())

    @app.get("/healthz")
    async def healthz(service: Service) -> dict:
        return {"status": "ok", "state": str(service.state)}

    @app.get("/readyz")
    async def readyz(service: Service) -> JSONResponse:
        return JSONResponse(service.readiness(), status_code=200 if service.ready else 503)

    @app.get("/metrics")
    async def metrics(service: Service) -> Response:
        service.metrics.queue_depth.set(service.queue_depth)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
