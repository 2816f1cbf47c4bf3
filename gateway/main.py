"""The gateway app: wiring only."""

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from gateway.background import start_background
from gateway.console import console_app
from gateway.detection_client import DetectionForwarder, make_client
from gateway.errors import document_problems, install_error_handlers
from gateway.event_hub import JobEventHub
from gateway.keys import KeyRing
from gateway.middleware import MetricsAndHeaders
from gateway.rate_limit import RateLimiter
from gateway.routes import artifacts, deletion, detect, finetune, generate, health, jobs, models, whoami
from gateway.settings import GatewaySettings
from gateway.state import AppState
from gateway.streams import StreamSlots
from gateway.uploads import BodySizeLimit
from services.jobs.artifacts import ArtifactStore
from services.jobs.celery_app import make_celery
from services.jobs.monitoring import WorkerRegistry, monitoring_client
from services.jobs.redis_system import AsyncRedisJobSystem, RedisJobSystem
from services.jobs.settings import JobSettings

log = logging.getLogger("gateway")


def create_app(settings: GatewaySettings | None = None, job_settings: JobSettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    job_settings = job_settings or JobSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        celery = make_celery(job_settings)
        jobs = AsyncRedisJobSystem.from_settings(job_settings)
        state = AppState(
            settings=settings, job_settings=job_settings,
            store=RedisJobSystem.from_settings(job_settings, celery=celery),
            jobs=jobs,
            artifacts=ArtifactStore(job_settings.artifacts_location), celery=celery,
            detection=make_client(settings.detection_url, settings.detection_connect_timeout_s,
                                  settings.detection_timeout_s),
            keys=KeyRing(settings.api_keys, settings.api_keys_file),
            workers=WorkerRegistry(monitoring_client(job_settings.redis_url), job_settings.key_prefix,
                                   ttl_s=3 * job_settings.worker_heartbeat_s),
            streams=StreamSlots(settings.max_streams_per_key),
            events=JobEventHub(jobs),
            rate=RateLimiter(jobs, settings.rate_limit_per_minute),
            forwarder=DetectionForwarder(settings.detection_url, settings.detection_connect_timeout_s,
                                         settings.detection_timeout_s),
        )
        if not state.keys.configured:
            log.warning("no API keys configured: serving without authentication on %s only",
                        settings.gateway_host)
        app.state.detbooth = state
        stop_background = await run_in_threadpool(start_background, state.store, state.artifacts, job_settings)
        yield
        stop_background()
        await state.detection.aclose()
        await state.events.aclose()
        await state.rate.aclose()
        await state.forwarder.aclose()
        await state.jobs.aclose()

    app = FastAPI(title="DetBooth", version="0.1.0", lifespan=lifespan,
                  description="Text detection (PP-OCR) and DreamBooth personalisation of Stable Diffusion.")
    install_error_handlers(app)
    document_problems(app)
    for module in (detect, finetune, generate, jobs, deletion, artifacts, models, whoami, health):
        app.include_router(module.router)
    app.mount("/ui", console_app(), name="ui")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins.split(","),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "X-API-Key",
                                                                         "Content-Type", "Idempotency-Key", "Prefer"])
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_total_bytes,
                       read_timeout_s=settings.body_read_timeout_s)
    app.add_middleware(MetricsAndHeaders)
    return app
