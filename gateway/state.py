"""What the gateway's routes share: settings, the job store, the artifact store, the Celery app, HTTP client."""

from dataclasses import dataclass
from typing import Annotated

import httpx
from celery import Celery
from fastapi import Depends, Request

from gateway.keys import KeyRing
from gateway.settings import GatewaySettings
from services.jobs.artifacts import ArtifactStore
from services.jobs.monitoring import WorkerRegistry
from services.jobs.settings import JobSettings
from services.jobs.store import JobStore


@dataclass
class AppState:
    settings: GatewaySettings
    job_settings: JobSettings
    store: JobStore
    artifacts: ArtifactStore
    celery: Celery
    detection: httpx.AsyncClient
    keys: KeyRing
    workers: WorkerRegistry


async def get_state(request: Request) -> AppState:  # async: FastAPI runs a sync one on a thread pool
    return request.app.state.detbooth


State = Annotated[AppState, Depends(get_state)]
