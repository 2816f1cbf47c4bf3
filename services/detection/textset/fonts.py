"""The Debian font files the rendered sets draw with (fonts-dejavu-core, fonts-wqy-microhei)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

FONT_ROOTS = (Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts"))


@dataclass(frozen=True)
class FontSpec:
    relpath: str  # under a FONT_ROOTS folder
    script: str  # "latin" or "cjk"
    package: str  # the Debian package that ships it


FONTS = (
    FontSpec("dejavu/DejaVuSans.ttf", "latin", "fonts-dejavu-core"),
    FontSpec("dejavu/DejaVuSans-Bold.ttf", "latin", "fonts-dejavu-core"),
    FontSpec("dejavu/DejaVuSerif.ttf", "latin", "fonts-dejavu-core"),
    FontSpec("dejavu/DejaVuSansMono.ttf", "latin", "fonts-dejavu-core"),
    FontSpec("wqy/wqy-microhei.ttc", "cjk", "fonts-wqy-microhei"),
)


class FontsMissing(RuntimeError):
    pass


def font_path(spec: FontSpec) -> Path:
    for root in FONT_ROOTS:
        if (root / spec.relpath).is_file():
            return root / spec.relpath
    raise FontsMissing(
        f"font {spec.relpath} not found under {', '.join(map(str, FONT_ROOTS))}: the rendered calibration and "
        f"validation sets need it. Install it with `apt-get install {spec.package}` (the Makefile's install does)."
    )


def check_fonts() -> None:
    """Raise ``FontsMissing`` naming every missing font and its package."""
    missing = []
    for spec in FONTS:
        try:
            font_path(spec)
        except FontsMissing:
            missing.append(f"{spec.relpath} ({spec.package})")
    if missing:
        raise FontsMissing(f"fonts missing for the rendered text sets: {', '.join(missing)}; "
                           f"install them with apt-get install fonts-dejavu-core fonts-wqy-microhei")


@lru_cache(maxsize=256)
def load_font(spec: FontSpec, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path(spec)), size)
