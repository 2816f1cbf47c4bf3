"""Reading uploads within limits: request bytes (counted while reading), files per request, bytes per file."""

import asyncio
import base64
import binascii
import io
import json
import time
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.contracts.http import problem_response
from services.contracts.problems import Problem


UPLOAD_PATHS = ("/detect", "/v1/detect", "/finetune", "/generate")

# What every upload route takes, by Pillow's format name (the detection service reads the same ones)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "JPEG2000")
ACCEPTED = "PNG, JPEG, WebP, BMP, TIFF, GIF, PPM or JPEG 2000"


def mib(n: int) -> str:
    """A byte count as people read limits: `20 MiB`, `0.95 MiB`."""
    value = n / 2**20
    return f"{value:.0f} MiB" if value.is_integer() else f"{value:.2f} MiB"


class NotAnImage(Problem):
    """The same answer on every route for a file that is not an image in an accepted format."""

    def __init__(self, name: str, found: str | None = None):
        what = f"in {found} format, which is not accepted" if found else "not an image"
        super().__init__(415, "Unsupported media type",
                         f"{name} is {what}; send images in one of these formats: {ACCEPTED}",
                         type_="not-an-image")


def sniff_format(upload: "Upload") -> str:
    """The Pillow format of an upload from its header alone, or NotAnImage (415)."""
    return image_header(upload)[0]


def image_header(upload: "Upload") -> tuple[str, tuple[int, int] | None]:
    """An upload's Pillow format and (width, height), from its header alone (None: a decompression bomb, whose
    size Pillow refuses to say); NotAnImage (415) for anything else, 422 for an empty file."""
    if not upload.data:
        raise Problem(422, "Empty file", f"{upload.filename} is empty", type_="empty-file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data)) as img:
                fmt, size = img.format, img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise NotAnImage(upload.filename) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "image", None
    if fmt not in IMAGE_FORMATS:
        raise NotAnImage(upload.filename, found=fmt)
    return fmt, size


class BodyTooLarge(Problem):
    def __init__(self, limit: int):
        super().__init__(413, "Content too large", f"the request body is larger than {mib(limit)}",
                         type_="content-too-large")


class BodyReadTimeout(Problem):
    def __init__(self, timeout_s: float):
        super().__init__(408, "Request timeout", f"the request body was not received within {timeout_s:g} s",
                         type_="request-timeout", headers={"Connection": "close"})


class BodySizeLimit:
    """Refuses a body over `max_bytes` (at once from Content-Length, else while it is being read) and a body
    that takes longer than `read_timeout_s` to arrive (a client trickling bytes: uvicorn has no such timeout)."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout_s: float = 120.0):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = problem_response(413, "Content too large",
                                        f"the request body is larger than {mib(self.max_bytes)}",
                                        type_="content-too-large",
                                        instance=scope.get("path"))
            await response(scope, receive, send)
            return
        seen = 0
        deadline = time.monotonic() + self.read_timeout_s

        async def counting_receive() -> Message:
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise BodyReadTimeout(self.read_timeout_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


async def read_multipart(request: Request, *, max_files: int, max_file_bytes: int,
                         file_field: str = "images") -> tuple[list[Upload], dict[str, str]]:
    """Files of `file_field` and the plain form fields of a multipart request."""
    try:
        form = await request.form(max_files=max_files + 1, max_fields=100, max_part_size=1024 * 1024)
    except MultiPartException as e:
        raise Problem(400, "Malformed multipart body", str(e), type_="bad-multipart") from e
    files: list[Upload] = []
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != file_field:
                raise Problem(422, "Unexpected file field", f"files go in the `{file_field}` field, not `{name}`",
                              type_="validation-error")
            if len(files) >= max_files:
                raise Problem(413, "Too many files", f"at most {max_files} files per request",
                              type_="too-many-files")
            data = await value.read(max_file_bytes + 1)
            if len(data) > max_file_bytes:
                raise Problem(413, "File too large",
                              f"{value.filename or 'a file'} is larger than {mib(max_file_bytes)}",
                              type_="file-too-large")
            files.append(Upload(value.filename or f"image{len(files)}", value.content_type or "", data))
        else:
            fields[name] = value
    await form.close()
    return files, fields


def decode_base64_images(items: list[str], *, max_files: int, max_file_bytes: int) -> list[Upload]:
    if len(items) > max_files:
        raise Problem(413, "Too many files", f"at most {max_files} images per request", type_="too-many-files")
    out = []
    for i, item in enumerate(items):
        payload = item.split(",", 1)[1] if item.startswith("data:") else item
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise Problem(422, "Invalid base64", f"images[{i}] is not valid base64", type_="validation-error") from e
        if len(data) > max_file_bytes:
            raise Problem(413, "File too large", f"images[{i}] is larger than {mib(max_file_bytes)}",
                          type_="file-too-large")
        out.append(Upload(f"images[{i}]", "", data))
    return out


def check_image(upload: Upload, *, max_pixels: int, min_side: int = 1) -> tuple[str, int, int]:
    """(format, width, height) of a decodable image; the pixel cap is checked from the header first."""
    name = upload.filename
    sniff_format(upload)
    try:
        with Image.open(io.BytesIO(upload.data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise Problem(413, "Image too large",
                              f"{name} has {width}x{height} pixels; the limit is {max_pixels} pixels",
                              type_="image-too-large")
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()  # a full decode: catches truncated files that the header alone does not
            fmt = img.format or "unknown"
    except Problem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Problem(413, "Image too large", f"{name} has more pixels than the limit of {max_pixels}",
                      type_="image-too-large") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise Problem(422, "Corrupt or truncated image", f"{name} could not be decoded: it is corrupt or "
                      f"truncated ({type(e).__name__})", type_="corrupt-image") from e
    if min(width, height) < min_side:
        raise Problem(422, "Image too small", f"{name} is {width}x{height}; each side must be ≥ {min_side} px",
                      type_="image-too-small")
    return fmt, width, height


def parse_json_field(raw: str, name: str) -> dict:
    """A form field that must hold a JSON object."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise Problem(422, "Invalid JSON", f"the `{name}` field is not valid JSON: {e.msg}",
                      type_="validation-error") from e
    except RecursionError:
        raise Problem(422, "Invalid JSON", f"the `{name}` field is nested too deeply",
                      type_="validation-error") from None
    if not isinstance(value, dict):
        raise Problem(422, "Invalid JSON", f"the `{name}` field must be a JSON object", type_="validation-error")
    return value
