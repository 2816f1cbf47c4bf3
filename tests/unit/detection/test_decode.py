import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from services.detection.decode import CorruptImage, EmptyImage, NotAnImage, TooManyPixels, decode_image

CAP = 4_000_000


def pil_bytes(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds (almost) no pixel data: a decompression-bomb shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_rgb_png_becomes_bgr():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    out = decode_image(pil_bytes(Image.fromarray(rgb), "PNG"), CAP)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert (out[..., 2] == 200).all() and (out[..., 0] == 0).all()


def test_grayscale_becomes_three_channels():
    out = decode_image(pil_bytes(Image.new("L", (5, 3), 77), "PNG"), CAP)
    assert out.shape == (3, 5, 3) and (out == 77).all()


def test_alpha_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black
    rgba[0, 0] = (0, 0, 0, 255)  # one opaque black pixel
    out = decode_image(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), CAP)
    assert (out[0, 0] == 0).all() and (out[1, 1] == 255).all()


def test_grey_alpha_and_palette_transparency():
    la = Image.new("LA", (3, 3), (0, 0))
    assert (decode_image(pil_bytes(la, "PNG"), CAP) == 255).all()
    p = Image.new("P", (3, 3), 0)
    p.putpalette([0, 0, 0] * 256)
    assert decode_image(pil_bytes(p, "PNG", transparency=0), CAP).shape == (3, 3, 3)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    out = decode_image(pil_bytes(cmyk, "JPEG", quality=95), CAP)
    b, g, r = out[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16_bit_grey_png_is_scaled_not_clipped():
    grey16 = np.full((4, 4), 32768, np.uint16)
    ok, buf = cv2.imencode(".png", grey16)
    out = decode_image(buf.tobytes(), CAP)
    assert out.dtype == np.uint8 and abs(int(out[0, 0, 0]) - 128) <= 1


def test_16_bit_colour_png():
    bgr16 = np.zeros((4, 4, 3), np.uint16)
    bgr16[..., 2] = 65535
    ok, buf = cv2.imencode(".png", bgr16)
    out = decode_image(buf.tobytes(), CAP)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8 and out[0, 0, 2] == 255 and out[0, 0, 0] == 0


def test_exif_orientation_is_applied():
    rgb = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; left half red
    rgb[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = pil_bytes(Image.fromarray(rgb), "JPEG", exif=exif.tobytes(), quality=95)
    out = decode_image(data, CAP)
    assert out.shape[:2] == (40, 20)
    assert out[5, 10, 2] > 200 and out[35, 10, 2] < 50  # the left half is now on top


def test_one_pixel_image_is_fine():
    assert decode_image(pil_bytes(Image.new("RGB", (1, 1)), "PNG"), CAP).shape == (1, 1, 3)


def test_zero_bytes():
    with pytest.raises(EmptyImage):
        decode_image(b"", CAP)


@pytest.mark.parametrize("data", [b"hello, not an image", b"%PDF-1.4\n", b"\x00" * 100])
def test_not_an_image(data):
    with pytest.raises(NotAnImage) as info:
        decode_image(data, CAP)
    assert info.value.status == 415


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = pil_bytes(Image.fromarray(noise), fmt)
    with pytest.raises(CorruptImage) as info:
        decode_image(data[: len(data) // 2], CAP)
    assert info.value.status == 422


def test_pixel_cap_is_checked_from_the_header():
    with pytest.raises(TooManyPixels) as info:
        decode_image(png_header_only(5000, 5000), CAP)  # decoding this would fail: no pixel data
    assert info.value.status == 413 and "25000000" in str(info.value)


def test_decompression_bomb_header():
    with pytest.raises(TooManyPixels):
        decode_image(png_header_only(100_000, 100_000), 10**12)
