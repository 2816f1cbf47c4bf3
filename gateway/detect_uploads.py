"""What the gateway checks in `/detect` uploads before forwarding them: each image's format and pixels (from its
header, read once) and each PDF's or TIFF's selected pages (count and size, from its structure), against the
same limits the detection service holds. Over a limit, the upload stops here, with the service's own problem
type; a file that is not an image gets the 415 every route gives."""

from collections.abc import Sequence

from starlette.concurrency import run_in_threadpool

from gateway.uploads import Upload, image_header
from services.contracts.detect import DetectParams
from services.contracts.documents import DocumentError, count_pages, sniff_document
from services.contracts.limits import UploadLimits
from services.contracts.problems import Problem


def _pages_of(index: int, upload: Upload, params: DetectParams, limits: UploadLimits) -> int:
    """How many results upload ``index`` gives (1 for an image), or the problem that refuses it."""
    kind = sniff_document(upload.data)
    if kind is not None:
        try:
            return count_pages(bytes(upload.data), kind, pages=params.page_spec,
                               dpi=params.dpi or limits.document_dpi, max_pages=limits.max_pages,
                               max_pixels=limits.max_image_pixels)
        except DocumentError as e:
            raise Problem(e.status, e.title, f"images[{index}]: {e.detail}", type_=e.slug) from e
    _, size = image_header(upload)
    if size is None:
        raise Problem(413, "Image too large", f"images[{index}]: the image header declares more pixels than "
                      "the decoder opens", type_="too-many-pixels")
    width, height = size
    if width * height > limits.max_image_pixels:
        raise Problem(413, "Image too large", f"images[{index}]: the image is {width}x{height} = "
                      f"{width * height} pixels; the limit is {limits.max_image_pixels}", type_="too-many-pixels")
    return 1


def _check(files: Sequence[Upload], params: DetectParams, limits: UploadLimits) -> int:
    total = 0
    for index, upload in enumerate(files):
        total += _pages_of(index, upload, params, limits)
        if total > limits.max_pages:
            raise Problem(413, "Too many pages", f"the request has more than {limits.max_pages} pages and images "
                          f"in all (at images[{index}]); the limit is {limits.max_pages} per request",
                          type_="too-many-pages")
    return total


async def check_detect_uploads(files: Sequence[Upload], params: DetectParams, limits: UploadLimits) -> int:
    """The number of results the request will give, once every upload is within the limits; else a 413/422.
    With a PDF or TIFF among them, on a worker thread (opening a document's structure takes milliseconds);
    images alone inline (reading a header takes microseconds, less than the hop to a thread and back)."""
    if not any(sniff_document(f.data) is not None for f in files):
        return _check(files, params, limits)
    return await run_in_threadpool(_check, files, params, limits)
