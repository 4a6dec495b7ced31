"""Images built to blow up a task's preprocessing: PNGs of any size in a few hundred bytes.

A 1 x 20,000 PNG is ~165 bytes; a 2,000 x 20,000 one (40 megapixels) ~70 KB. `tests/test_limits.py`
sends them to every route, `python -m bench.limits` measures what they cost.
"""

from __future__ import annotations

import math
import struct
import zlib
from functools import cache

import numpy as np

# name: (width, height). The 40-megapixel ones are at the default pixel limit (YOLO_TOYS_MAX_PIXELS).
SHAPES: dict[str, tuple[int, int]] = {
    "1x20000": (1, 20_000),
    "20000x1": (20_000, 1),
    "1x5000": (1, 5_000),
    "5000x1": (5_000, 1),
    "1x1": (1, 1),
    "2000x20000": (2_000, 20_000),
    "20000x2000": (20_000, 2_000),
    "8000x2000": (8_000, 2_000),
    "6324x6324": (math.isqrt(40_000_000), math.isqrt(40_000_000)),
    "1x40000000": (1, 40_000_000),
    "40000000x1": (40_000_000, 1),
}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def png(width: int, height: int, seed: int = 0) -> bytes:
    """An RGB PNG: a row of colour noise (64 pixels, repeated across), and every further row equal to
    the one above (PNG's Up filter with zero differences), compressed as it is made."""
    tile = np.random.default_rng(seed).integers(0, 256, (64, 3), dtype=np.uint8)
    row = np.resize(tile, (width, 3)).tobytes()
    z = zlib.compressobj(9)
    parts = [z.compress(b"\x00" + row)]
    up = b"\x02" + bytes(len(row))
    per_block = max(1, (1 << 22) // len(up))  # ~4 MB of raw rows at a time
    left = height - 1
    while left > 0:
        n = min(left, per_block)
        parts.append(z.compress(up * n))
        left -= n
    parts.append(z.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
