"""PDF and TIFF uploads to `/detect`: what counts as a document, and its selected pages counted and measured
from its structure (PDF page sizes in points x dpi / 72, TIFF frame headers) without rendering any, against the
upload limits. The gateway runs this before it forwards an upload; the detection service runs it again and then
renders the pages. Needs pypdfium2 and Pillow (imported where used: the client never calls this)."""

from __future__ import annotations

import io
import math
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from services.contracts.page_spec import PageSpec
from services.contracts.problems import Problem

if TYPE_CHECKING:
    import pypdfium2

DocumentKind = Literal["pdf", "tiff"]
POINTS_PER_INCH = 72.0

# PDFium is not thread-safe, not even across documents: every call into it holds this lock.
PDFIUM_LOCK = threading.Lock()


class DocumentError(Problem):
    """A document that cannot be used; the class says why (its problem type and status)."""

    status = 422
    slug = "unreadable-document"
    title = "Unreadable document"

    def __init__(self, detail: str) -> None:
        super().__init__(type(self).status, type(self).title, detail, type_=self.slug)


class EncryptedDocument(DocumentError):
    slug, title = "encrypted-document", "Encrypted document"


class CorruptDocument(DocumentError):
    slug, title = "corrupt-document", "Corrupt or truncated document"


class EmptyDocument(DocumentError):
    slug, title = "empty-document", "Empty document"


class PageOutOfRange(DocumentError):
    slug, title = "page-out-of-range", "No such page"


class TooManyPages(DocumentError):
    status, slug, title = 413, "too-many-pages", "Too many pages"


class PageTooLarge(DocumentError):
    status, slug, title = 413, "too-many-pixels", "Page too large"


def sniff_document(data: bytes) -> DocumentKind | None:
    """``"pdf"`` or ``"tiff"`` for a document, ``None`` for anything else (read as a single image)."""
    head = data[:1024]
    if head.lstrip(b"\x00\t\n\f\r ").startswith(b"%PDF-"):
        return "pdf"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic TIFF and BigTIFF
        return "tiff"
    return None


class PdfPages:
    """An open PDF: page count and page sizes; ``pdf`` is PDFium's handle (use it only under ``PDFIUM_LOCK``)."""

    kind: DocumentKind = "pdf"

    def __init__(self, data: bytes, dpi: float) -> None:
        import pypdfium2 as pdfium
        import pypdfium2.raw as pdfium_raw

        self.scale = dpi / POINTS_PER_INCH
        self.closed = False
        with PDFIUM_LOCK:
            # PDFium keeps its last error until the next one, and refuses an empty page tree without setting one:
            # a file error (impossible for bytes in memory) set first tells that case apart from a stale code
            pdfium_raw.FPDF_LoadDocument(b"", None)
            try:
                self.pdf: pypdfium2.PdfDocument = pdfium.PdfDocument(data)
            except pdfium.PdfiumError as exc:
                raise _load_error(getattr(exc, "err_code", None)) from exc
            self.page_count = len(self.pdf)
        if self.page_count == 0:
            self.close()
            raise EmptyDocument("the PDF has no pages")

    def page_size(self, number: int) -> tuple[int, int]:
        """(width, height) in pixels at this document's dpi, as PDFium renders the page."""
        with PDFIUM_LOCK:
            width_pt, height_pt = self.pdf.get_page_size(number - 1)
        return math.ceil(width_pt * self.scale), math.ceil(height_pt * self.scale)

    def close(self) -> None:
        with PDFIUM_LOCK:
            if not self.closed:
                self.closed = True
                self.pdf.close()


def _load_error(code: int | None) -> DocumentError:
    import pypdfium2.raw as pdfium_raw

    if code in (pdfium_raw.FPDF_ERR_PASSWORD, pdfium_raw.FPDF_ERR_SECURITY):
        return EncryptedDocument("the PDF is encrypted (it needs a password to open); send it decrypted")
    if code == pdfium_raw.FPDF_ERR_FILE:  # no error of its own: PDFium found no page to load
        return EmptyDocument("the PDF has no pages")
    return CorruptDocument("the PDF is corrupt or truncated: its structure could not be read")


class TiffPages:
    """A TIFF: its frames' sizes from their headers; ``data`` holds the file for decoding a frame later."""

    kind: DocumentKind = "tiff"

    def __init__(self, data: bytes) -> None:
        from PIL import Image, ImageSequence

        self.data = data
        self.closed = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the page pixel cap applies
                with Image.open(io.BytesIO(data)) as image:
                    self.sizes = [frame.size for frame in ImageSequence.Iterator(image)]  # headers only
        except Image.DecompressionBombError as exc:
            raise PageTooLarge(f"a page of the TIFF is a decompression bomb: {exc}") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptDocument(f"the TIFF is corrupt or truncated: {exc}") from exc
        self.page_count = len(self.sizes)
        if self.page_count == 0:
            raise EmptyDocument("the TIFF has no pages")

    def page_size(self, number: int) -> tuple[int, int]:
        return self.sizes[number - 1]

    def close(self) -> None:
        self.closed = True
        self.data = b""


@dataclass
class OpenedDocument:
    """A document whose selected pages passed the caps, none rendered yet."""

    document: PdfPages | TiffPages
    pages: list[int]

    @property
    def kind(self) -> DocumentKind:
        return self.document.kind

    def close(self) -> None:
        self.document.close()


def open_document(data: bytes, kind: DocumentKind, *, pages: PageSpec | None, dpi: float, max_pages: int,
                  max_pixels: int) -> OpenedDocument:
    """Open a document and check the selected pages (their number, then each one's pixels) before rendering
    any. Raises a ``DocumentError`` saying what is wrong."""
    document: Any = PdfPages(data, dpi) if kind == "pdf" else TiffPages(data)
    try:
        selected = _select(document, pages, max_pages)
        for number in selected:
            width, height = document.page_size(number)
            if width * height > max_pixels:
                at, hint = (f" at {dpi:g} dpi", "; ask for a lower dpi") if kind == "pdf" else ("", "")
                raise PageTooLarge(f"page {number} is {width}x{height} = {width * height} pixels{at}; the limit "
                                   f"is {max_pixels}{hint}")
            if width < 1 or height < 1:
                raise CorruptDocument(f"page {number} has no pixels")
    except BaseException:
        document.close()
        raise
    return OpenedDocument(document, selected)


def _select(document: PdfPages | TiffPages, pages: PageSpec | None, max_pages: int) -> list[int]:
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


def count_pages(data: bytes, kind: DocumentKind, *, pages: PageSpec | None, dpi: float, max_pages: int,
                max_pixels: int) -> int:
    """How many pages a document contributes to a request, after the same checks as ``open_document``."""
    opened = open_document(data, kind, pages=pages, dpi=dpi, max_pages=max_pages, max_pixels=max_pixels)
    opened.close()
    return len(opened.pages)
