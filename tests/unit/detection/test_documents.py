"""PDF and TIFF pages: counted and measured before rendering, rendered like PDFium renders them, bad documents
named for what is wrong with them."""

import time

import numpy as np
import pytest
from PIL import Image

from services.contracts.documents import (CorruptDocument, DocumentError, EmptyDocument, EncryptedDocument,
                                          PageOutOfRange, PageTooLarge, TooManyPages, open_document, sniff_document)
from services.contracts.page_spec import parse_page_spec
from services.detection.documents import iter_pages, page_preview, render_page
from tests.detection_support import render_lines
from tests.document_support import (blank_pdf, empty_pdf, encrypted_pdf, image_pdf, multipage_tiff, pil_from_bgr,
                                    render_page_png, vector_pdf)
from tests.unit.detection.test_decode import pil_bytes


@pytest.fixture(scope="module")
def text_pdf() -> bytes:
    return vector_pdf()[0]


def test_sniff():
    assert sniff_document(b"%PDF-1.7\n...") == "pdf" and sniff_document(b"\r\n %PDF-1.4") == "pdf"
    tiff = multipage_tiff([Image.new("RGB", (8, 8))])
    assert sniff_document(tiff) == "tiff"
    assert sniff_document(pil_bytes(Image.new("RGB", (8, 8)), "PNG")) is None and sniff_document(b"") is None
    assert sniff_document(b"plain text mentioning %PDF-1.4") is None


def test_pages_render_at_the_dpi_as_pdfium_renders_them(text_pdf):
    pages = list(iter_pages(text_pdf, dpi=144))
    assert [p.number for p in pages] == [1, 2, 3]
    for page in pages:
        assert page.image.shape == (600, 840, 3) and page.image.dtype == np.uint8 and page.image.flags.c_contiguous
        reference = np.asarray(Image.open(__import__("io").BytesIO(render_page_png(text_pdf, page.number, 144))))
        assert np.array_equal(page.image, reference[:, :, ::-1])  # BGR, pixel for pixel
    assert [p.image.shape[:2] for p in iter_pages(text_pdf, dpi=72, pages=parse_page_spec("2"))] == [(300, 420)]


def test_page_selection(text_pdf):
    assert [p.number for p in iter_pages(text_pdf, pages=parse_page_spec("1,3"))] == [1, 3]
    assert [p.number for p in iter_pages(text_pdf, pages=parse_page_spec("2-"))] == [2, 3]
    with pytest.raises(PageOutOfRange, match="asks for page 4; the document has 3 pages"):
        list(iter_pages(text_pdf, pages=parse_page_spec("2-4")))


def test_tiff_pages_are_decoded_frame_by_frame():
    frames = [pil_from_bgr(render_lines(seed, 160 + 32 * seed, 96)[0]) for seed in range(3)]
    pages = list(iter_pages(multipage_tiff(frames)))
    assert [p.number for p in pages] == [1, 2, 3]
    for frame, page in zip(frames, pages):
        assert np.array_equal(page.image, np.asarray(frame)[:, :, ::-1])  # LZW is lossless
    grey = multipage_tiff([Image.new("L", (40, 30), 7), Image.new("RGBA", (20, 10), (1, 2, 3, 255))])
    assert [p.image.shape for p in iter_pages(grey)] == [(30, 40, 3), (10, 20, 3)]


def test_image_pdf_pages_keep_their_pixel_size():
    frames = [pil_from_bgr(render_lines(seed, 300, 200)[0]) for seed in range(2)]
    pages = list(iter_pages(image_pdf(frames, dpi=72), dpi=72))
    assert [p.image.shape for p in pages] == [(200, 300, 3)] * 2


@pytest.mark.parametrize("make, error, says", [
    (lambda pdf: encrypted_pdf(pdf), EncryptedDocument, "encrypted"),
    (lambda pdf: pdf[: len(pdf) // 2], CorruptDocument, "corrupt or truncated"),
    (lambda pdf: b"%PDF-1.4\n" + b"\x00garbage" * 50, CorruptDocument, "corrupt or truncated"),
    (lambda pdf: empty_pdf(), EmptyDocument, "no pages"),
])
def test_bad_pdfs_say_which(text_pdf, make, error, says):
    with pytest.raises(error, match=says) as info:
        list(iter_pages(make(text_pdf)))
    assert info.value.status == 422


def test_owner_only_encryption_opens(text_pdf):
    """A PDF with permissions but no user password opens without one, as in every viewer."""
    assert len(list(iter_pages(encrypted_pdf(text_pdf, user_password="")))) == 3


def test_bad_tiffs():
    tiff = multipage_tiff([pil_from_bgr(render_lines(s, 200, 100)[0]) for s in range(2)])
    with pytest.raises(CorruptDocument):
        list(iter_pages(tiff[:40]))
    with pytest.raises((CorruptDocument, PageTooLarge)):
        list(iter_pages(b"II*\x00" + b"\xff" * 60))


def test_caps_are_checked_before_rendering():
    many = blank_pdf(10_000)
    started = time.perf_counter()
    with pytest.raises(TooManyPages, match="has 10000 pages and 10000 are selected; the limit is 32") as info:
        open_document(many, "pdf", pages=None, dpi=144, max_pages=32, max_pixels=40_000_000)
    assert info.value.status == 413
    opened = open_document(many, "pdf", pages=parse_page_spec("9999-"), dpi=144, max_pages=32,
                           max_pixels=40_000_000)
    assert opened.pages == [9999, 10_000] and render_page(opened, 10_000).shape == (200, 200, 3)
    opened.close()

    huge = blank_pdf(1, (100_000.0, 100_000.0))
    with pytest.raises(PageTooLarge, match=r"page 1 is 200000x200000 = 40000000000 pixels at 144 dpi") as info:
        open_document(huge, "pdf", pages=None, dpi=144, max_pages=32, max_pixels=40_000_000)
    assert info.value.status == 413 and "lower dpi" in str(info.value)
    assert time.perf_counter() - started < 5  # nothing was rendered: rendering either would take far longer


def test_exactly_the_caps_pass():
    doc = blank_pdf(4, (72.0, 36.0))  # 1 x 0.5 inch: 144 x 72 pixels at 144 dpi
    opened = open_document(doc, "pdf", pages=None, dpi=144, max_pages=4, max_pixels=144 * 72)
    assert opened.pages == [1, 2, 3, 4]
    opened.close()
    with pytest.raises(TooManyPages):
        open_document(doc, "pdf", pages=None, dpi=144, max_pages=3, max_pixels=144 * 72)
    with pytest.raises(PageTooLarge):
        open_document(doc, "pdf", pages=None, dpi=144, max_pages=4, max_pixels=144 * 72 - 1)
    assert open_document(doc, "pdf", pages=parse_page_spec("1-3"), dpi=144, max_pages=3,
                         max_pixels=144 * 72).pages == [1, 2, 3]


def test_tiff_caps_use_frame_headers():
    frames = [Image.new("RGB", (100, 100), "white") for _ in range(5)]
    tiff = multipage_tiff(frames)
    with pytest.raises(TooManyPages):
        open_document(tiff, "tiff", pages=None, dpi=144, max_pages=4, max_pixels=10_000)
    with pytest.raises(PageTooLarge, match="page 1 is 100x100 = 10000 pixels; the limit is 9999$"):
        open_document(tiff, "tiff", pages=None, dpi=144, max_pages=5, max_pixels=9_999)


def test_a_closed_document_refuses_to_render(text_pdf):
    opened = open_document(text_pdf, "pdf", pages=None, dpi=72, max_pages=8, max_pixels=10**7)
    opened.close()
    opened.close()  # twice is harmless
    with pytest.raises(DocumentError, match="closed"):
        render_page(opened, 1)


def test_page_preview_is_a_jpeg_no_larger_than_asked(text_pdf):
    import base64
    import io

    page = next(iter_pages(text_pdf, dpi=144))
    small = page_preview(page.image, max_side=420)
    assert small.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1]))) as jpeg:
        assert jpeg.format == "JPEG" and jpeg.size == (420, 300)
    with Image.open(io.BytesIO(base64.b64decode(page_preview(page.image).split(",", 1)[1]))) as full:
        assert full.size == (840, 600)  # under the default 1600: kept at its size
        diff = np.abs(np.asarray(full.convert("RGB"), np.int16)[:, :, ::-1] - page.image.astype(np.int16))
        assert diff.mean() < 3  # the page itself, not something else
