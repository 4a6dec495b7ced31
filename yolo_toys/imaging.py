"""Image uploads: limits, format sniffing at the front, and the one full decode in the runner.

The front service only reads the uploaded bytes and checks their signature (cheap, no decode);
runners decode once, from the original bytes, and map every failure to a `ServiceError` with its
4xx status.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from PIL import Image, ImageOps
from pydantic import BeforeValidator, Field

from yolo_toys.errors import ServiceError
from yolo_toys.settings import settings

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
_PIL_FORMATS = {"PNM": "PPM"}


@dataclass(frozen=True)
class EncodedImage:
    """An uploaded image, still encoded, whose signature has been checked."""

    data: bytes
    format: str


def sniff_format(data: bytes) -> str | None:
    head = data[:16]
    return next((name for name, test in _SIGNATURES if test(head)), None)


def check_upload(data: bytes) -> EncodedImage:
    if not data:
        raise ServiceError(400, "empty image", "the uploaded file has no bytes")
    limit = settings().max_upload_bytes
    if len(data) > limit:
        raise ServiceError(413, "image too large", f"{len(data)} bytes; the limit is {limit} bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ServiceError(
            415,
            "unsupported image format",
            f"the file is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})",
        )
    return EncodedImage(data=data, format=fmt)


@dataclass(frozen=True)
class UploadedFile:
    """The raw bytes of a multipart file field, not checked yet."""

    data: bytes


def _read_upload(value: Any) -> UploadedFile:
    """Pydantic before-validator of the multipart `image` field.

    The checks with their own statuses (415, 413) run in the API method through `check_upload`;
    a validator can only answer 400.
    """
    if isinstance(value, UploadedFile):
        return value
    if isinstance(value, (bytes, bytearray)):
        return UploadedFile(bytes(value))
    file = getattr(value, "file", None)
    if file is None:
        raise ValueError("`image` must be an uploaded file (multipart/form-data), not a text field")
    file.seek(0)
    return UploadedFile(file.read(settings().max_upload_bytes + 1))


# Declared as a PIL image so that BentoML makes the request multipart and Swagger shows a file
# picker. The validated value is an `UploadedFile`: BentoML's own PIL decoding, which runs after
# this validator, passes objects it does not know through untouched (it would decode bytes).
ImageUpload = Annotated[
    Image.Image,
    BeforeValidator(_read_upload),
    Field(description="The image file (JPEG, PNG, WebP, BMP, GIF, TIFF or PNM)."),
]


# ---- decoding (runner side) --------------------------------------------------------------------


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit pixels by their bit depth, 32-bit integer and float pixels by their range."""
    if arr.dtype == np.uint8:
        return arr
    if mode.startswith("I;16"):
        return (arr.astype(np.float32) * (255.0 / 65535.0)).round().astype(np.uint8)
    values = arr.astype(np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scaled = (values - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(values)
    return np.clip(np.nan_to_num(scaled, posinf=255.0, neginf=0.0), 0, 255).round().astype(np.uint8)


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB for any PIL mode: grey, 16-bit, float, palette, RGBA, CMYK, YCbCr, LAB."""
    if im.mode in ("RGB",):
        return np.asarray(im)
    if im.mode.startswith("I") or im.mode == "F":
        grey = _to_uint8(np.asarray(im), im.mode)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("P", "PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        # Transparent areas become white, as viewers show them, not arbitrary hidden colours.
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return np.asarray(background)
    return np.asarray(im.convert("RGB"))


class DecodedImage:
    """Decoded pixels, HxWx3 uint8, EXIF orientation applied.

    Kept in the channel order the decoder produced (BGR from OpenCV, RGB from PIL); the other order
    is made once, on first use, so that a runner pays for no conversion it does not need.

    A family may hand its model a smaller copy (`cropped`, `shrunk`: runners/family.py `fit`); the
    copy keeps the upload in `original`, whose size and pixels the results and drawings use.
    """

    def __init__(self, pixels: np.ndarray, order: Literal["RGB", "BGR"], format: str,
                 original: DecodedImage | None = None) -> None:  # fmt: skip
        self._pixels = {order: np.ascontiguousarray(pixels)}
        self.format = format
        self._original = original  # None: this is the upload itself (no self-reference: freed by refcount)

    @property
    def original(self) -> DecodedImage:
        """The upload as decoded, before any crop or shrink."""
        return self._original or self

    def _any(self) -> tuple[Literal["RGB", "BGR"], np.ndarray]:
        return next(iter(self._pixels.items()))

    def cropped(self, top: int, left: int, height: int, width: int) -> DecodedImage:
        """A region, for a model that would only look at that region anyway (a centre crop)."""
        order, pixels = self._any()
        return DecodedImage(pixels[top : top + height, left : left + width], order, self.format, self.original)

    def shrunk(self, height: int, width: int) -> DecodedImage:
        """A smaller copy (area-averaged), for a model whose preprocessing would blow the full size up."""
        order, pixels = self._any()
        small = cv2.resize(pixels, (max(1, width), max(1, height)), interpolation=cv2.INTER_AREA)
        return DecodedImage(small, order, self.format, self.original)

    def _in(self, order: Literal["RGB", "BGR"]) -> np.ndarray:
        if order not in self._pixels:
            (other,) = self._pixels.values()
            self._pixels[order] = cv2.cvtColor(other, cv2.COLOR_RGB2BGR)  # the same swap both ways
        return self._pixels[order]

    @property
    def rgb(self) -> np.ndarray:
        return self._in("RGB")

    @property
    def bgr(self) -> np.ndarray:
        return self._in("BGR")

    @property
    def shape(self) -> tuple[int, int]:
        return self._any()[1].shape[:2]

    @property
    def width(self) -> int:
        return int(self.shape[1])

    @property
    def height(self) -> int:
        return int(self.shape[0])


def _pil_open(data: bytes, fmt: str) -> Image.Image:
    """PIL's own opener, limited to the sniffed format.

    Importing Ultralytics replaces `Image.open` with one that tries to pip-install a HEIF plugin
    whenever PIL cannot identify a file: never wanted for a client's upload.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    opener = getattr(patches, "_image_open", Image.open)
    return opener(io.BytesIO(data), formats=[_PIL_FORMATS.get(fmt, fmt)])


# EXIF orientation -> the OpenCV operation that shows the image upright (what ImageOps.exif_transpose does).
_UPRIGHT = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _opencv_jpeg(data: bytes, im: Image.Image) -> np.ndarray | None:
    """The common case, a complete colour JPEG, decoded by OpenCV straight to BGR (twice as fast as PIL).

    PIL has already read the header; it still decodes everything else: other formats, CMYK and grey
    JPEGs, and files without an end marker, whose truncation OpenCV would fill in silently.
    """
    if im.format != "JPEG" or im.mode != "RGB" or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.shape[:2] != (im.height, im.width):
        return None
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    upright = _UPRIGHT.get(orientation)
    return upright(bgr) if upright else bgr


def decode(data: bytes, max_pixels: int | None = None) -> DecodedImage:
    """Decode once: pixel limit from the header first, then the full decode, first frame only."""
    limit = max_pixels or settings().max_pixels
    fmt = sniff_format(data)
    if fmt is None:
        raise ServiceError(415, "unsupported image format", "the bytes are not a supported image")
    too_many = "image has too many pixels"
    try:
        with _pil_open(data, fmt) as im:
            width, height = im.size
            if width <= 0 or height <= 0:
                raise ServiceError(400, "invalid image", f"image size {width}x{height}")
            if width * height > limit:
                raise ServiceError(413, too_many, f"{width}x{height} = {width * height} pixels; the limit is {limit}")
            bgr = _opencv_jpeg(data, im)
            if bgr is not None:
                return DecodedImage(bgr, "BGR", fmt)
            im.load()
            rotated = ImageOps.exif_transpose(im) or im
            rgb = to_rgb_array(rotated)
    except ServiceError:
        raise
    except Image.DecompressionBombError:
        raise ServiceError(413, too_many, f"the image header declares more than {limit} pixels") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ServiceError(400, "undecodable image", f"{fmt} data could not be decoded: {exc}") from None
    return DecodedImage(rgb, "RGB", fmt)
