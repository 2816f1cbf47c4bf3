"""The real stack for the console and CLI tests: Redis, the gateway, a Celery worker and the detection
service."""

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from tests.integration.conftest import base_env
from tests.procs import Proc, free_port, python_cmd, start_gateway, start_worker


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def start_detection(env: dict[str, str], log_dir: Path) -> tuple[Proc, str]:
    """The detection service offline (the PyPI-shipped fallback model), small buckets, two threads."""
    port = free_port()
    env = {
        **env,
        "DETBOOTH_DETECTION_PORT": str(port),
        "DETBOOTH_DETECTION_HOST": "127.0.0.1",
        "DETBOOTH_DETECTION_PADDLEX_CACHE_DIR": str(log_dir / "no-paddlex-cache"),
        "DETBOOTH_DETECTION_ALLOW_DOWNLOAD": "false",
        "DETBOOTH_DETECTION_BUCKET_SIDES": "[320, 480, 640]",
        "DETBOOTH_DETECTION_CPU_THREADS": "2",
        "DETBOOTH_DETECTION_MAX_QUEUE_DELAY_MS": "5",
        "DETBOOTH_DETECTION_PRECISION": "fp32",  # no quantization + guard at start
    }
    proc = Proc("detection", python_cmd("-m", "services.detection"), env, log_dir)
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(f"{url}/readyz", timeout=180)
    return proc, url


def start_stack(redis_url: str, data_dir: Path, log_dir: Path, **extra: str) -> Stack:
    """Detection service, gateway and worker on free loopback ports."""
    env = base_env(redis_url, data_dir, DETBOOTH_RATE_LIMIT_PER_MINUTE="10000", **extra)
    stack = Stack(url="", env=env)
    try:
        proc, det_url = start_detection(env, log_dir)
        stack.procs.append(proc)
        env["DETBOOTH_DETECTION_URL"] = det_url
        gw, stack.url = start_gateway(env, log_dir)
        stack.procs.append(gw)
        stack.procs.append(start_worker(env, log_dir))
    except BaseException:
        stack.stop()
        raise
    return stack


def text_image(path: Path, lines=("DETBOOTH 2026", "text detection"), size=(480, 200)) -> Path:
    """A white image with black printed text: something a text detector finds boxes in."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    try:
        from PIL import ImageFont

        font = ImageFont.load_default(size=32)
    except (TypeError, OSError):
        font = None
    for i, line in enumerate(lines):
        draw.text((24, 30 + i * 70), line, fill="black", font=font)
    img.save(path)
    return path


def subject_images(folder: Path, n: int = 3, size: int = 96) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (size, size), (40 * i, 120, 200 - 30 * i))
        ImageDraw.Draw(img).ellipse((16, 16, size - 16, size - 16), fill=(230, 180, 40))
        img.save(folder / f"subject{i}.png")
    return folder
