"""What the families' `fit` rules share: an image's aspect ratio, its central part, and the 4xx that
names the limit a request is over (docs/limits.md has every limit, its setting and its measured cost).
"""

from __future__ import annotations

from yolo_toys.errors import ServiceError
from yolo_toys.imaging import DecodedImage


def aspect(height: int, width: int) -> float:
    """Long side over short side: 1 for a square, 20000 for a 1 x 20,000 image."""
    return max(height, width) / max(1, min(height, width))


def ratio(value: float) -> str:
    """An aspect ratio as a client reads it: `20000:1`, `2.5:1`."""
    return f"{value:.1f}".removesuffix(".0") + ":1"


def central_size(height: int, width: int, max_aspect: float) -> tuple[int, int]:
    """(height, width) of the central part `central_part` keeps."""
    if aspect(height, width) <= max_aspect:
        return height, width
    keep = max(1, round(min(height, width) * max_aspect))
    return (keep, width) if height > width else (height, keep)


def central_part(image: DecodedImage, max_aspect: float) -> DecodedImage:
    """The image's central part, no more elongated than `max_aspect`, for a model that centre-crops.

    A classifier that resizes the short side and centre-crops only looks at the central square; the
    parts of a long image beyond it are what its resize would blow up (1 x 20,000 at 224 is 224 x
    4,480,000). With `max_aspect` >= 2 the kept part holds that square and its resampling margin, so
    the answer is the model's on the whole image; an image within `max_aspect` is not touched at all.
    """
    height, width = image.shape
    keep_h, keep_w = central_size(height, width, max_aspect)
    if (keep_h, keep_w) == (height, width):
        return image
    return image.cropped((height - keep_h) // 2, (width - keep_w) // 2, keep_h, keep_w)


def too_elongated(image: DecodedImage, limit: float, model: str) -> ServiceError:
    """The 422 of an image more elongated than what `model` can take."""
    height, width = image.original.shape
    return ServiceError(422, "image not supported",
                        f"{width}x{height}: aspect ratio {ratio(aspect(height, width))} is over the limit "
                        f"{ratio(limit)} for {model}")  # fmt: skip
