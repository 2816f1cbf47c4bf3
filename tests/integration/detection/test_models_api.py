"""Several detection models in one deployment (two PyPI-shipped ones): each with its own precision decision,
batcher and queue bound; a request picks one with `model`, or gets the default; an unknown model is a 422 that
lists the loaded ones; the gateway's GET /models lists them with their precision and passes `model` through."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from tests.detection_support import encode, recall, render_lines
from tests.integration.conftest import ALICE, base_env
from tests.integration.detection.test_detect_api import assert_problem, points, post
from tests.procs import start_gateway

DEFAULT, OTHER = "PP-OCRv6_small_det", "PP-OCRv5_mobile_det"
# the precision guard runs for each model: small sets and one int8 build keep it quick
GUARD = {"precision": "auto", "guard_images": "3", "guard_real_images": "false", "calibration_images": "3",
         "textset_max_side": "480", "int8_methods": '["ort_qdq"]', "bucket_sides": "[320]",
         "max_queue_images": "16"}


@pytest.fixture(scope="module")
def server(start_detection, tmp_path_factory):
    return start_detection(model=DEFAULT, models=f"{DEFAULT},{OTHER}",
                           # its own folder: the guard's verdicts go beside it
                           quantized_cache_dir=str(tmp_path_factory.mktemp("cache") / "quantized"), **GUARD)


@pytest.fixture(scope="module")
def gateway(server, redis_server, logs_dir, tmp_path_factory):
    env = base_env(redis_server, tmp_path_factory.mktemp("data"), DETBOOTH_DETECTION_URL=server.url)
    proc, url = start_gateway(env, logs_dir)
    yield url
    proc.stop()


def test_each_model_has_its_own_precision_decision_and_batcher(server):
    ready = server.readiness
    assert ready["default_model"] == DEFAULT and list(ready["models"]) == [DEFAULT, OTHER]
    assert ready["model"]["served"] == DEFAULT  # the top level stays the default's, as with one model
    for name, model in ready["models"].items():
        assert model["ready"] and model["model"]["served"] == name and not model["model"]["fallback"]
        precision = model["precision"]
        assert precision["requested"] == "auto" and precision["guard_seconds"] > 0
        assert {t["precision"] for t in precision["tried"]} >= {"fp32", "int8"}
        assert precision["serving"] in {t["precision"] for t in precision["tried"] if t["accepted"]}
        assert model["buckets"]["warmed"] == model["buckets"]["total"] == 1 and model["max_queue_images"] == 16
    # each guard ran its own model: the figures (and often the outcome) differ
    assert ready["models"][DEFAULT]["precision"]["tried"] != ready["models"][OTHER]["precision"]["tried"]
    assert f"detection model {DEFAULT} ready" in server.log() and f"detection model {OTHER} ready" in server.log()

    listed = httpx.get(f"{server.url}/v1/models").json()
    assert listed["default"] == DEFAULT
    assert [(m["id"], m["default"], m["ready"]) for m in listed["models"]] == [(DEFAULT, True, True),
                                                                                (OTHER, False, True)]
    for m in listed["models"]:
        assert m["precision"] == ready["models"][m["id"]]["precision"]["serving"]


def test_a_request_picks_its_model(server):
    image, truth = render_lines(7, 320, 224)
    data = encode(image)
    ready = server.readiness["models"]
    plain = post(server.url, [data]).json()
    assert plain["model"] == DEFAULT and plain["precision"] == ready[DEFAULT]["precision"]["serving"]
    for name in (DEFAULT, OTHER):
        r = post(server.url, [data], model=name)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == name and body["precision"] == ready[name]["precision"]["serving"]
        assert recall(truth, points(body["results"][0])) >= 0.6
    assert post(server.url, [data], model=DEFAULT).json()["results"][0]["boxes"] == plain["results"][0]["boxes"]
    as_json = httpx.post(f"{server.url}/v1/detect", timeout=60, json={
        "images": [base64.b64encode(data).decode()], "params": {"model": OTHER}})
    assert as_json.json()["model"] == OTHER


def test_both_models_serve_at_once(server):
    images = [encode(render_lines(seed, 320, 160)[0]) for seed in range(4)]

    async def run():
        async with httpx.AsyncClient(timeout=120) as client:
            calls = [client.post(f"{server.url}/v1/detect", data={"model": name},
                                 files=[("images", (f"{i}.png", img, "image/png"))])
                     for i, img in enumerate(images) for name in (DEFAULT, OTHER)]
            return await asyncio.gather(*calls)

    answers = asyncio.run(run())
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    assert [r.json()["model"] for r in answers] == [DEFAULT, OTHER] * 4


@pytest.mark.parametrize("name", ["PP-OCRv4_server_det", "../etc/passwd", "pp-ocrv6_small_det"])
def test_an_unknown_model_is_a_422_listing_the_loaded_ones(server, name):
    body = assert_problem(post(server.url, [encode(render_lines(1, 96, 64, lines=1)[0])], model=name), 422)
    assert body["type"].endswith("unknown-model") and body["available"] == [DEFAULT, OTHER]
    assert f"available: {DEFAULT}, {OTHER}" in body["detail"] and name in body["detail"]
    assert post(server.url, [encode(render_lines(1, 96, 64, lines=1)[0])]).status_code == 200


def test_the_gateway_lists_detection_models_and_passes_model_through(gateway, server):
    models = httpx.get(f"{gateway}/models", headers=ALICE).json()
    assert models["models"][0]["kind"] == "base"  # generation models, as before
    detection = models["detection"]
    assert detection["default"] == DEFAULT
    precisions = {m["id"]: m["precision"] for m in detection["models"]}
    assert precisions == {n: server.readiness["models"][n]["precision"]["serving"] for n in (DEFAULT, OTHER)}

    data = encode(render_lines(2, 320, 160)[0])
    r = httpx.post(f"{gateway}/detect", headers=ALICE, data={"model": OTHER},
                   files=[("images", ("a.png", data, "image/png"))], timeout=60)
    assert r.status_code == 200 and r.json()["model"] == OTHER, r.text
    r = httpx.post(f"{gateway}/detect", headers=ALICE, data={"model": "nope"},
                   files=[("images", ("a.png", data, "image/png"))], timeout=60)
    assert r.status_code == 422 and r.json()["available"] == [DEFAULT, OTHER], r.text


def test_the_gateway_lists_no_detection_models_when_the_service_is_down(redis_server, logs_dir, tmp_path):
    env = base_env(redis_server, tmp_path / "data")  # DETBOOTH_DETECTION_URL: nothing listens there
    proc, url = start_gateway(env, logs_dir)
    try:
        body = httpx.get(f"{url}/models", headers=ALICE).json()
        assert body["detection"] is None and body["models"][0]["kind"] == "base"
    finally:
        proc.stop()
