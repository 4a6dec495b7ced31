"""The plain BentoML peer: the same Ultralytics model served as BentoML's own YOLO example writes it (issue 13).

A `@bentoml.service` class that loads the model in `__init__` with `ultralytics.YOLO(path)` and one
`@bentoml.api(batchable=True)` method that takes a list of image files (BentoML's adaptive batching
gathers the single-image requests into that list) and returns each image's results as JSON. Three
changes from the example: the method and its file field are named as the load generator sends them
(`/detect`, multipart field `image`); `verbose=False`, as the other peers predict (the example logs a
line per image); and `to_json()`, the name Ultralytics 8.4 gives the example's `tojson()`.

    BASELINE_MODEL=path/to/weights bentoml serve bench.bentoml_app:BentoYolo --port 8000

It answers BentoML's own `/readyz` once the model is loaded.
"""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

import bentoml
from bentoml.validators import ContentType

Image = t.Annotated[Path, ContentType("image/*")]


@bentoml.service
class BentoYolo:
    def __init__(self) -> None:
        from ultralytics import YOLO

        self.model = YOLO(os.environ["BASELINE_MODEL"], task="detect")

    @bentoml.api(batchable=True)
    def detect(self, image: list[Image]) -> list[list[dict]]:
        results = self.model.predict(source=image, verbose=False)
        return [json.loads(result.to_json()) for result in results]
