"""Typed loader of the model catalog (`models/catalog.yaml`, or the file in $YOLO_TOYS_CATALOG)."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import BatchingInfo, Task

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = Path(__file__).resolve().parent / "catalog.yaml"

Family = Literal["ultralytics", "transformers"]
HFTask = Literal[
    "object-detection",
    "zero-shot-object-detection",
    "image-classification",
    "zero-shot-image-classification",
    "image-captioning",
    "visual-question-answering",
    "depth-estimation",
    "semantic-segmentation",
]
HF_TASK_SERVES: dict[str, Task] = {
    "object-detection": Task.detect,
    "zero-shot-object-detection": Task.detect,
    "image-classification": Task.classify,
    "zero-shot-image-classification": Task.zero_shot_classify,
    "image-captioning": Task.caption,
    "visual-question-answering": Task.vqa,
    "depth-estimation": Task.depth,
    "semantic-segmentation": Task.segment,
}
# The transformers Auto* class that loads each hf_task (transformers 5.x names).
HF_AUTO_CLASS: dict[str, str] = {
    "object-detection": "AutoModelForObjectDetection",
    "zero-shot-object-detection": "AutoModelForZeroShotObjectDetection",
    "image-classification": "AutoModelForImageClassification",
    "zero-shot-image-classification": "AutoModelForZeroShotImageClassification",
    "image-captioning": "AutoModelForImageTextToText",
    "visual-question-answering": "AutoModelForVisualQuestionAnswering",
    "depth-estimation": "AutoModelForDepthEstimation",
    "semantic-segmentation": "AutoModelForSemanticSegmentation",
}
LABELLED_HF_TASKS = {"object-detection", "image-classification", "semantic-segmentation"}
_STORE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")


class Source(BaseModel):
    """Exactly one of: a path under the weights directory, a hub name."""

    model_config = ConfigDict(extra="forbid")

    local: str | None = Field(None, min_length=1)
    hub: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if (self.local is None) == (self.hub is None):
            raise ValueError("a source names exactly one of `local` or `hub`")
        return self

    def describe(self) -> str:
        return f"local:{self.local}" if self.local is not None else f"hub:{self.hub}"


class RunnerSettings(BaseModel):
    """Adaptive batching and process settings of one family's runner service."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, le=256)
    gpu_max_batch_size: int | None = Field(
        None, ge=1, le=256, description="The batch cap when the runner's models run on a GPU (default: max_batch_size)."
    )
    max_latency_ms: int = Field(10_000, ge=1)
    workers: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    gpu: int = Field(1, ge=0, description="GPUs requested; the runner falls back to CPU without one.")

    def batch_cap(self, on_gpu: bool) -> int:
        return (self.gpu_max_batch_size or self.max_batch_size) if on_gpu else self.max_batch_size


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63, description="Catalog and model-store name.")
    family: Family
    task: Task
    default: bool = False
    description: str = ""
    sources: list[Source] = Field(min_length=1)
    max_batch_size: int | None = Field(None, ge=1, description="Cap below the runner's batch size.")
    hf_task: HFTask | None = Field(None, description="transformers family: which Auto* class loads the model.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    half: Literal["auto", "on", "off"] = Field("auto", description="FP16 on GPU when auto.")
    export: Literal["engine"] | None = Field(
        None, description="Ultralytics: export the obtained weights at import (engine: TensorRT FP16, needs CUDA)."
    )

    @model_validator(mode="after")
    def _family_fields(self) -> ModelEntry:
        if (self.family == "transformers") != (self.hf_task is not None):
            raise ValueError("`hf_task` is required for the transformers family and only there")
        if self.export is not None and self.family != "ultralytics":
            raise ValueError("`export` is an Ultralytics option")
        if self.hf_task is not None and HF_TASK_SERVES[self.hf_task] != self.task:
            raise ValueError(f"hf_task {self.hf_task} serves task {HF_TASK_SERVES[self.hf_task].value}")
        return self

    @field_validator("name")
    @classmethod
    def _store_name(cls, name: str) -> str:
        if not _STORE_NAME.match(name):
            raise ValueError("use lower-case letters, digits, '.', '_' and '-' (a BentoML model name)")
        return name


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runners: dict[Family, RunnerSettings] = Field(default_factory=dict)
    models: list[ModelEntry]

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        names = [m.name for m in self.models]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"model names appear twice: {duplicated}")
        for task in Task:
            defaults = [m.name for m in self.models if m.task == task and m.default]
            if len(defaults) > 1:
                raise ValueError(f"more than one default model for {task.value}: {defaults}")
        return self

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def family(self, family: Family) -> list[ModelEntry]:
        return [m for m in self.models if m.family == family]

    def runner(self, family: Family) -> RunnerSettings:
        return self.runners.get(family, RunnerSettings())

    def batching(self, entry: ModelEntry, on_gpu: bool = False) -> BatchingInfo:
        settings = self.runner(entry.family)
        cap = settings.batch_cap(on_gpu)
        size = min(entry.max_batch_size or cap, cap)
        return BatchingInfo(max_batch_size=size, max_latency_ms=settings.max_latency_ms)


def catalog_path() -> Path:
    return Path(os.environ.get("YOLO_TOYS_CATALOG") or DEFAULT_CATALOG)


def weights_dir() -> Path | None:
    """$YOLO_TOYS_WEIGHTS, else ../shared/weights beside the project when it exists."""
    configured = os.environ.get("YOLO_TOYS_WEIGHTS")
    if configured:
        return Path(configured).expanduser().resolve()
    shared = PROJECT_ROOT.parent / "shared" / "weights"
    return shared if shared.is_dir() else None


def parse_catalog(path: Path) -> Catalog:
    with open(path, encoding="utf-8") as f:
        return Catalog.model_validate(yaml.safe_load(f))


@lru_cache(maxsize=4)
def _cached(path: str, mtime: float) -> Catalog:
    return parse_catalog(Path(path))


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or catalog_path()
    return _cached(str(path), path.stat().st_mtime)
