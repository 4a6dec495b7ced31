"""Settings read from the environment: once, on first use, never at import.

Every `YOLO_TOYS_*` variable the service reads is here. Tests that change the environment call
`settings.cache_clear()` afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = PROJECT_ROOT / "models" / "catalog.yaml"


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    max_upload_bytes: int = 20 * 1024 * 1024  # YOLO_TOYS_MAX_UPLOAD_BYTES: one uploaded image
    max_pixels: int = 40_000_000  # YOLO_TOYS_MAX_PIXELS: decoded width x height
    max_streams: int = 64  # YOLO_TOYS_MAX_STREAMS: open WebSocket streams per front process
    # YOLO_TOYS_MAX_FRAME_BYTES: one WebSocket frame; below uvicorn's 16 MiB message limit, so an
    # oversize frame gets an error message instead of a closed connection.
    max_frame_bytes: int = 8 * 1024 * 1024
    catalog: Path = DEFAULT_CATALOG  # YOLO_TOYS_CATALOG
    weights: Path | None = None  # YOLO_TOYS_WEIGHTS, else ../shared/weights beside the project

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        weights = environ.get("YOLO_TOYS_WEIGHTS")
        shared = PROJECT_ROOT.parent / "shared" / "weights"
        return cls(
            max_upload_bytes=_int(environ, "YOLO_TOYS_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_pixels=_int(environ, "YOLO_TOYS_MAX_PIXELS", cls.max_pixels),
            max_streams=_int(environ, "YOLO_TOYS_MAX_STREAMS", cls.max_streams),
            max_frame_bytes=_int(environ, "YOLO_TOYS_MAX_FRAME_BYTES", cls.max_frame_bytes),
            catalog=Path(environ.get("YOLO_TOYS_CATALOG") or DEFAULT_CATALOG),
            weights=Path(weights).expanduser().resolve() if weights else (shared if shared.is_dir() else None),
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()
