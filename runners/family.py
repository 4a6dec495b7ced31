"""What a model family is: the protocol a family module implements, and what every family shares.

A family module (runners/ultralytics.py, runners/transformers.py, or any module the catalog's
`runners.<family>.module` names) defines `FAMILY`, an object with `Family`'s methods. It holds only
what is its own (load, the grouping key, inference, raw outputs into the shared schemas, and how the
import gets and checks its weights), imports no BentoML and reads no model store:
runners/runner.py makes it a BentoML service, models/store.py calls its import hooks.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from yolo_toys.imaging import DecodedImage
from yolo_toys.schemas import InferenceJob, PredictOptions, TaskResult, Timings

if TYPE_CHECKING:
    from models.catalog import ModelEntry

log = logging.getLogger("yolo_toys.runners")


class SourceUnavailable(Exception):
    """A weights source cannot provide the model here (missing file, no internet, wrong task, ...)."""


@dataclass(kw_only=True)
class LoadedModel:
    """A loaded model and what `GET /models` says of it; a family may subclass it to keep its own objects."""

    entry: ModelEntry
    format: str
    source: str = ""  # where the stored weights came from (the runner fills it in from the store)
    version: int = 1  # its number among the stored versions of the model (models/store.py)
    device: str = "cpu"
    half: bool = False
    labels: dict[int, str] = field(default_factory=dict)
    imgsz: int | None = None
    fixed_imgsz: bool = False
    open_vocabulary: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def describe(self) -> str:
        size = f", imgsz {self.imgsz}" if self.imgsz else ""
        return f"{self.entry.task.value}, {self.format}, {self.device}{' half' if self.half else ''}{size}"


@dataclass
class Inference:
    """One inference call's raw outputs (one per image, in order) and its stages in milliseconds."""

    outputs: list[Any]
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0


class Family(Protocol):
    """The methods a family module's `FAMILY` has. Only `load`, `infer` and `to_result` are required."""

    name: str

    def load(self, entry: ModelEntry, weights: Path) -> LoadedModel:
        """Load the stored weights (a file or folder), warm the model up, and say what it is."""
        ...

    def fit(self, model: LoadedModel, image: DecodedImage, options: PredictOptions) -> DecodedImage:
        """The image this request's preprocessing can take at a bounded cost, decided before any work.

        A decoded image is within the pixel limit, but a preprocessing step can still blow it up (a
        1 x 20,000 image resized to a short side of 224 is 224 x 4,480,000). A family returns the image
        unchanged (the default), a crop or smaller copy whose answer is the same in original-image
        coordinates (`image.cropped`, `image.shrunk`: results use `image.original`), or raises a 4xx
        `ServiceError` whose detail names the limit.
        """
        return image

    def group_key(self, model: LoadedModel, image: DecodedImage) -> Hashable:
        """What else (beyond model and options) must be equal for images to share one `infer` call."""
        return None

    def infer(self, model: LoadedModel, images: list[DecodedImage], options: PredictOptions) -> Inference:
        """One call for images that share a model, options and group key; runs on the inference thread."""
        ...

    def to_result(self, model: LoadedModel, output: Any, image: DecodedImage, job: InferenceJob,
                  timings: Timings) -> TaskResult:  # fmt: skip
        """One image's raw output as the task's result schema (runners/postprocess.py has the shared pieces)."""
        ...

    # ---- the catalog and `python -m models import` ----------------------------------------------

    def check_entry(self, entry: ModelEntry) -> None:
        """Refuse a catalog entry this family cannot serve (raise ValueError with the reason)."""

    def download(self, entry: ModelEntry, name: str, workdir: Path) -> Path:
        """Fetch a `hub:` source into `workdir`; the file or folder to store."""
        raise SourceUnavailable(f"the {self.name} family has no hub loader")

    def prepare(self, entry: ModelEntry, weights: Path, workdir: Path) -> Path:
        """Turn obtained weights into what is stored (an export, say); by default they are stored as they are."""
        return weights

    def inspect(self, entry: ModelEntry, weights: Path) -> dict[str, Any]:
        """Load the weights once to check them against the entry; metadata to store (e.g. `class_names`)."""
        return {}


@cache
def load_family(module: str) -> Family:
    """The `FAMILY` of a family module, imported on first use."""
    family = getattr(importlib.import_module(module), "FAMILY", None)
    if family is None:
        raise ValueError(f"module {module} defines no FAMILY")
    return family


def choose_device(entry: ModelEntry, runs_on_gpu: bool = True) -> tuple[str, bool]:
    """CUDA, in half precision unless the catalog says `half: off`, when a GPU is visible and the
    weights run there; the CPU otherwise. Returns (device, half)."""
    import torch

    use_cuda = entry.device != "cpu" and runs_on_gpu and torch.cuda.is_available()
    if entry.device == "cuda" and not use_cuda:
        log.warning("%s asks for cuda but none is usable here; running on CPU", entry.name)
    return ("cuda:0" if use_cuda else "cpu"), use_cuda and entry.half != "off"
