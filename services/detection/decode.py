"""Safe image decoding: size checked from the header before the full decode, EXIF orientation applied,
every pixel format converted to 8-bit BGR."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM", "JPEG2000"})


class ImageDecodeError(ValueError):
    """The bytes are not a usable image. ``status`` is the HTTP status the API answers with."""

    status = 422
    slug = "unreadable-image"
    title = "Unreadable image"


class EmptyImage(ImageDecodeError):
    slug = "empty-image"
    title = "Empty image"


class NotAnImage(ImageDecodeError):
    slug = "not-an-image"
    status = 415
    title = "Unsupported media type"


class CorruptImage(ImageDecodeError):
    slug = "corrupt-image"
    title = "Corrupt or truncated image"


class TooManyPixels(ImageDecodeError):
    slug = "too-many-pixels"
    status = 413
    title = "Image too large"


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes to a contiguous HxWx3 uint8 BGR array, or raise an ``ImageDecodeError``."""
    if not data:
        raise EmptyImage("the image has zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError as exc:
        raise NotAnImage("the bytes are not an image in a supported format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"the image has more than the allowed {max_pixels} pixels") from exc
    if image.format not in ALLOWED_FORMATS:
        raise NotAnImage(f"image format {image.format} is not supported")
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if width < 1 or height < 1:
        raise CorruptImage("the image has no pixels")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return to_bgr(image)
    except Exception as exc:  # truncated data, bad EXIF, codec errors: all mean "this file is broken"
        raise CorruptImage(f"the image could not be decoded: {exc}") from exc


def to_bgr(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 BGR. Alpha is composited over white; 16/32-bit grey is scaled, not clipped."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])
