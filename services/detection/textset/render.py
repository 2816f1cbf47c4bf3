"""Deterministic text images with known line polygons: Latin and CJK fonts, straight, rotated and curved lines,
varied sizes, backgrounds and noise. One seed gives one image, bit for bit, on any machine with the same fonts."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import Polygon

from .fonts import FONTS, FontSpec, load_font

LATIN_WORDS = (
    "invoice", "total", "DetBooth", "text", "receipt", "paddle", "batch", "42.50", "Hello", "world", "OCR", "lines",
    "2026", "detect", "quality", "service", "boxes", "Street", "No.", "price", "EUR", "€19,99", "Qty", "café",
    "Straße", "naïve", "order#7731", "08:15", "(tel)", "www.example.org", "SALE", "open", "daily", "menu", "A4",
)
CJK_CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
    "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还"
    "因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结"
    "解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级"
)
PUNCT_CJK = "，。：（）0123456789"


@dataclass(frozen=True)
class TextSample:
    """One image and its text lines. ``polygons`` are (K, 2) float32 arrays in pixels (quads or, for curved lines,
    longer outlines); None for real photos kept only to compare engines with each other."""

    name: str
    image: np.ndarray  # H x W x 3 uint8 BGR, as the service decodes uploads
    polygons: tuple[np.ndarray, ...] | None

    @property
    def has_truth(self) -> bool:
        return self.polygons is not None


# ----------------------------------------------------------------------------------------------- geometry


def _frame(theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors along the baseline (u) and towards the glyphs' bottom (v) for a heading theta (radians)."""
    return np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])


def _affine(origin_in_mask: tuple[float, float], at: np.ndarray, theta: float) -> np.ndarray:
    """2 x 3 map from mask pixels to image pixels putting the mask's baseline origin at ``at``, rotated by theta."""
    u, v = _frame(theta)
    ox, oy = origin_in_mask
    rot = np.stack([u, v], axis=1)  # columns: where mask x and mask y go
    shift = at - rot @ np.array([ox, oy])
    return np.hstack([rot, shift[:, None]]).astype(np.float64)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _arc_point(start: np.ndarray, theta0: float, curvature: float, s: float) -> tuple[np.ndarray, float]:
    """Position and heading after arc length s along a baseline of constant curvature (0: straight)."""
    theta = theta0 + curvature * s
    if abs(curvature) < 1e-9:
        return start + s * np.array([np.cos(theta0), np.sin(theta0)]), theta
    offset = np.array([np.sin(theta) - np.sin(theta0), -(np.cos(theta) - np.cos(theta0))]) / curvature
    return start + offset, theta


# ----------------------------------------------------------------------------------------------- glyph masks


def _text_mask(text: str, font) -> tuple[np.ndarray, tuple[float, float]]:
    """An L-mode mask of ``text`` and the mask pixel where its left baseline point lies."""
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    pad = 4
    w, h = int(right - left) + 2 * pad, int(bottom - top) + 2 * pad
    origin = (pad - left, pad - top)
    mask = Image.new("L", (max(w, 1), max(h, 1)), 0)
    ImageDraw.Draw(mask).text(origin, text, font=font, fill=255, anchor="ls")
    return np.asarray(mask), (float(origin[0]), float(origin[1]))


def _ink_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask > 40)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _stamp(alpha: np.ndarray, mask: np.ndarray, m: np.ndarray) -> None:
    """Warp ``mask`` by ``m`` into ``alpha`` (max-composited), touching only the destination's bounding box."""
    h, w = mask.shape
    corners = _apply(m, np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64))
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, alpha.shape[1]), min(y1, alpha.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    local = m.copy()
    local[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(mask, local, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderValue=0)
    np.maximum(alpha[y0:y1, x0:x1], warped.astype(np.float32) / 255.0, out=alpha[y0:y1, x0:x1])


@dataclass(frozen=True)
class _Line:
    polygon: np.ndarray
    stamps: tuple[tuple[np.ndarray, np.ndarray], ...]  # (mask, affine) pairs


def _straight_line(text: str, font, at: np.ndarray, theta: float) -> _Line | None:
    mask, origin = _text_mask(text, font)
    ink = _ink_box(mask)
    if ink is None:
        return None
    x0, y0, x1, y1 = ink
    m = _affine(origin, at, theta)
    quad = _apply(m, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64))
    return _Line(quad.astype(np.float32), ((mask, m),))


def _curved_line(text: str, font, at: np.ndarray, theta0: float, curvature: float) -> _Line | None:
    """Glyph by glyph along a circular baseline; the outline follows the arc above and below the ink."""
    stamps, tops, bottoms, spans = [], [], [], []
    s = 0.0
    for ch in text:
        advance = float(font.getlength(ch))
        if not ch.isspace():
            mask, origin = _text_mask(ch, font)
            ink = _ink_box(mask)
            if ink is not None:
                p, _ = _arc_point(at, theta0, curvature, s)
                _, theta_mid = _arc_point(at, theta0, curvature, s + advance / 2)
                stamps.append((mask, _affine(origin, p, theta_mid)))
                tops.append(ink[1] - origin[1])
                bottoms.append(ink[3] - origin[1])
                spans.append((s + ink[0] - origin[0], s + ink[2] - origin[0]))
        s += advance
    if not stamps:
        return None
    top, bottom = min(tops), max(bottoms)
    s_start, s_end = spans[0][0], spans[-1][1]
    upper, lower = [], []
    for s_i in np.linspace(s_start, s_end, max(4, len(spans) + 1)):
        p, theta = _arc_point(at, theta0, curvature, float(s_i))
        _, v = _frame(theta)
        upper.append(p + top * v)
        lower.append(p + bottom * v)
    outline = np.array(upper + lower[::-1], dtype=np.float32)
    return _Line(outline, tuple(stamps))


# ----------------------------------------------------------------------------------------------- backgrounds


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, bool]:
    """A float32 BGR background and whether it is dark (then text is light)."""
    kind = rng.choice(["flat", "gradient", "texture", "dark"], p=[0.35, 0.25, 0.3, 0.1])
    if kind == "dark":
        base = rng.uniform(10, 70, size=3)
        return np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy(), True
    base = rng.uniform(185, 255, size=3)
    image = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    if kind == "gradient":
        other = rng.uniform(170, 255, size=3)
        t = np.linspace(0.0, 1.0, w if rng.random() < 0.5 else h, dtype=np.float32)
        ramp = t[None, :, None] if t.size == w else t[:, None, None]
        image = image * (1 - ramp) + other.astype(np.float32) * ramp
    elif kind == "texture":
        coarse = rng.normal(0, 18, size=(max(2, h // 40), max(2, w // 40), 3)).astype(np.float32)
        image += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return image, False


def _text_colour(rng: np.random.Generator, dark_background: bool) -> np.ndarray:
    if dark_background:
        return rng.uniform(200, 255, size=3)
    if rng.random() < 0.7:
        return rng.uniform(0, 60, size=3)
    colour = rng.uniform(0, 140, size=3)
    colour[int(rng.integers(3))] = rng.uniform(0, 40)
    return colour


# ----------------------------------------------------------------------------------------------- one image


def _line_text(rng: np.random.Generator, script: str) -> str:
    if script == "cjk":
        n = int(rng.integers(3, 12))
        chars = [CJK_CHARS[int(i)] for i in rng.integers(len(CJK_CHARS), size=n)]
        if rng.random() < 0.3:
            chars.insert(int(rng.integers(1, n)), PUNCT_CJK[int(rng.integers(len(PUNCT_CJK)))])
        return "".join(chars)
    return " ".join(str(w) for w in rng.choice(LATIN_WORDS, size=int(rng.integers(1, 5))))


def _pick_font(rng: np.random.Generator, script: str) -> FontSpec:
    choices = [f for f in FONTS if f.script == script]
    return choices[int(rng.integers(len(choices)))]


def _fits(polygon: np.ndarray, placed: list[Polygon], w: int, h: int, margin: float = 6.0) -> bool:
    xs, ys = polygon[:, 0], polygon[:, 1]
    if xs.min() < margin or ys.min() < margin or xs.max() > w - margin or ys.max() > h - margin:
        return False
    shape = Polygon(polygon)
    if not shape.is_valid or shape.area < 40:
        return False
    grown = shape.buffer(margin)
    return not any(grown.intersects(p) for p in placed)


def render_sample(seed: int, name: str | None = None, max_side: int = 960, min_side: int = 256) -> TextSample:
    """One image from one seed: 2-9 lines, 35 % of them CJK, a third rotated, a fifth curved."""
    rng = np.random.default_rng(seed)
    w = int(rng.integers(min_side, max_side + 1))
    h = int(rng.integers(min_side, max_side + 1))
    background, dark = _background(rng, h, w)
    alpha_layers: list[tuple[np.ndarray, np.ndarray]] = []
    placed: list[Polygon] = []
    polygons: list[np.ndarray] = []
    wanted = int(rng.integers(2, 10))
    for _ in range(wanted * 6):
        if len(polygons) == wanted:
            break
        script = "cjk" if rng.random() < 0.35 else "latin"
        size = int(rng.integers(14, max(15, min(56, min(w, h) // 5))))
        font = load_font(_pick_font(rng, script), size)
        text = _line_text(rng, script)
        shape_kind = rng.choice(["straight", "rotated", "steep", "curved"], p=[0.45, 0.25, 0.1, 0.2])
        theta = {"straight": 0.0, "rotated": rng.uniform(-0.26, 0.26), "steep": rng.uniform(-0.8, 0.8),
                 "curved": rng.uniform(-0.2, 0.2)}[shape_kind]
        at = np.array([rng.uniform(0, w * 0.7), rng.uniform(size, h)])
        if shape_kind == "curved":
            length = float(font.getlength(text))
            bend = rng.uniform(0.2, 0.45) * (1 if rng.random() < 0.5 else -1)  # total turn in radians
            line = _curved_line(text, font, at, theta - bend / 2, bend / max(length, 1.0))
        else:
            line = _straight_line(text, font, at, float(theta))
        if line is None or not _fits(line.polygon, placed, w, h):
            continue
        alpha = np.zeros((h, w), dtype=np.float32)
        for mask, m in line.stamps:
            _stamp(alpha, mask, m)
        alpha_layers.append((alpha, _text_colour(rng, dark)))
        placed.append(Polygon(line.polygon))
        polygons.append(line.polygon)
    image = background
    for alpha, colour in alpha_layers:
        a = alpha[..., None] * np.float32(rng.uniform(0.85, 1.0))
        image = image * (1 - a) + colour.astype(np.float32) * a
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (3, 3), float(rng.uniform(0.3, 0.9)))
    image = image + rng.normal(0, rng.uniform(0, 8), size=image.shape).astype(np.float32)
    out = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return TextSample(name or f"rendered-{seed}", out, tuple(polygons))
