"""PDF and multi-page TIFF input. A document is opened and its pages are counted and measured from its structure
(PDF page sizes in points x dpi, TIFF frame headers) before any page is rendered, so a 10,000-page file or a
page the size of a football field is refused in milliseconds. Pages are then rendered one at a time to BGR."""

from __future__ import annotations

import base64
import io
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
from PIL import Image, ImageOps, ImageSequence

from services.contracts.page_spec import PageSpec

from .decode import ImageDecodeError, TooManyPixels, to_bgr

DocumentKind = Literal["pdf", "tiff"]
POINTS_PER_INCH = 72.0

# PDFium is not thread-safe, not even across documents: every call into it holds this lock.
_PDFIUM = threading.Lock()


class EncryptedDocument(ImageDecodeError):
    slug = "encrypted-document"
    title = "Encrypted document"


class CorruptDocument(ImageDecodeError):
    slug = "corrupt-document"
    title = "Corrupt or truncated document"


class EmptyDocument(ImageDecodeError):
    slug = "empty-document"
    title = "Empty document"


class PageOutOfRange(ImageDecodeError):
    slug = "page-out-of-range"
    title = "No such page"


class TooManyPages(ImageDecodeError):
    status = 413
    slug = "too-many-pages"
    title = "Too many pages"


class PageTooLarge(TooManyPixels):
    title = "Page too large"


def sniff(data: bytes) -> DocumentKind | None:
    """``"pdf"`` or ``"tiff"`` for a document, ``None`` for anything else (decoded as a single image)."""
    head = data[:1024]
    if head.lstrip(b"\x00\t\n\f\r ").startswith(b"%PDF-"):
        return "pdf"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic TIFF and BigTIFF
        return "tiff"
    return None


class Document(Protocol):
    kind: DocumentKind
    page_count: int

    def page_size(self, number: int) -> tuple[int, int]: ...
    def render(self, number: int) -> np.ndarray: ...
    def close(self) -> None: ...


class PdfDocument:
    kind: DocumentKind = "pdf"

    def __init__(self, data: bytes, dpi: float) -> None:
        self.scale = dpi / POINTS_PER_INCH
        self._closed = False
        with _PDFIUM:
            # PDFium keeps its last error until the next one, and refuses an empty page tree without setting one:
            # a file error (impossible for bytes in memory) set first tells that case apart from a stale code
            pdfium_raw.FPDF_LoadDocument(b"", None)
            try:
                self._pdf = pdfium.PdfDocument(data)
            except pdfium.PdfiumError as exc:
                raise _load_error(getattr(exc, "err_code", None)) from exc
            self.page_count = len(self._pdf)
        if self.page_count == 0:
            self.close()
            raise EmptyDocument("the PDF has no pages")

    def page_size(self, number: int) -> tuple[int, int]:
        """(width, height) in pixels at this document's dpi, as ``render`` will produce them."""
        with _PDFIUM:
            width_pt, height_pt = self._pdf.get_page_size(number - 1)
        return math.ceil(width_pt * self.scale), math.ceil(height_pt * self.scale)

    def render(self, number: int) -> np.ndarray:
        with _PDFIUM:
            if self._closed:  # the request ended (failed or was cancelled) while this page waited for a thread
                raise CorruptDocument("the document was closed before this page was rendered")
            try:
                page = self._pdf[number - 1]
                try:
                    bitmap = page.render(scale=self.scale, fill_color=(255, 255, 255, 255))
                    pixels = np.array(bitmap.to_numpy()[:, :, :3])  # BGR(x); copied out of PDFium's buffer
                    bitmap.close()
                finally:
                    page.close()
            except pdfium.PdfiumError as exc:
                raise CorruptDocument(f"page {number} could not be rendered: {exc}") from exc
        return np.ascontiguousarray(pixels)

    def close(self) -> None:
        with _PDFIUM:
            if not self._closed:
                self._closed = True
                self._pdf.close()


def _load_error(code: int | None) -> ImageDecodeError:
    if code in (pdfium_raw.FPDF_ERR_PASSWORD, pdfium_raw.FPDF_ERR_SECURITY):
        return EncryptedDocument("the PDF is encrypted (it needs a password to open); send it decrypted")
    if code == pdfium_raw.FPDF_ERR_FILE:  # no error of its own: PDFium found no page to load
        return EmptyDocument("the PDF has no pages")
    return CorruptDocument("the PDF is corrupt or truncated: its structure could not be read")


class TiffDocument:
    kind: DocumentKind = "tiff"

    def __init__(self, data: bytes) -> None:
        self._data = data
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own pixel cap applies
                with Image.open(io.BytesIO(data)) as image:
                    self._sizes = [frame.size for frame in ImageSequence.Iterator(image)]  # headers only
        except Image.DecompressionBombError as exc:
            raise PageTooLarge(f"a page of the TIFF is a decompression bomb: {exc}") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptDocument(f"the TIFF is corrupt or truncated: {exc}") from exc
        self.page_count = len(self._sizes)
        if self.page_count == 0:
            raise EmptyDocument("the TIFF has no pages")

    def page_size(self, number: int) -> tuple[int, int]:
        return self._sizes[number - 1]

    def render(self, number: int) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(self._data)) as image:
                    image.seek(number - 1)
                    image.load()
                    return to_bgr(ImageOps.exif_transpose(image))
        except Exception as exc:  # truncated strips, codec errors: all mean "this page is broken"
            raise CorruptDocument(f"page {number} of the TIFF could not be decoded: {exc}") from exc

    def close(self) -> None:
        self._data = b""


@dataclass
class OpenedDocument:
    """A document with its selected pages checked against the caps, none rendered yet."""

    document: Document
    pages: list[int]

    def close(self) -> None:
        self.document.close()


def open_document(data: bytes, kind: DocumentKind, *, pages: PageSpec | None, dpi: float, max_pages: int,
                  max_pixels: int) -> OpenedDocument:
    """Open a document and check the selected pages (count, then each page's pixels) before rendering any.
    Raises an ``ImageDecodeError`` subclass saying what is wrong."""
    document: Document = PdfDocument(data, dpi) if kind == "pdf" else TiffDocument(data)
    try:
        selected = _select(document, pages, max_pages)
        for number in selected:
            width, height = document.page_size(number)
            if width * height > max_pixels:
                at = f" at {dpi:g} dpi" if kind == "pdf" else ""
                raise PageTooLarge(f"page {number} is {width}x{height} = {width * height} pixels{at}; the limit is "
                                   f"{max_pixels}" + ("; ask for a lower dpi" if kind == "pdf" else ""))
            if width < 1 or height < 1:
                raise CorruptDocument(f"page {number} has no pixels")
    except BaseException:
        document.close()
        raise
    return OpenedDocument(document, selected)


def _select(document: Document, pages: PageSpec | None, max_pages: int) -> list[int]:
    count = document.page_count
    wanted = count if pages is None else pages.count_at_most(count)
    if wanted > max_pages:
        hint = "; choose some with the pages parameter, e.g. pages=1-3" if pages is None else ""
        raise TooManyPages(f"the {document.kind.upper()} has {count} pages and {wanted} are selected; the limit is "
                           f"{max_pages} pages per request{hint}")
    if pages is None:
        return list(range(1, count + 1))
    try:
        return pages.select(count)
    except ValueError as exc:
        raise PageOutOfRange(str(exc)) from exc


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
    kind = sniff(data)
    if kind is None:
        raise ImageDecodeError("the bytes are neither a PDF nor a TIFF")
    opened = open_document(data, kind, pages=pages, dpi=dpi, max_pages=max_pages, max_pixels=max_pixels)
    try:
        for number in opened.pages:
            yield Page(number, opened.document.render(number))
    finally:
        opened.close()
