"""Fixtures of the gateway tests: the gateway in-process on the real Redis, and the session's shared gateway +
Celery worker for tests that need jobs to run."""

import io

import httpx
import pytest
from PIL import Image

from tests.procs import base_env, inprocess_gateway

__all__ = ["ALICE", "BOB", "base_env", "png_bytes"]

ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"X-API-Key": "key-bob"}


def png_bytes(size=(96, 96), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def gateway(redis_server, tmp_path_factory):
    """One in-process gateway for a test module (no worker): (client, env)."""
    env = base_env(redis_server, tmp_path_factory.mktemp("data"), DETBOOTH_RATE_LIMIT_PER_MINUTE="10000",
                   DETBOOTH_MAX_TOTAL_BYTES="3000000", DETBOOTH_MAX_FILE_BYTES="1000000",
                   DETBOOTH_DETECTION_TIMEOUT_S="3")
    with inprocess_gateway(env) as client:
        yield client, env


@pytest.fixture
def client(gateway):
    return gateway[0]


@pytest.fixture
def worker_stack(shared_worker_stack):
    """The session's gateway and real Celery worker; an httpx client as key-alice over real HTTP."""
    with httpx.Client(base_url=shared_worker_stack.url, headers=ALICE, timeout=120) as client:
        yield client
