"""A third model family, as a team would add one: nearest-colour classification from a palette file.

The whole family is this module and its catalog entries (see tests/test_family.py and
docs/adding-a-family.md): the catalog's `runners: {palette: {module: palette_family}}` names this
module, and a model's weights are a JSON file mapping colour names to RGB values. The runner
skeleton (runners/runner.py) does the rest: loading from the model store, batching, status,
metrics, annotation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runners.family import Family, Inference, LoadedModel, SourceUnavailable
from runners.postprocess import label_lookup, top_k
from yolo_toys.imaging import DecodedImage
from yolo_toys.schemas import ClassifyResult, ImageSize, InferenceJob, PredictOptions, Task, TaskResult, Timings

if TYPE_CHECKING:
    from models.catalog import ModelEntry


@dataclass(kw_only=True)
class LoadedPalette(LoadedModel):
    colours: np.ndarray  # (classes, 3) RGB


def read_palette(path: Path) -> dict[str, list[float]]:
    try:
        palette = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceUnavailable(f"not a palette file: {exc}") from None
    if not isinstance(palette, dict) or not palette or any(len(rgb) != 3 for rgb in palette.values()):
        raise SourceUnavailable("a palette maps colour names to [r, g, b]")
    return palette


class PaletteFamily(Family):
    name = "palette"

    def check_entry(self, entry: ModelEntry) -> None:
        if entry.task != Task.classify:
            raise ValueError("palette models classify")

    def inspect(self, entry: ModelEntry, weights: Path) -> dict[str, Any]:
        return {"class_names": dict(enumerate(read_palette(weights)))}

    def load(self, entry: ModelEntry, weights: Path) -> LoadedPalette:
        palette = read_palette(weights)
        return LoadedPalette(entry=entry, format="palette", labels=dict(enumerate(palette)),
                             colours=np.asarray(list(palette.values()), dtype=np.float32))  # fmt: skip

    def infer(self, model: LoadedModel, images: list[DecodedImage], options: PredictOptions) -> Inference:
        """The whole chunk at once: each image's mean colour, and a softmax over its distances to the palette."""
        assert isinstance(model, LoadedPalette)
        started = time.perf_counter()
        means = np.stack([image.rgb.reshape(-1, 3).mean(axis=0) for image in images])
        prepared = time.perf_counter()
        logits = -np.linalg.norm(means[:, None, :] - model.colours[None], axis=2) / 16.0
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        done = time.perf_counter()
        return Inference(list(probs), preprocess_ms=(prepared - started) * 1000, inference_ms=(done - prepared) * 1000)

    def to_result(self, model: LoadedModel, output: Any, image: DecodedImage, job: InferenceJob,
                  timings: Timings) -> TaskResult:  # fmt: skip
        return ClassifyResult(model=model.entry.name, image=ImageSize(width=image.width, height=image.height),
                              timings=timings, top_k=top_k(output, job.options.top_k, label_lookup(model.labels)))  # fmt: skip


FAMILY = PaletteFamily()
