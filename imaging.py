"""Image uploads: limits, format sniffing at the front, and the one full decode in the runner.

The front service only reads the uploaded bytes and checks their signature (cheap, no decode);
runners decode once, from the original bytes, and map every failure to an `ImageError` that the
front turns into a 4xx.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from PIL import Image, ImageOps
from pydantic import BeforeValidator, Field


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Limits:
    """Upload limits, configurable through the environment of the service."""

    max_upload_bytes: int = _env_int("YOLO_TOYS_MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
    max_pixels: int = _env_int("YOLO_TOYS_MAX_PIXELS", 40_000_000)


LIMITS = Limits()

# (format name, signature test); PIL decodes all of these.
_SIGNATURES: list[tuple[str, Any]] = [
    ("JPEG", lambda b: b[:3] == b"\xff\xd8\xff"),
    ("PNG", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n"),
    ("GIF", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
    ("WEBP", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("BMP", lambda b: b[:2] == b"BM"),
    ("TIFF", lambda b: b[:4] in (b"II*\x00", b"MM\x00*")),
    ("PNM", lambda b: len(b) > 2 and b[:1] == b"P" and b[1:2] in b"123456" and b[2:3].isspace()),
]
SUPPORTED_FORMATS = [name for name, _ in _SIGNATURES]


class ImageError(ValueError):
    """A client's image that cannot be served; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class EncodedImage:
    """An uploaded image, still encoded, whose signature has been checked."""

    data: bytes
    format: str
    filename: str | None = None


def sniff_format(data: bytes) -> str | None:
    head = data[:16]
    return next((name for name, test in _SIGNATURES if test(head)), None)


def check_upload(data: bytes, filename: str | None = None) -> EncodedImage:
    if not data:
        raise ImageError(400, "empty image", "the uploaded file has no bytes")
    if len(data) > LIMITS.max_upload_bytes:
        raise ImageError(
            413, "image too large", f"{len(data)} bytes; the limit is {LIMITS.max_upload_bytes} bytes"
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(
            415,
            "unsupported image format",
            f"the file is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})",
        )
    return EncodedImage(data=data, format=fmt, filename=filename)


def _read_upload(value: Any) -> EncodedImage:
    """Pydantic before-validator for the multipart `image` field (a Starlette UploadFile)."""
    if isinstance(value, EncodedImage):
        return value
    if isinstance(value, (bytes, bytearray)):
        return _checked(bytes(value), None)
    file = getattr(value, "file", None)
    if file is None:
        raise ValueError("`image` must be an uploaded file (multipart/form-data), not a text field")
    file.seek(0)
    return _checked(file.read(LIMITS.max_upload_bytes + 1), getattr(value, "filename", None))


def _checked(data: bytes, filename: str | None) -> EncodedImage:
    try:
        return check_upload(data, filename)
    except ImageError as exc:
        # Pydantic only turns ValueError into a 400; keep the message specific.
        raise ValueError(f"{exc.error}: {exc.detail}") from None


# Declared as a PIL image so that BentoML makes the request multipart and Swagger shows a file
# picker; the validated value is an `EncodedImage` (BentoML passes unknown objects through).
ImageUpload = Annotated[
    Image.Image,
    BeforeValidator(_read_upload),
    Field(description="The image file (JPEG, PNG, WebP, BMP, GIF, TIFF or PNM)."),
]


# ---- decoding (runner side) --------------------------------------------------------------------


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale high-bit-depth or float pixels to 0..255."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return np.nan_to_num(scaled).astype(np.uint8)
    peak = 65535 if arr.max(initial=0) > 255 else 255
    return (arr.astype(np.float32) * (255.0 / peak)).round().astype(np.uint8)


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB for any PIL mode: grey, 16-bit, float, palette, RGBA, CMYK, YCbCr, LAB."""
    if im.mode in ("RGB",):
        return np.asarray(im)
    if im.mode.startswith("I") or im.mode == "F":
        grey = _to_uint8(np.asarray(im))
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("P", "PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        # Transparent areas become white, as viewers show them, not arbitrary hidden colours.
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return np.asarray(background)
    return np.asarray(im.convert("RGB"))


@dataclass
class DecodedImage:
    rgb: np.ndarray  # HxWx3 uint8, EXIF orientation applied
    format: str

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    def bgr(self) -> np.ndarray:
        return np.ascontiguousarray(self.rgb[..., ::-1])


def decode(data: bytes, max_pixels: int | None = None) -> DecodedImage:
    """Decode once: pixel limit from the header first, then the full decode, first frame only."""
    limit = max_pixels or LIMITS.max_pixels
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(415, "unsupported image format", "the bytes are not a supported image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width <= 0 or height <= 0:
                    raise ImageError(400, "invalid image", f"image size {width}x{height}")
                if width * height > limit:
                    raise ImageError(
                        413,
                        "image has too many pixels",
                        f"{width}x{height} = {width * height} pixels; the limit is {limit}",
                    )
                im.load()
                rotated = ImageOps.exif_transpose(im) or im
                rgb = to_rgb_array(rotated)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(413, "image has too many pixels", str(exc)) from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(400, "undecodable image", f"{fmt} data could not be decoded: {exc}") from None
    return DecodedImage(rgb=np.ascontiguousarray(rgb), format=fmt)


# PIL refuses (or warns about) images above this at open time; the warning is an error in decode().
Image.MAX_IMAGE_PIXELS = LIMITS.max_pixels
