"""Inputs for the console and CLI tests; their real stack is the session's `real_stack` (tests/procs.py)."""

from pathlib import Path

from PIL import Image, ImageDraw


def text_image(path: Path, lines=("DETBOOTH 2026", "text detection"), size=(480, 200)) -> Path:
    """A white image with black printed text: something a text detector finds boxes in."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    try:
        from PIL import ImageFont

        font = ImageFont.load_default(size=32)
    except (TypeError, OSError):
        font = None
    for i, line in enumerate(lines):
        draw.text((24, 30 + i * 70), line, fill="black", font=font)
    img.save(path)
    return path


def subject_images(folder: Path, n: int = 3, size: int = 96) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (size, size), (40 * i, 120, 200 - 30 * i))
        ImageDraw.Draw(img).ellipse((16, 16, size - 16, size - 16), fill=(230, 180, 40))
        img.save(folder / f"subject{i}.png")
    return folder
