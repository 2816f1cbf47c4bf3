"""What the gateway's routes share: settings, the job system (sync and async sides), the artifact store,
the Celery app, the detection client, the keys, the worker registry, and the open event streams."""

from dataclasses import dataclass
from typing import Annotated

import httpx
from celery import Celery
from fastapi import Depends, Request

from gateway.detection_client import DetectionForwarder
from gateway.event_hub import JobEventHub
from gateway.keys import KeyRing
from gateway.rate_limit import RateLimiter
from gateway.settings import GatewaySettings
from gateway.streams import StreamSlots
from services.jobs.artifacts import ArtifactStore
from services.jobs.interface import AsyncJobSystem, JobSystem
from services.jobs.monitoring import WorkerRegistry
from services.jobs.settings import JobSettings


@dataclass
class AppState:
    settings: GatewaySettings
    job_settings: JobSettings
    store: JobSystem  # the job system (sync side: runs in the thread pool)
    jobs: AsyncJobSystem  # its async side: reads and waits on the event loop
    artifacts: ArtifactStore
    celery: Celery
    detection: httpx.AsyncClient  # health checks
    keys: KeyRing
    workers: WorkerRegistry
    streams: StreamSlots  # open event streams per owner, on this process
    events: JobEventHub  # one reader per followed job, shared by its streams
    rate: RateLimiter  # the per-owner request count, shared with the other replicas through the job store
    forwarder: DetectionForwarder | None = None  # /detect's bodies, as received, to the detection service


async def get_state(request: Request) -> AppState:  # async: FastAPI runs a sync one on a thread pool
    return request.app.state.detbooth


State = Annotated[AppState, Depends(get_state)]
