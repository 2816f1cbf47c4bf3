"""Rendering the pages of a PDF or TIFF upload, after `services.contracts.documents` has counted and measured
them against the limits: PDF pages by PDFium at the request's dpi, TIFF frames by Pillow, each to BGR."""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import pypdfium2 as pdfium
from PIL import Image, ImageOps

from services.contracts.documents import (PDFIUM_LOCK, CorruptDocument, DocumentError, OpenedDocument, PdfPages,
                                          TiffPages, open_document, sniff_document)
from services.contracts.page_spec import PageSpec

from .decode import to_bgr


def render_page(opened: OpenedDocument, number: int) -> np.ndarray:
    """Page ``number`` (from 1) as a contiguous HxWx3 uint8 BGR array."""
    document = opened.document
    if isinstance(document, PdfPages):
        return _render_pdf_page(document, number)
    return _decode_tiff_page(document, number)


def _render_pdf_page(document: PdfPages, number: int) -> np.ndarray:
    with PDFIUM_LOCK:
        if document.closed:  # the request ended (failed or was cancelled) while this page waited for a thread
            raise CorruptDocument("the document was closed before this page was rendered")
        try:
            page = document.pdf[number - 1]
            try:
                bitmap = page.render(scale=document.scale, fill_color=(255, 255, 255, 255))
                pixels = np.array(bitmap.to_numpy()[:, :, :3])  # BGR(x), copied out of PDFium's buffer
                bitmap.close()
            finally:
                page.close()
        except pdfium.PdfiumError as exc:
            raise CorruptDocument(f"page {number} could not be rendered: {exc}") from exc
    return np.ascontiguousarray(pixels)


def _decode_tiff_page(document: TiffPages, number: int) -> np.ndarray:
    if document.closed:
        raise CorruptDocument("the document was closed before this page was decoded")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the page pixel cap was checked
            with Image.open(io.BytesIO(document.data)) as image:
                image.seek(number - 1)
                image.load()
                return to_bgr(ImageOps.exif_transpose(image))
    except Exception as exc:  # truncated strips, codec errors: all mean "this page is broken"
        raise CorruptDocument(f"page {number} of the TIFF could not be decoded: {exc}") from exc


def page_preview(image: np.ndarray, max_side: int = 1600, quality: int = 85) -> str:
    """A rendered page as a JPEG data URL, its longest side at most ``max_side``: what a client without a PDF or
    TIFF decoder (a browser) draws the page's boxes on, scaled by the preview's size over the page's."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CorruptDocument("the page could not be encoded as a preview")
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")


@dataclass(frozen=True)
class Page:
    number: int  # from 1
    image: np.ndarray  # HxWx3 uint8 BGR


def iter_pages(data: bytes, *, pages: PageSpec | None = None, dpi: float = 144.0, max_pages: int = 64,
               max_pixels: int = 40_000_000) -> Iterator[Page]:
    """Every selected page of a PDF or TIFF, rendered in order (after all of them passed the caps)."""
    kind = sniff_document(data)
    if kind is None:
        raise DocumentError("the bytes are neither a PDF nor a TIFF")
    opened = open_document(data, kind, pages=pages, dpi=dpi, max_pages=max_pages, max_pixels=max_pixels)
    try:
        for number in opened.pages:
            yield Page(number, render_page(opened, number))
    finally:
        opened.close()
