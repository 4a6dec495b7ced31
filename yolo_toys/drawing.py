"""Render any task's result onto its image, for the `/annotate` endpoint.

The renderer only reads the shared result schemas, so every model family gets the same picture.
Geometry is clipped to the image (plus a small margin) before it reaches PIL: results may hold points
far outside the image, or non-finite ones, and PIL's integer drawing would overflow or crawl on them.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from yolo_toys.schemas import (
    CaptionResult,
    ClassifyResult,
    DepthResult,
    DetectResult,
    Keypoint,
    ObbResult,
    PoseResult,
    SegmentResult,
    TaskResult,
    VqaResult,
    ZeroShotClassifyResult,
)

Color = tuple[int, int, int]
Point = tuple[float, float]
Rect = tuple[float, float, float, float]

# Ultralytics' 20-colour palette, so a class keeps the colour users know from `yolo predict`.
PALETTE: tuple[Color, ...] = tuple(
    (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    for h in (
        "FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
        "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7",
    )
)

SEGMENT_ALPHA = 0.4
PANEL_ALPHA = 0.6
KEYPOINT_MIN_SCORE = 0.5

_HEAD: Color = (0, 255, 0)
_ARMS: Color = (255, 128, 0)
_TORSO: Color = (255, 51, 255)
_LEGS: Color = (51, 153, 255)

# COCO-17 skeleton by keypoint name, coloured by body region as Ultralytics does.
SKELETON: tuple[tuple[str, str, Color], ...] = (
    ("left_ankle", "left_knee", _LEGS),
    ("left_knee", "left_hip", _LEGS),
    ("right_ankle", "right_knee", _LEGS),
    ("right_knee", "right_hip", _LEGS),
    ("left_hip", "right_hip", _TORSO),
    ("left_shoulder", "left_hip", _TORSO),
    ("right_shoulder", "right_hip", _TORSO),
    ("left_shoulder", "right_shoulder", _ARMS),
    ("left_shoulder", "left_elbow", _ARMS),
    ("right_shoulder", "right_elbow", _ARMS),
    ("left_elbow", "left_wrist", _ARMS),
    ("right_elbow", "right_wrist", _ARMS),
    ("left_eye", "right_eye", _HEAD),
    ("nose", "left_eye", _HEAD),
    ("nose", "right_eye", _HEAD),
    ("left_eye", "left_ear", _HEAD),
    ("right_eye", "right_ear", _HEAD),
    ("left_ear", "left_shoulder", _HEAD),
    ("right_ear", "right_shoulder", _HEAD),
)
_HEAD_KEYPOINTS = frozenset({"nose", "left_eye", "right_eye", "left_ear", "right_ear"})
_COCO_KEYPOINTS = frozenset(name for a, b, _ in SKELETON for name in (a, b))


# The longest side drawn: a larger image is annotated on a copy scaled down to it. Filling an outline
# costs a pass per row of the canvas: 300 masks drawn on a 1 x 40,000,000 image took 47 s (and JPEG
# holds at most 65,500 pixels a side).
DRAW_MAX_SIDE = 8192


def drawn_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the annotated image of an image of this size."""
    scale = min(1.0, DRAW_MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def render(rgb: np.ndarray, result: TaskResult, *, quality: int = 90) -> bytes:
    """Draw `result` on the HxWx3 uint8 RGB image and return JPEG bytes.

    Coordinates are in pixels of `result.image`; if `rgb` has another size they are rescaled to it,
    so a caller may annotate a resized copy. The input array is never written to. An image longer
    than DRAW_MAX_SIDE is drawn on a copy scaled down to it.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if isinstance(result, DepthResult):
        img = depth_colormap(result)
        img = img.resize(drawn_size(img.width, img.height), Image.Resampling.BOX) if max(img.size) > DRAW_MAX_SIDE else img
    else:
        height, width = np.asarray(rgb).shape[:2]
        if max(height, width) > DRAW_MAX_SIDE:
            import cv2

            rgb = cv2.resize(np.asarray(rgb), drawn_size(width, height), interpolation=cv2.INTER_AREA)
        img = _to_image(rgb)
        _Painter(img, result).paint()
    buf = io.BytesIO()
    # No chroma subsampling: with 4:2:0 the thin coloured lines and tag text smear into the background.
    img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def depth_colormap(result: DepthResult) -> Image.Image:
    """The served 16-bit depth map in the inferno colour map: near is bright, far is dark."""
    import cv2

    with Image.open(io.BytesIO(base64.b64decode(result.depth_png))) as png:
        levels = np.asarray(png, dtype=np.uint16)
    scaled = (levels.astype(np.float32) / 257.0).round().astype(np.uint8)
    return Image.fromarray(cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO)[..., ::-1].copy())


def color_for(class_id: int) -> Color:
    """Palette colour of a class, stable across requests and models."""
    return PALETTE[class_id % len(PALETTE)]


def _to_image(rgb: np.ndarray) -> Image.Image:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot annotate an empty image of shape {arr.shape}")
    # A private copy: whether PIL shares the buffer of an array is an implementation detail.
    return Image.fromarray(np.array(arr, copy=True))


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError):  # Pillow built without FreeType: fixed-size bitmap font.
        return ImageFont.load_default()


def _text_color(background: Color) -> Color:
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _clip_polygon(points: Sequence[Point], rect: Rect) -> list[Point]:
    """Sutherland-Hodgman against `rect`: exact for fills, and the added edges lie outside the image."""
    x0, y0, x1, y1 = rect
    out = list(points)
    for axis, bound, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if not out:
            break
        pts, out = out, []
        prev = pts[-1]
        prev_in = prev[axis] >= bound if keep_above else prev[axis] <= bound
        for cur in pts:
            cur_in = cur[axis] >= bound if keep_above else cur[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                out.append((bound, cross[1]) if axis == 0 else (cross[0], bound))
            if cur_in:
                out.append(cur)
            prev, prev_in = cur, cur_in
    return out


def _clip_segment(a: Point, b: Point, rect: Rect) -> tuple[Point, Point] | None:
    """Liang-Barsky; None when the segment misses `rect`."""
    x0, y0, x1, y1 = rect
    dx, dy = b[0] - a[0], b[1] - a[1]
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, a[0] - x0), (dx, x1 - a[0]), (-dy, a[1] - y0), (dy, y1 - a[1])):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    return (a[0] + t0 * dx, a[1] + t0 * dy), (a[0] + t1 * dx, a[1] + t1 * dy)


class _Painter:
    """Draws one result: translucent fills first, then outlines, then labels so none gets covered."""

    def __init__(self, img: Image.Image, result: TaskResult) -> None:
        self.img = img
        self.result = result
        self.w, self.h = img.size
        self.sx = self.w / result.image.width if result.image.width > 0 else 1.0
        self.sy = self.h / result.image.height if result.image.height > 0 else 1.0
        self.lw = max(2, round(0.003 * (self.w + self.h) / 2))
        self.font = _font(max(10, round(0.025 * (self.w + self.h) / 2)))
        self.pad = max(1, self.lw // 2 + 1)
        margin = 2 * self.lw + 2
        self.clip: Rect = (-margin, -margin, self.w + margin, self.h + margin)
        self.labels: list[tuple[float, float, str, Color]] = []

    def paint(self) -> None:
        r = self.result
        if isinstance(r, DetectResult):
            self._boxes((d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.label, d.score, d.class_id)
                        for d in r.detections)
        elif isinstance(r, SegmentResult):
            self._fill([(poly, color_for(i.class_id)) for i in r.instances for poly in i.polygons],
                       SEGMENT_ALPHA)
            self._boxes((i.box.x1, i.box.y1, i.box.x2, i.box.y2, i.label, i.score, i.class_id)
                        for i in r.instances)
        elif isinstance(r, PoseResult):
            self._boxes((i.box.x1, i.box.y1, i.box.x2, i.box.y2, i.label, i.score, i.class_id)
                        for i in r.instances)
            for inst in r.instances:
                self._skeleton(inst.keypoints, color_for(inst.class_id))
        elif isinstance(r, ObbResult):
            for d in r.detections:
                self._oriented(d.rbox.corners, d.label, d.score, d.class_id)
        elif isinstance(r, (ClassifyResult, ZeroShotClassifyResult)):
            self._panel([f"{c.label} {c.score:.2f}" for c in r.top_k])
        elif isinstance(r, CaptionResult):
            self._panel(self._wrap(r.text or "(empty caption)"))
        elif isinstance(r, VqaResult):
            self._panel(self._wrap(f"Q: {r.question}") + self._wrap(f"A: {r.answer}"))
        else:
            raise TypeError(f"cannot render a {type(r).__name__}")
        self._draw_labels()

    def _pt(self, x: float, y: float) -> Point:
        return x * self.sx, y * self.sy

    def _fill(self, polygons: list[tuple[Sequence[Point], Color]], alpha: float) -> None:
        """Blend every polygon in one pass, so cost does not grow with the image per instance."""
        layer = self.img.copy()
        mask = Image.new("L", self.img.size, 0)
        draw_layer, draw_mask = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
        drawn = False
        for poly, color in polygons:
            if len(poly) < 3 or not all(_finite(x, y) for x, y in poly):
                continue
            pts = _clip_polygon([self._pt(x, y) for x, y in poly], self.clip)
            if len(pts) < 3:
                continue
            draw_layer.polygon(pts, fill=color)
            draw_mask.polygon(pts, fill=255)
            drawn = True
        if drawn:
            self.img.paste(Image.blend(self.img, layer, alpha), mask=mask)

    def _boxes(self, boxes: Iterable[tuple[float, float, float, float, str, float, int]]) -> None:
        draw = ImageDraw.Draw(self.img)
        cx0, cy0, cx1, cy1 = self.clip
        for x1, y1, x2, y2, label, score, class_id in boxes:
            if not _finite(x1, y1, x2, y2):
                continue
            (ax, ay), (bx, by) = self._pt(x1, y1), self._pt(x2, y2)
            left, right = sorted((ax, bx))
            top, bottom = sorted((ay, by))
            if right < 0 or bottom < 0 or left > self.w or top > self.h:
                continue
            left, right = max(left, cx0), min(right, cx1)
            top, bottom = max(top, cy0), min(bottom, cy1)
            color = color_for(class_id)
            draw.rectangle((left, top, right, bottom), outline=color, width=self.lw)
            self.labels.append((left, top, f"{label} {score:.2f}", color))

    def _oriented(self, corners: Sequence[Point], label: str, score: float, class_id: int) -> None:
        if not all(_finite(x, y) for x, y in corners):
            return
        pts = _clip_polygon([self._pt(x, y) for x, y in corners], self.clip)
        if len(pts) < 3:
            return
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        if max(xs) < 0 or max(ys) < 0 or min(xs) > self.w or min(ys) > self.h:
            return
        color = color_for(class_id)
        ImageDraw.Draw(self.img).polygon(pts, outline=color, width=self.lw)
        top = min(pts, key=lambda p: p[1])
        self.labels.append((top[0], top[1], f"{label} {score:.2f}", color))

    def _skeleton(self, keypoints: Sequence[Keypoint], class_color: Color) -> None:
        """Limbs between confident COCO keypoints found by name; other keypoints are plain dots."""
        visible = {
            k.name: self._pt(k.x, k.y)
            for k in keypoints
            if k.score >= KEYPOINT_MIN_SCORE and _finite(k.x, k.y)
        }
        draw = ImageDraw.Draw(self.img)
        for a, b, color in SKELETON:
            if a in visible and b in visible:
                seg = _clip_segment(visible[a], visible[b], self.clip)
                if seg is not None:
                    draw.line(seg, fill=color, width=self.lw)
        radius = max(2, round(1.5 * self.lw))
        for name, (x, y) in visible.items():
            if -radius <= x <= self.w + radius and -radius <= y <= self.h + radius:
                if name in _HEAD_KEYPOINTS:
                    color = _HEAD
                elif name in _COCO_KEYPOINTS:
                    color = _ARMS
                else:
                    color = class_color
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)

    def _draw_labels(self) -> None:
        """Tags above their anchor, or just inside it at the top edge, kept within the image."""
        draw = ImageDraw.Draw(self.img)
        for x, y, text, color in self.labels:
            left, top, right, bottom = self.font.getbbox(text)
            tw, th = right - left + 2 * self.pad, bottom - top + 2 * self.pad
            x = min(max(x, 0.0), float(self.w))
            y = min(max(y, 0.0), float(self.h))
            ty = y - th if y - th >= 0 else y
            ty = max(0.0, min(ty, self.h - th))
            tx = max(0.0, min(x, self.w - tw))
            draw.rectangle((tx, ty, tx + tw - 1, ty + th - 1), fill=color)
            xy = (tx + self.pad - left, ty + self.pad - top)
            draw.text(xy, text, fill=_text_color(color), font=self.font)

    def _wrap(self, text: str) -> list[str]:
        """Lines that fit the image's width in the current font (an average glyph is ~0.6 em)."""
        per_line = max(8, int(self.w / (0.6 * self.font.size if hasattr(self.font, "size") else 8)))
        return textwrap.wrap(text, per_line) or [""]

    def _panel(self, lines: list[str]) -> None:
        """Top-k list on a translucent dark panel, readable on any background."""
        if not lines:
            return
        boxes = [self.font.getbbox(line) for line in lines]
        left, top = min(b[0] for b in boxes), min(b[1] for b in boxes)
        line_h = max(b[3] for b in boxes) - top + self.pad
        width = min(self.w, max(b[2] for b in boxes) - left + 2 * self.pad)
        height = min(self.h, line_h * len(lines) + self.pad)
        region = self.img.crop((0, 0, width, height))
        self.img.paste(Image.blend(region, Image.new("RGB", region.size), PANEL_ALPHA), (0, 0))
        draw = ImageDraw.Draw(self.img)
        for i, line in enumerate(lines):
            xy = (self.pad - left, self.pad + i * line_h - top)
            draw.text(xy, line, fill=(255, 255, 255), font=self.font)
