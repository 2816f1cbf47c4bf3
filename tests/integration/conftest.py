import io
import os
import uuid

import httpx
import pytest
from PIL import Image

from tests.procs import start_gateway, start_worker

ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"X-API-Key": "key-bob"}


def png_bytes(size=(96, 96), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def base_env(redis_url: str, data_dir, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETBOOTH_")}
    env.update({
        "DETBOOTH_REDIS_URL": redis_url,
        "DETBOOTH_KEY_PREFIX": f"t{uuid.uuid4().hex[:10]}",
        "DETBOOTH_DATA_DIR": str(data_dir),
        "DETBOOTH_API_KEYS": "key-alice,key-bob",
        "DETBOOTH_DETECTION_URL": "http://127.0.0.1:9",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    })
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def gateway(redis_server, logs_dir, tmp_path_factory):
    """One gateway for a test module (no worker): (url, env)."""
    env = base_env(redis_server, tmp_path_factory.mktemp("data"), DETBOOTH_RATE_LIMIT_PER_MINUTE="10000",
                   DETBOOTH_MAX_TOTAL_BYTES="3000000", DETBOOTH_MAX_FILE_BYTES="1000000",
                   DETBOOTH_DETECTION_TIMEOUT_S="3")
    proc, url = start_gateway(env, logs_dir)
    yield url, env
    proc.stop()


@pytest.fixture
def client(gateway):
    with httpx.Client(base_url=gateway[0], timeout=30) as c:
        yield c


@pytest.fixture
def worker_stack(redis_server, logs_dir, tmp_path, procs):
    """A gateway and a real Celery worker of this test's own; an httpx client as key-alice."""
    env = base_env(redis_server, tmp_path / "data")
    gw, url = start_gateway(env, logs_dir)
    procs.append(gw)
    procs.append(start_worker(env, logs_dir))
    with httpx.Client(base_url=url, headers=ALICE, timeout=120) as client:
        yield client
