"""PDF and multi-page TIFF uploads to the detection service: one result per page, the same boxes as the page sent
as a PNG, mixed freely with images; bad documents get a fast 4xx and the service keeps serving."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image

from tests.detection_support import encode, recall, render_lines
from tests.document_support import (blank_pdf, empty_pdf, encrypted_pdf, multipage_tiff, pil_from_bgr,
                                    render_page_png, to_pixels, vector_pdf)
from tests.integration.detection.test_detect_api import assert_problem, points, post


@pytest.fixture(scope="module")
def text_pdf() -> tuple[bytes, list]:
    return vector_pdf()


def test_each_pdf_page_is_one_result_with_the_boxes_of_the_same_page_as_png(detection, text_pdf):
    pdf, truth = text_pdf
    r = post(detection.url, [pdf])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["source"], x["page"], x["width"], x["height"]) for x in results] == [
        (0, 1, 840, 600), (0, 2, 840, 600), (0, 3, 840, 600)]  # 420 x 300 pt at the default 144 dpi
    pngs = [render_page_png(pdf, n, 144) for n in (1, 2, 3)]
    as_png = post(detection.url, pngs).json()["results"]
    for page, png_result, lines in zip(results, as_png, truth):
        assert page["boxes"] == png_result["boxes"] and png_result["page"] is None
        assert len(page["boxes"]) == len(lines)
        assert recall([to_pixels(b, 144) for b in lines], points(page)) == 1.0


def test_pages_and_dpi_select_and_scale(detection, text_pdf):
    pdf, truth = text_pdf
    r = post(detection.url, [pdf], pages="2-", dpi=72)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["page"], x["width"], x["height"]) for x in results] == [(2, 420, 300), (3, 420, 300)]
    same = post(detection.url, [render_page_png(pdf, 3, 72)]).json()["results"][0]
    assert results[1]["boxes"] == same["boxes"]
    assert recall([to_pixels(b, 72) for b in truth[1]], points(results[0])) >= 0.75


def test_documents_and_images_mix_in_multipart_and_json(detection, text_pdf):
    pdf, _ = text_pdf
    image, _ = render_lines(3, 320, 160)
    frames = [pil_from_bgr(render_lines(seed, 256, 128)[0]) for seed in (4, 5)]
    uploads = [encode(image), pdf, multipage_tiff(frames)]
    # one `pages` applies to every document: the two-page TIFF has no page 3, and the answer names it
    body = assert_problem(post(detection.url, uploads, pages="1,3"), 422)
    assert body["detail"] == "images[2]: pages=1,3 asks for page 3; the document has 2 pages"
    r = post(detection.url, uploads, pages="1-2")
    assert r.status_code == 200, r.text
    multipart = r.json()["results"]
    assert [(x["source"], x["page"]) for x in multipart] == [(0, None), (1, 1), (1, 2), (2, 1), (2, 2)]
    assert multipart[3]["boxes"] == post(detection.url, [encode(render_lines(4, 256, 128)[0])]).json()[
        "results"][0]["boxes"]
    as_json = httpx.post(f"{detection.url}/v1/detect", timeout=60, json={
        "images": [base64.b64encode(u).decode() for u in uploads], "params": {"pages": "1-2"}})
    assert as_json.status_code == 200, as_json.text
    assert [x["boxes"] for x in as_json.json()["results"]] == [x["boxes"] for x in multipart]


def test_a_long_document_runs_a_chunk_of_pages_at_a_time_in_order(detection):
    texts = [(f"page {n} of twenty", "DetBooth text") for n in range(1, 21)]  # past one chunk of 16
    pdf, _ = vector_pdf(texts)
    r = post(detection.url, [pdf], dpi=72)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["page"] for x in results] == list(range(1, 21)) and all(len(x["boxes"]) == 2 for x in results)
    for n in (3, 17, 20):  # each page's boxes, as when it is asked for alone
        alone = post(detection.url, [pdf], dpi=72, pages=str(n)).json()["results"][0]
        assert alone["boxes"] == results[n - 1]["boxes"]


def test_previews_show_each_page_for_clients_without_a_pdf_renderer(detection, text_pdf):
    pdf, _ = text_pdf
    image, _ = render_lines(3, 320, 160)
    r = post(detection.url, [encode(image), pdf], pages="2", previews="true")
    assert r.status_code == 200, r.text
    plain, page = r.json()["results"]
    assert plain["preview"] is None and page["page"] == 2
    jpeg = base64.b64decode(page["preview"].removeprefix("data:image/jpeg;base64,"))
    with Image.open(io.BytesIO(jpeg)) as preview:
        assert preview.size == (page["width"], page["height"])
    assert post(detection.url, [pdf], pages="2").json()["results"][0]["preview"] is None  # only when asked


def bad_documents() -> dict:
    pdf, _ = vector_pdf()
    return {
        "encrypted": (lambda u: post(u, [encrypted_pdf(pdf)]), 422, "encrypted-document", "encrypted"),
        "truncated": (lambda u: post(u, [pdf[: len(pdf) // 2]]), 422, "corrupt-document", "corrupt"),
        "empty": (lambda u: post(u, [empty_pdf()]), 422, "empty-document", "no pages"),
        "10,000 pages": (lambda u: post(u, [blank_pdf(10_000)]), 413, "too-many-pages", "10000 pages"),
        "100,000 pt page": (lambda u: post(u, [blank_pdf(1, (100_000.0, 100_000.0))]), 413, "too-many-pixels",
                            "200000x200000"),
        "page past the end": (lambda u: post(u, [pdf], pages="3-4"), 422, "page-out-of-range", "has 3 pages"),
        "bad page spec": (lambda u: post(u, [pdf], pages="3-1"), 422, "validation-error", "body.pages"),
        "dpi too high": (lambda u: post(u, [pdf], dpi=5000), 422, "validation-error", "body.dpi"),
        "pages over the cap in all": (lambda u: post(u, [blank_pdf(20), blank_pdf(13)]), 413, "too-many-pages",
                                      "33 pages and images in all; the limit is 32"),
    }


@pytest.mark.parametrize("name", list(bad_documents()))
def test_bad_documents_get_a_fast_problem_and_the_service_keeps_serving(detection, name):
    send, status, slug, says = bad_documents()[name]
    started = time.perf_counter()
    body = assert_problem(send(detection.url), status)
    elapsed = time.perf_counter() - started
    assert body["type"] == f"urn:detbooth:problem:{slug}" and says in body["detail"], body
    assert elapsed < 10, elapsed  # refused from the document's structure: rendering it would take minutes
    good = encode(render_lines(1, 96, 64, lines=1)[0])
    assert post(detection.url, [good]).status_code == 200
