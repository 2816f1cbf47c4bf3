"""Fixtures shared by every test: a private Redis server and process launchers on loopback."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.fault_table import FaultTable
from tests.procs import Proc, start_redis
from tests.procs import detection_service, real_stack, shared_worker_stack  # noqa: F401  (session fixtures)

# No test may reach a model hub: every process the suite starts inherits this. The one test of the online
# download path lifts it and replaces the download with a copy of a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_configure(config):
    config.pluginmanager.register(FaultTable(), "detbooth-fault-table")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        # torch's intra-op threads default to one per core: with a pytest-xdist worker per core they would
        # oversubscribe the cores (and spin) whenever two workers compute at once
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def redis_server(logs_dir) -> Iterator[str]:
    """A real Redis server of the test session's own, on a free loopback port."""
    proc, url = start_redis(logs_dir)
    yield url
    proc.stop()


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server)


@pytest.fixture
def stack_env(redis_server, key_prefix, tmp_path) -> dict[str, str]:
    """Environment for the gateway and workers of one test: own key prefix, own data folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETBOOTH_")}
    env.update({
        "DETBOOTH_REDIS_URL": redis_server,
        "DETBOOTH_KEY_PREFIX": key_prefix,
        "DETBOOTH_DATA_DIR": str(tmp_path / "data"),
        "DETBOOTH_API_KEYS": "key-alice,key-bob",
        "DETBOOTH_DETECTION_URL": "http://127.0.0.1:9",  # nothing listens there unless a test sets it
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    })
    return env


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts; all stopped at its end."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()
