"""One set of upload limits: the gateway and the detection service read them from the same variables
(`DETBOOTH_MAX_*`). At each limit a request passes both; one over fails at the gateway, and the detection
service never sees it (its request counter does not move); sent straight to the service it fails there too."""

from __future__ import annotations

import io
import re

import httpx
import pytest
from PIL import Image, PngImagePlugin

from tests.document_support import blank_pdf
from tests.integration.conftest import ALICE, base_env
from tests.integration.detection.conftest import DetectionServer, service_env
from tests.procs import start_gateway

LIMITS = {"max_files": 3, "max_file_bytes": 40_000, "max_total_bytes": 100_000, "max_image_pixels": 300 * 200,
          "max_pages": 4, "document_dpi": 144}
LIMITS_ENV = {f"DETBOOTH_{k.upper()}": str(v) for k, v in LIMITS.items()}


def png(size=(64, 48), nbytes: int | None = None) -> bytes:
    """A valid PNG, padded with a text chunk to exactly `nbytes` when asked."""
    def encode(pad: int) -> bytes:
        info = PngImagePlugin.PngInfo()
        if pad:
            info.add_text("pad", "x" * pad)
        out = io.BytesIO()
        Image.new("RGB", size, (240, 240, 240)).save(out, "PNG", pnginfo=info if pad else None)
        return out.getvalue()

    data = encode(0)
    if nbytes is None:
        return data
    pad = nbytes - len(encode(1)) + 1
    data = encode(pad)
    assert len(data) == nbytes, (len(data), nbytes)
    return data


@pytest.fixture(scope="module")
def stack(redis_server, logs_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    detection = DetectionServer(service_env(tmp) | LIMITS_ENV, tmp / "service.log")
    detection.wait_ready()
    env = base_env(redis_server, tmp / "data", DETBOOTH_DETECTION_URL=detection.url, **LIMITS_ENV)
    gateway, url = start_gateway(env, logs_dir)
    yield url, detection
    gateway.stop()
    detection.stop()


def served(detection: DetectionServer) -> float:
    """Requests the detection service has answered, whatever their status."""
    text = httpx.get(f"{detection.url}/metrics").text
    return sum(float(v) for v in re.findall(r'^detection_requests_total\{[^}]*\} (\S+)$', text, re.M))


def send(url: str, files: list[bytes], path: str = "/detect", **fields: str) -> httpx.Response:
    parts = [("images", (f"f{i}", data, "application/octet-stream")) for i, data in enumerate(files)]
    return httpx.post(f"{url}{path}", headers=ALICE, files=parts, data=fields, timeout=60)


def multipart_of_size(total: int) -> tuple[bytes, str]:
    """A multipart body of exactly `total` bytes: three PNG files within the per-file limit, the last padded."""
    files = [png(nbytes=LIMITS["max_file_bytes"])] * 2

    def build(last: bytes) -> httpx.Request:
        parts = [("images", (f"f{i}", d, "image/png")) for i, d in enumerate([*files, last])]
        return httpx.Request("POST", "http://x/detect", files=parts)

    overhead = len(build(png(nbytes=1000)).read()) - 1000
    request = build(png(nbytes=total - overhead))
    body = request.read()
    assert len(body) == total
    return body, request.headers["content-type"]


CASES = {
    # name: (at the limit, one over, the problem type of one over)
    "files": (lambda: [png()] * 3, lambda: [png()] * 4, "too-many-files"),
    "file bytes": (lambda: [png(nbytes=40_000)], lambda: [png(nbytes=40_001)], "file-too-large"),
    "pixels": (lambda: [png((300, 200))], lambda: [png((301, 200))], "too-many-pixels"),
    "pages": (lambda: [blank_pdf(4)], lambda: [blank_pdf(5)], "too-many-pages"),
    "pages and images": (lambda: [blank_pdf(2), png(), png()], lambda: [blank_pdf(2), blank_pdf(2), png()],
                         "too-many-pages"),
    "page pixels": (lambda: [blank_pdf(1, (150.0, 100.0))], lambda: [blank_pdf(1, (150.5, 100.0))],
                    "too-many-pixels"),  # 150 x 100 pt at 144 dpi = 300 x 200 px
}


@pytest.mark.parametrize("name", list(CASES))
def test_exactly_the_limit_passes_and_one_over_fails_at_the_gateway(stack, name):
    url, detection = stack
    at_limit, over, slug = CASES[name]
    r = send(url, at_limit())
    assert r.status_code == 200, r.text
    before = served(detection)
    r = send(url, over())
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and r.json()["type"].endswith(slug)
    assert served(detection) == before  # refused before the upload went further
    direct = send(detection.url, over(), path="/v1/detect")  # the service holds the same line
    assert direct.status_code == 413, direct.text


def test_request_bytes(stack):
    url, detection = stack
    body, ctype = multipart_of_size(LIMITS["max_total_bytes"])
    r = httpx.post(f"{url}/detect", headers={**ALICE, "content-type": ctype}, content=body, timeout=60)
    assert r.status_code == 200, r.text
    before = served(detection)
    body, ctype = multipart_of_size(LIMITS["max_total_bytes"] + 1)
    r = httpx.post(f"{url}/detect", headers={**ALICE, "content-type": ctype}, content=body, timeout=60)
    assert r.status_code == 413 and served(detection) == before, r.text
    direct = httpx.post(f"{detection.url}/v1/detect", headers={"content-type": ctype}, content=body, timeout=60)
    assert direct.status_code == 413, direct.text


def test_the_limits_are_the_ones_both_sides_report(stack):
    url, detection = stack
    assert httpx.get(f"{detection.url}/readyz").json()["limits"] == LIMITS
