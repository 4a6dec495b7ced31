"""The real photos every benchmark sends: the two that ship with Ultralytics (found without importing it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def photos() -> list[bytes]:
    spec = importlib.util.find_spec("ultralytics")
    assert spec is not None and spec.submodule_search_locations, "ultralytics is not installed"
    assets = Path(spec.submodule_search_locations[0]) / "assets"
    return [(assets / name).read_bytes() for name in ("bus.jpg", "zidane.jpg")]
