"""A schemathesis hook (SCHEMATHESIS_HOOKS=schemathesis_photo): every generated form carries a real
photo (two for `/batch`) and leaves the model to the task's default, so that generated options reach the runners."""

from __future__ import annotations

import io
from typing import Any

import schemathesis
from PIL import Image
from ultralytics.utils import ASSETS


def _photo() -> bytes:
    buf = io.BytesIO()
    Image.open(ASSETS / "bus.jpg").resize((270, 360)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


PHOTO = _photo()


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and "image" in body:
        body = {key: value for key, value in body.items() if key != "model"}
        body["image"] = PHOTO
    if isinstance(body, dict) and "images" in body:
        body = {key: value for key, value in body.items() if key != "model"}
        body["images"] = [PHOTO, PHOTO]
    return body
