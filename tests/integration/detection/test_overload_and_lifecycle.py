"""Overload, the Paddle engine, startup failure and shutdown, each on its own small service."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx

from tests.detection_support import encode, recall, render_lines
from tests.integration.detection.conftest import DetectionServer, service_env


async def _burst(url: str, payloads: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        return await asyncio.gather(*(client.post("/v1/detect", files=[("images", ("a.png", p, "image/png"))])
                                      for p in payloads))


def test_paddle_engine_service_and_queue_full(start_detection):
    """engine=paddle falls back to PP-OCRv4 mobile det (Paddle format); a one-image queue overflows -> 503."""
    server = start_detection(engine="paddle", max_batch_size="1", max_queue_images="1", bucket_sides="[320]",
                             retry_after_s="2")
    assert server.readiness["model"]["served"] == "PP-OCRv4_mobile_det"
    assert server.readiness["engine"]["engine"] == "paddle"
    img, truth = render_lines(7, 320, 224)
    r = httpx.post(f"{server.url}/v1/detect", files=[("images", ("a.png", encode(img)))], timeout=60)
    assert r.status_code == 200 and recall(truth, [b["points"] for b in r.json()["results"][0]["boxes"]]) >= 0.9

    responses = asyncio.run(_burst(server.url, [encode(img)] * 16))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["type"] == "urn:detbooth:problem:overloaded"
    assert httpx.post(f"{server.url}/v1/detect", files=[("images", ("a.png", encode(img)))],
                      timeout=60).status_code == 200


def test_setup_failure_is_reported_not_crashed(tmp_path):
    env = service_env(tmp_path, model_dir=str(tmp_path))  # a folder with no model in it
    server = DetectionServer(env, tmp_path / "log")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{server.url}/readyz", timeout=2)
                if r.json()["state"] == "setup_failed":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert r.status_code == 503 and "holds no det model" in r.json()["error"]
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        d = httpx.post(f"{server.url}/v1/detect", files=[("images", ("a.png", b"x"))])
        assert d.status_code == 503 and d.headers["retry-after"] and d.json()["type"].endswith("not-ready")
    finally:
        server.stop()


def test_sigterm_finishes_in_flight_requests(tmp_path):
    server = DetectionServer(service_env(tmp_path, bucket_sides="[320]"), tmp_path / "log")
    server.wait_ready()
    payload = encode(render_lines(9, 320, 224)[0])

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            tasks = [asyncio.create_task(client.post("/v1/detect", files=[("images", ("a.png", payload))]))
                     for _ in range(6)]
            await asyncio.sleep(0.3)  # connected and queued
            os.killpg(server.proc.pid, signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [getattr(o, "status_code", o) for o in outcomes] == [200] * 6
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    assert "Application shutdown complete" in server.log()


def test_request_body_limit_holds_without_content_length(start_detection):
    server = start_detection(env={"DETBOOTH_MAX_TOTAL_BYTES": "200000", "DETBOOTH_MAX_FILE_BYTES": "100000"},
                             bucket_sides="[320]")
    big = os.urandom(300_000)

    def chunks():
        for i in range(0, len(big), 50_000):
            yield big[i:i + 50_000]

    r = httpx.post(f"{server.url}/v1/detect", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["type"] == "urn:detbooth:problem:content-too-large"
    r = httpx.post(f"{server.url}/v1/detect", files=[("images", ("a.bin", big))])  # with Content-Length
    assert r.status_code == 413
    img = encode(render_lines(1, 160, 96, lines=1)[0])
    assert httpx.post(f"{server.url}/v1/detect", files=[("images", ("a.png", img))], timeout=60).status_code == 200
