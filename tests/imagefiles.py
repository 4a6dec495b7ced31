"""Test images made in memory: valid uploads in every mode and format the service accepts, and broken ones.

Nothing is written to disk or downloaded: the only input is the photo that ships with ultralytics
(`ultralytics/assets/bus.jpg`, 810x1080). Factories are cached (bytes are immutable), so calling one
again is free; the decompression bomb is the only one that takes noticeable time (~0.2 s, once).

- `VALID[name]()`: bytes the service must answer 200 for; `EXPECTED_SIZE[name]` is the (width, height)
  of the decoded, EXIF-rotated image.
- `BROKEN[name]`: `(factory, status)`, the 4xx the service must answer with (empty 400, not an image or an
  unsupported format 415, undecodable or truncated 400, too many pixels 413).
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

PHOTO_SIZE = (810, 1080)  # width, height of bus.jpg
HALF_SIZE = (405, 540)
PANORAMA_SIZE = (4000, 300)
BOMB_SIZE = (30000, 30000)
CLAIMED_SIZE = (60000, 60000)  # what the patched JPEG/BMP/PPM headers claim

# Regions used by the transparency images (and checked by the tests).
TRANSPARENT_LEFT_HALF = (slice(None), slice(0, PHOTO_SIZE[0] // 2))  # RGBA PNG: x < 405 has alpha 0
TRANSPARENT_TOP_HALF = (slice(0, PHOTO_SIZE[1] // 2), slice(None))  # LA PNG: y < 540 has alpha 0
TRANSPARENT_BLOCK = (slice(100, 300), slice(200, 500))  # palette PNG: transparent index in this block
TRANSPARENT_CORNER = (slice(0, 100), slice(0, 150))  # lossless RGBA WebP (half size): alpha 0 there

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- the base photo ---------------------------------------------------------------------------------


@functools.cache
def _photo() -> Image.Image:
    from ultralytics.utils import ASSETS

    with Image.open(ASSETS / "bus.jpg") as im:
        photo = im.convert("RGB")
    assert photo.size == PHOTO_SIZE, photo.size
    return photo


def base_photo() -> Image.Image:
    """The upright bus photo from ultralytics' assets, RGB, 810x1080 (a fresh copy each call)."""
    return _photo().copy()


@functools.cache
def _half() -> Image.Image:
    return _photo().resize(HALF_SIZE, Image.Resampling.BILINEAR)


def half_photo() -> Image.Image:
    """The photo resized to 405x540, the source of the half-size images (a fresh copy each call)."""
    return _half().copy()


def _encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


# ---- PNG written by hand (16-bit RGB, decompression bomb, broken chunks) ----------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _ihdr(width: int, height: int, bit_depth: int, color_type: int) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))


def _png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    header = _PNG_SIGNATURE + _ihdr(width, height, bit_depth, color_type)
    return header + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunks(png: bytes) -> list[tuple[int, bytes, int]]:
    """(offset of the chunk's length field, type, data length) for each chunk of a PNG."""
    out, pos = [], len(_PNG_SIGNATURE)
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        out.append((pos, kind, length))
        pos += 12 + length
    return out


def _first_chunk(png: bytes, kind: bytes) -> tuple[int, int]:
    return next((pos, length) for pos, k, length in _chunks(png) if k == kind)


# ---- JPEG surgery -----------------------------------------------------------------------------------


def _jpeg_segment(jpeg: bytes, marker: bytes) -> int:
    """Offset of the first segment with this marker (b"\\xff\\xc0" for SOF0, b"\\xff\\xda" for SOS)."""
    pos = 2
    while pos < len(jpeg):
        if jpeg[pos : pos + 2] == marker:
            return pos
        (length,) = struct.unpack(">H", jpeg[pos + 2 : pos + 4])
        pos += 2 + length
    raise ValueError(f"no {marker!r} segment")


def _scan_start(jpeg: bytes) -> int:
    """Offset of the entropy-coded data, just after the SOS header."""
    sos = _jpeg_segment(jpeg, b"\xff\xda")
    (length,) = struct.unpack(">H", jpeg[sos + 2 : sos + 4])
    return sos + 2 + length


# ---- valid images -----------------------------------------------------------------------------------

# The transpose that stores a photo so that EXIF `orientation` displays it upright again
# (the inverse of what ImageOps.exif_transpose applies).
_STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # stored rotated 90 degrees counter-clockwise; 6 = "rotate 90 CW to view"
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _exif_jpeg(orientation: int) -> Callable[[], bytes]:
    def make() -> bytes:
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = _photo().transpose(_STORE_FOR_ORIENTATION[orientation])
        return _encode(stored, "JPEG", quality=92, exif=exif.tobytes())

    make.__name__ = f"jpeg_exif_orientation_{orientation}"
    return make


def _jpeg() -> bytes:
    return _encode(_photo(), "JPEG", quality=90)


def _png_rgb() -> bytes:
    return _encode(_photo(), "PNG", compress_level=1)


def _webp() -> bytes:
    return _encode(_photo(), "WEBP", quality=85)


def _webp_lossless_rgba() -> bytes:
    """Half-size photo, lossless WebP with alpha; TRANSPARENT_CORNER is fully transparent (hidden black)."""
    rgba = np.dstack([np.asarray(_half()), np.full(HALF_SIZE[::-1], 255, np.uint8)])
    rgba[TRANSPARENT_CORNER] = (0, 0, 0, 0)
    return _encode(Image.fromarray(rgba), "WEBP", lossless=True, quality=0)


def _bmp() -> bytes:
    return _encode(_photo(), "BMP")


def _bmp_top_down() -> bytes:
    """A BMP with a negative height: rows stored top to bottom (valid, less common)."""
    data = bytearray(_encode(_half(), "BMP"))
    width, height = struct.unpack_from("<ii", data, 18)
    assert struct.unpack_from("<I", data, 10)[0] == 54 and height > 0
    stride = (width * 3 + 3) & ~3
    rows = [bytes(data[54 + i * stride : 54 + (i + 1) * stride]) for i in range(height)]
    struct.pack_into("<i", data, 22, -height)
    data[54:] = b"".join(reversed(rows))
    return bytes(data)


def _gif() -> bytes:
    return _encode(_photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "GIF")


def _gif_multiframe() -> bytes:
    """Three frames: the photo, its negative, a flat red; a decoder must return the first frame."""
    first = _half()
    frames = [first, Image.eval(first, lambda v: 255 - v), Image.new("RGB", HALF_SIZE, (255, 0, 0))]
    frames = [f.convert("P", palette=Image.Palette.ADAPTIVE, colors=256) for f in frames]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _tiff() -> bytes:
    return _encode(_photo(), "TIFF")


def _tiff_lzw() -> bytes:
    return _encode(_photo(), "TIFF", compression="tiff_lzw")


def _tiff_cmyk() -> bytes:
    return _encode(_half().convert("CMYK"), "TIFF")


def _ppm() -> bytes:
    return _encode(_photo(), "PPM")  # binary P6


def _pgm() -> bytes:
    return _encode(_photo().convert("L"), "PPM")  # binary P5


def _jpeg_gray() -> bytes:
    return _encode(_photo().convert("L"), "JPEG", quality=90)


def gray16(photo: Image.Image | None = None) -> np.ndarray:
    """The 16-bit grey pixels stored in `png_gray16`: the photo's luma spread over 0..65535."""
    luma = np.asarray((photo or _photo()).convert("L"), dtype=np.uint16)
    return luma * 257


def _png_gray16() -> bytes:
    im = Image.fromarray(gray16())
    assert im.mode == "I;16", im.mode
    return _encode(im, "PNG", compress_level=1)


def rgb16() -> np.ndarray:
    """The HxWx3 uint16 pixels stored in `png_rgb16` (half-size photo, with noise in the low byte)."""
    rgb = np.asarray(_half(), dtype=np.uint16)
    noise = np.random.default_rng(16).integers(0, 256, rgb.shape, dtype=np.uint16)
    return rgb * 256 + noise


def _png_rgb16() -> bytes:
    """16 bits per channel RGB PNG; Pillow cannot write one, so the PNG is written here."""
    pixels = rgb16()
    height, width, _ = pixels.shape
    rows = pixels.astype(">u2").reshape(height, width * 6 // 2).view(np.uint8).reshape(height, width * 6)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row
    return _png(width, height, 16, 2, zlib.compress(raw, 1))


def _png_rgba() -> bytes:
    """The photo with its left half fully transparent; the hidden colour there is black."""
    rgba = np.dstack([np.asarray(_photo()), np.full(PHOTO_SIZE[::-1], 255, np.uint8)])
    rgba[TRANSPARENT_LEFT_HALF] = (0, 0, 0, 0)
    return _encode(Image.fromarray(rgba), "PNG", compress_level=1)


def _png_la() -> bytes:
    """Grey + alpha, top half fully transparent (hidden grey level 0)."""
    la = np.dstack([np.asarray(_photo().convert("L")), np.full(PHOTO_SIZE[::-1], 255, np.uint8)])
    la[TRANSPARENT_TOP_HALF] = (0, 0)
    im = Image.fromarray(la[..., 0]).convert("LA")
    im.putalpha(Image.fromarray(la[..., 1]))
    assert im.mode == "LA"
    return _encode(im, "PNG", compress_level=1)


def _png_palette_transparent() -> bytes:
    """255-colour palette photo; index 255 (pure green) is transparent and fills TRANSPARENT_BLOCK."""
    quantized = _photo().quantize(colors=255)
    palette = quantized.getpalette()[: 255 * 3]
    palette += [0, 0, 0] * (255 - len(palette) // 3) + [0, 255, 0]
    indices = np.asarray(quantized).copy()
    indices[TRANSPARENT_BLOCK] = 255
    im = Image.fromarray(indices)
    im.putpalette(palette)
    assert im.mode == "P"
    return _encode(im, "PNG", transparency=255, compress_level=1)


def _png_bilevel() -> bytes:
    return _encode(_photo().convert("1"), "PNG")


def _jpeg_cmyk() -> bytes:
    return _encode(_photo().convert("CMYK"), "JPEG", quality=92)


def _jpeg_progressive() -> bytes:
    return _encode(_photo(), "JPEG", quality=90, progressive=True, optimize=True)


def _jpeg_corrupt_exif() -> bytes:
    """A fine JPEG whose EXIF block is garbage after its header: viewers ignore it, so must we."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = bytearray(_encode(_half(), "JPEG", quality=90, exif=exif.tobytes()))
    start = data.index(b"Exif\x00\x00") + 6
    data[start + 8 : start + 20] = b"\xff" * 12  # the IFD entry count and the orientation entry
    return bytes(data)


def _tiny_png() -> bytes:
    return _encode(Image.new("RGB", (1, 1), (200, 30, 40)), "PNG")


def _tiny_jpeg() -> bytes:
    return _encode(Image.new("RGB", (1, 1), (200, 30, 40)), "JPEG")


def _panorama() -> bytes:
    return _encode(_photo().resize(PANORAMA_SIZE, Image.Resampling.BILINEAR), "JPEG", quality=85)


def float32() -> np.ndarray:
    """The float pixels stored in `tiff_float32`: the photo's luma in 0..1."""
    return np.asarray(_photo().convert("L"), dtype=np.float32) / 255.0


def _tiff_float32() -> bytes:
    im = Image.fromarray(float32())
    assert im.mode == "F", im.mode
    return _encode(im, "TIFF")


def int32() -> np.ndarray:
    """The int32 pixels stored in `tiff_int32`: the photo's luma times 4000 (0..1,020,000)."""
    return np.asarray(_photo().convert("L"), dtype=np.int32) * 4000


def _tiff_int32() -> bytes:
    im = Image.fromarray(int32())
    assert im.mode == "I", im.mode
    return _encode(im, "TIFF")


VALID: dict[str, Callable[[], bytes]] = {
    "jpeg": _jpeg,
    "png": _png_rgb,
    "webp": _webp,
    "webp_lossless_rgba": _webp_lossless_rgba,
    "bmp": _bmp,
    "bmp_top_down": _bmp_top_down,
    "gif": _gif,
    "gif_multiframe": _gif_multiframe,
    "tiff": _tiff,
    "tiff_lzw": _tiff_lzw,
    "tiff_cmyk": _tiff_cmyk,
    "ppm": _ppm,
    "pgm": _pgm,
    "jpeg_gray": _jpeg_gray,
    "png_gray16": _png_gray16,
    "png_rgb16": _png_rgb16,
    "png_rgba": _png_rgba,
    "png_la": _png_la,
    "png_palette_transparent": _png_palette_transparent,
    "png_bilevel": _png_bilevel,
    "jpeg_cmyk": _jpeg_cmyk,
    "jpeg_progressive": _jpeg_progressive,
    "jpeg_corrupt_exif": _jpeg_corrupt_exif,
    **{f"jpeg_exif_orientation_{o}": _exif_jpeg(o) for o in sorted(_STORE_FOR_ORIENTATION)},
    "png_1x1": _tiny_png,
    "jpeg_1x1": _tiny_jpeg,
    "jpeg_panorama": _panorama,
    "tiff_float32": _tiff_float32,
    "tiff_int32": _tiff_int32,
}

# (width, height) after decoding, EXIF orientation applied.
EXPECTED_SIZE: dict[str, tuple[int, int]] = {name: PHOTO_SIZE for name in VALID} | {
    "webp_lossless_rgba": HALF_SIZE,
    "bmp_top_down": HALF_SIZE,
    "gif_multiframe": HALF_SIZE,
    "tiff_cmyk": HALF_SIZE,
    "png_rgb16": HALF_SIZE,
    "jpeg_corrupt_exif": HALF_SIZE,
    "png_1x1": (1, 1),
    "jpeg_1x1": (1, 1),
    "jpeg_panorama": PANORAMA_SIZE,
}

GRAYSCALE = ("pgm", "jpeg_gray", "png_gray16", "png_la", "png_bilevel", "tiff_float32", "tiff_int32")


# ---- broken images ----------------------------------------------------------------------------------


def _empty() -> bytes:
    return b""


def _text() -> bytes:
    return b"This is a plain text file, not an image.\nIt has two lines.\n"


def _html() -> bytes:
    return b"<!DOCTYPE html>\n<html><head><title>Not an image</title></head><body><img src=x></body></html>\n"


def _svg() -> bytes:
    return b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><rect width="9" height="9"/></svg>'


def _pdf() -> bytes:
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("image.jpg", _tiny_jpeg())
    return buf.getvalue()


def _heic_header() -> bytes:
    """An ISO-BMFF `ftyp heic` box: HEIC is not a supported format."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + bytes(64)


def _random_bytes() -> bytes:
    return b"\x00" + random.Random(20240601).randbytes(4095)  # the leading NUL matches no signature


def _jpeg_truncated_half() -> bytes:
    data = _jpeg()
    return data[: len(data) // 2]


def _jpeg_header_only() -> bytes:
    """SOI + APP0 (JFIF) and nothing else."""
    data = _tiny_jpeg()
    assert data[2:4] == b"\xff\xe0"
    (length,) = struct.unpack(">H", data[4:6])
    return data[: 4 + length]


def _jpeg_zeroed_body() -> bytes:
    """Headers intact, every byte after the SOS header zeroed (EOI included)."""
    data = _encode(_half(), "JPEG", quality=90)
    start = _scan_start(data)
    return data[:start] + bytes(len(data) - start)


def _jpeg_claims_60000() -> bytes:
    """A small JPEG whose SOF0 header claims 60000x60000 pixels."""
    data = bytearray(_tiny_jpeg())
    sof = _jpeg_segment(bytes(data), b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, CLAIMED_SIZE[1], CLAIMED_SIZE[0])  # height, then width
    return bytes(data)


def _jpeg_signature_garbage() -> bytes:
    return b"\xff\xd8\xff" + random.Random(3).randbytes(2000)


def _png_truncated_idat() -> bytes:
    data = _png_rgb()
    pos, length = _first_chunk(data, b"IDAT")
    return data[: pos + 8 + length // 2]


def _png_bad_ihdr_crc() -> bytes:
    data = bytearray(_encode(_half(), "PNG", compress_level=1))
    pos, length = _first_chunk(bytes(data), b"IHDR")
    data[pos + 8 + length] ^= 0xFF  # first byte of IHDR's CRC
    return bytes(data)


def _png_garbage_idat() -> bytes:
    """Valid chunk structure (correct CRC) but the IDAT holds random bytes, not a zlib stream."""
    data = _encode(_half(), "PNG", compress_level=1)
    pos, length = _first_chunk(data, b"IDAT")
    garbage = random.Random(7).randbytes(length)
    return data[:pos] + _chunk(b"IDAT", garbage) + data[pos + 12 + length :]


def _png_signature_garbage() -> bytes:
    return _PNG_SIGNATURE + random.Random(5).randbytes(2000)


def _png_zero_width() -> bytes:
    return _png(0, 10, 8, 2, zlib.compress(b""))


@functools.cache
def _png_bomb() -> bytes:
    """30000x30000 1-bit grey, all black: 0.5 MB on disk, 900 Mpx (2.7 GB as RGB) once decoded."""
    width, height = BOMB_SIZE
    rows = (b"\x00" + bytes((width + 7) // 8)) * 1000
    z = zlib.compressobj(1)  # 0.2 s; level 9 makes it 110 kB but takes 0.6 s
    idat = b"".join(z.compress(rows) for _ in range(height // 1000)) + z.flush()
    return _png(width, height, 1, 0, idat)


def _gif_header_only() -> bytes:
    return b"GIF89a"


def _bmp_claims_absurd() -> bytes:
    data = bytearray(_encode(Image.new("RGB", (8, 8), (10, 20, 30)), "BMP"))
    struct.pack_into("<ii", data, 18, 100_000, 100_000)
    return bytes(data)


def _bmp_truncated() -> bytes:
    data = _encode(_half(), "BMP")
    return data[: len(data) // 3]


def _tiff_header_only() -> bytes:
    return b"II*\x00\x08\x00\x00\x00"


def _webp_header_only() -> bytes:
    return b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00"


def _ppm_truncated() -> bytes:
    return b"P6\n64 48\n255\n" + bytes(100)


def _ppm_claims_60000() -> bytes:
    return b"P6\n%d %d\n255\n" % CLAIMED_SIZE + bytes(100)


BROKEN: dict[str, tuple[Callable[[], bytes], int]] = {
    "empty": (_empty, 400),
    "text": (_text, 415),
    "html": (_html, 415),
    "svg": (_svg, 415),
    "pdf_header": (_pdf, 415),
    "zip": (_zip, 415),
    "heic_header": (_heic_header, 415),
    "random_bytes": (_random_bytes, 415),
    "jpeg_truncated_half": (_jpeg_truncated_half, 400),
    "jpeg_header_only": (_jpeg_header_only, 400),
    "jpeg_zeroed_body": (_jpeg_zeroed_body, 400),
    "jpeg_signature_garbage": (_jpeg_signature_garbage, 400),
    "jpeg_claims_60000x60000": (_jpeg_claims_60000, 413),
    "png_truncated_idat": (_png_truncated_idat, 400),
    "png_bad_ihdr_crc": (_png_bad_ihdr_crc, 400),
    "png_garbage_idat": (_png_garbage_idat, 400),
    "png_signature_garbage": (_png_signature_garbage, 400),
    "png_zero_width": (_png_zero_width, 400),
    "png_bomb_30000x30000": (_png_bomb, 413),
    "gif_header_only": (_gif_header_only, 400),
    "bmp_claims_100000x100000": (_bmp_claims_absurd, 413),
    "bmp_truncated": (_bmp_truncated, 400),
    "tiff_header_only": (_tiff_header_only, 400),
    "webp_header_only": (_webp_header_only, 400),
    "ppm_truncated": (_ppm_truncated, 400),
    "ppm_claims_60000x60000": (_ppm_claims_60000, 413),
}

# Factories are pure; cache them so that tests (and HTTP tests) can call them freely.
VALID = {name: functools.cache(make) for name, make in VALID.items()}
BROKEN = {name: (functools.cache(make), status) for name, (make, status) in BROKEN.items()}

__all__ = ["BROKEN", "EXPECTED_SIZE", "GRAYSCALE", "VALID", "base_photo", "half_photo"]
