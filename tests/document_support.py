"""Documents the tests build themselves: vector-text PDFs (with each line's box from PDFium), image PDFs and
multi-page TIFFs from Pillow, encrypted PDFs from pikepdf, and the hostile shapes (10,000 pages, a huge page)."""

from __future__ import annotations

import ctypes
import io

import numpy as np
import pikepdf
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
from PIL import Image

PAGE_TEXTS = (
    ("Hello world 2026", "invoice total 42.50", "DetBooth"),
    ("receipt 17", "quality service", "text boxes here", "batch 8"),
    ("paddle OCR lines",),
)


def vector_pdf(pages=PAGE_TEXTS, size_pt=(420.0, 300.0), font_size=20.0) -> tuple[bytes, list[list[tuple]]]:
    """A PDF of real text objects (Helvetica) and, per page, each line's box in points (left, top, right, bottom)
    measured from the top-left corner, as PDFium places it."""
    pdf = pdfium.PdfDocument.new()
    width, height = size_pt
    truth = []
    for lines in pages:
        page = pdf.new_page(width, height)
        boxes = []
        for i, text in enumerate(lines):
            obj = pdfium_raw.FPDFPageObj_NewTextObj(pdf.raw, b"Helvetica", font_size)
            buf = ctypes.create_string_buffer((text + "\0").encode("utf-16-le"))
            pdfium_raw.FPDFText_SetText(obj, ctypes.cast(buf, ctypes.POINTER(pdfium_raw.FPDF_WCHAR)))
            pdfium_raw.FPDFPageObj_Transform(obj, 1, 0, 0, 1, 30, height - 50 - 60 * i)
            pdfium_raw.FPDFPage_InsertObject(page.raw, obj)
            left, bottom, right, top = (ctypes.c_float() for _ in range(4))
            pdfium_raw.FPDFPageObj_GetBounds(obj, left, bottom, right, top)
            boxes.append((left.value, height - top.value, right.value, height - bottom.value))
        pdfium_raw.FPDFPage_GenerateContent(page.raw)
        page.close()
        truth.append(boxes)
    out = io.BytesIO()
    pdf.save(out)
    pdf.close()
    return out.getvalue(), truth


def to_pixels(box_pt: tuple, dpi: float) -> tuple:
    return tuple(v * dpi / 72.0 for v in box_pt)


def render_page_png(pdf: bytes, number: int, dpi: float) -> bytes:
    """Page ``number`` (from 1) rendered by PDFium directly and saved as PNG: the same page as an image."""
    doc = pdfium.PdfDocument(pdf)
    image = doc[number - 1].render(scale=dpi / 72.0).to_pil()
    out = io.BytesIO()
    image.convert("RGB").save(out, "PNG")
    doc.close()
    return out.getvalue()


def image_pdf(images: list[Image.Image], dpi: float = 72.0) -> bytes:
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return out.getvalue()


def multipage_tiff(images: list[Image.Image]) -> bytes:
    out = io.BytesIO()
    images[0].save(out, "TIFF", save_all=True, append_images=images[1:], compression="tiff_lzw")
    return out.getvalue()


def encrypted_pdf(pdf: bytes, user_password: str = "secret") -> bytes:
    out = io.BytesIO()
    with pikepdf.Pdf.open(io.BytesIO(pdf)) as doc:
        doc.save(out, encryption=pikepdf.Encryption(owner="owner-" + user_password, user=user_password))
    return out.getvalue()


def blank_pdf(pages: int, size_pt: tuple[float, float] = (100.0, 100.0)) -> bytes:
    pdf = pdfium.PdfDocument.new()
    for _ in range(pages):
        pdf.new_page(*size_pt).close()
    out = io.BytesIO()
    pdf.save(out)
    pdf.close()
    return out.getvalue()


def empty_pdf() -> bytes:
    """A well-formed PDF whose page tree holds no page."""
    out = io.BytesIO()
    pikepdf.new().save(out)
    return out.getvalue()


def pil_from_bgr(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
