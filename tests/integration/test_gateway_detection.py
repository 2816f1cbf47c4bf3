"""Gateway (in-process) -> detection service over real HTTP: pass-through, errors, service down, hung, back
again."""

import base64
import os
import socket
import time

import cv2
import httpx
import numpy as np
import pytest

from tests.integration.conftest import ALICE, base_env, png_bytes
from tests.integration.detection.conftest import service_env
from tests.procs import Proc, free_port, inprocess_gateway, python_cmd


def text_png() -> bytes:
    img = np.full((200, 480, 3), 255, np.uint8)
    for i, line in enumerate(["DetBooth finds text", "second line 12345"]):
        cv2.putText(img, line, (20, 70 + 80 * i), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (0, 0, 0), 3)
    ok, buf = cv2.imencode(".png", img)
    return buf.tobytes()


@pytest.fixture(scope="module")
def detection(detection_service):
    return detection_service


@pytest.fixture(scope="module")
def gateway(redis_server, tmp_path_factory, detection):
    env = base_env(redis_server, tmp_path_factory.mktemp("data"), DETBOOTH_DETECTION_URL=detection.url,
                   DETBOOTH_DETECTION_TIMEOUT_S="3")
    with inprocess_gateway(env) as client:
        yield client


def test_detect_multipart_and_json_pass_through(gateway, detection):
    png = text_png()
    r = gateway.post("/detect", headers=ALICE, files=[("images", ("t.png", png, "image/png"))] * 2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "fallback" in body["model"] and len(body["results"]) == 2
    assert body["precision"] == "fp32"  # passed through from the detection service
    first = body["results"][0]
    assert (first["width"], first["height"]) == (480, 200) and len(first["boxes"]) == 2
    assert all(0 < b["score"] <= 1 and len(b["points"]) == 4 for b in first["boxes"])
    direct = httpx.post(f"{detection.url}/v1/detect", files=[("images", ("t.png", png, "image/png"))]).json()
    assert direct["results"][0]["boxes"] == first["boxes"]

    j = gateway.post("/detect", headers=ALICE,
                     json={"images": [base64.b64encode(png).decode()], "params": {"box_thresh": 0.999}})
    assert j.status_code == 200 and j.json()["results"][0]["boxes"] == []


def test_detection_errors_pass_through_as_problems(gateway):
    png = png_bytes()
    truncated = png[: len(png) // 2]  # a PNG header the gateway accepts; the detection service cannot decode it
    r = gateway.post("/detect", headers=ALICE, files=[("images", ("x.png", truncated, "image/png"))])
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert r.json()["type"].endswith("corrupt-image"), r.text


def hung_server() -> tuple[socket.socket, str]:
    """Accepts connections and never answers: a detection service that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_hung_detection_is_504_within_the_timeout(redis_server, tmp_path):
    sock, url = hung_server()
    env = base_env(redis_server, tmp_path, DETBOOTH_DETECTION_URL=url, DETBOOTH_DETECTION_TIMEOUT_S="2")
    try:
        with inprocess_gateway(env) as gw:
            start = time.monotonic()
            r = gw.post("/detect", headers=ALICE, files=[("images", ("t.png", text_png(), "image/png"))])
            assert r.status_code == 504 and time.monotonic() - start < 10
    finally:
        sock.close()


def start_detection_on(port: int, tmp, logs_dir) -> Proc:
    env = {**os.environ, **service_env(tmp), "DETBOOTH_DETECTION_PORT": str(port)}
    proc = Proc("detection", python_cmd("-m", "services.detection"), env, logs_dir)
    proc.wait_http(f"http://127.0.0.1:{port}/readyz", timeout=180)
    return proc


def test_stopped_detection_is_503_and_recovers(redis_server, logs_dir, tmp_path):
    port = free_port()
    det = start_detection_on(port, tmp_path, logs_dir)
    env = base_env(redis_server, tmp_path, DETBOOTH_DETECTION_URL=f"http://127.0.0.1:{port}")
    files = [("images", ("t.png", text_png(), "image/png"))]
    try:
        with inprocess_gateway(env) as gw:
            assert gw.post("/detect", headers=ALICE, files=files).status_code == 200
            det.stop()
            start = time.monotonic()
            r = gw.post("/detect", headers=ALICE, files=files)
            assert r.status_code == 503 and time.monotonic() - start < 10 and r.headers["retry-after"]
            assert gw.get("/readyz").json()["checks"]["detection"]["ok"] is False
            det = start_detection_on(port, tmp_path, logs_dir)  # back: the gateway recovers without a restart
            assert gw.post("/detect", headers=ALICE, files=files).status_code == 200
    finally:
        det.stop()
