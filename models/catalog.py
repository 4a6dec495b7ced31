"""Typed loader of the model catalog (`models/catalog.yaml`, or the file in $YOLO_TOYS_CATALOG)."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from yolo_toys.schemas import BatchingInfo, Task
from yolo_toys.settings import DEFAULT_CATALOG, PROJECT_ROOT, settings

if TYPE_CHECKING:
    from runners.family import Family

__all__ = ["DEFAULT_CATALOG", "PROJECT_ROOT", "Catalog", "ModelEntry", "RunnerSettings", "Source", "VersionPolicy", "load_catalog"]

_STORE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")


class Source(BaseModel):
    """Exactly one of: a path under the weights directory, a hub name, an upload (`POST /models`)."""

    model_config = ConfigDict(extra="forbid")

    local: str | None = Field(None, min_length=1)
    hub: str | None = Field(None, min_length=1)
    upload: str | None = Field(None, min_length=1, description="The uploaded file's name (registered at runtime).")

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        if sum(kind is not None for kind in (self.local, self.hub, self.upload)) != 1:
            raise ValueError("a source names exactly one of `local`, `hub` or `upload`")
        return self

    def describe(self) -> str:
        kind = next(k for k in ("local", "hub", "upload") if getattr(self, k) is not None)
        return f"{kind}:{getattr(self, kind)}"


class VersionPolicy(BaseModel):
    """Which stored versions a runner loads, as Triton's version policy: the newest `count`, all, or the listed ones.

    The runtime API (`POST /models/{name}/load`, ...) overrides it; the override is kept in the desired
    state (models/state.py) until the policy is asked for again.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["latest", "all", "specific"] = "latest"
    count: int = Field(1, ge=1, description="latest: how many of the newest versions.")
    versions: list[int] = Field(default_factory=list, description="specific: these version numbers.")

    def select(self, stored: list[int]) -> list[int]:
        if self.kind == "all":
            return list(stored)
        if self.kind == "specific":
            return [v for v in stored if v in self.versions]
        return sorted(stored)[-self.count :]


class RunnerSettings(BaseModel):
    """Adaptive batching and process settings of one family's runner service."""

    model_config = ConfigDict(extra="forbid")

    module: str | None = Field(
        None, description="The family's module (default: runners.<family>); it defines `FAMILY` (runners/family.py)."
    )
    max_batch_size: int = Field(8, ge=1, le=256)
    gpu_max_batch_size: int | None = Field(
        None, ge=1, le=256, description="The batch cap when the runner's models run on a GPU (default: max_batch_size)."
    )
    max_latency_ms: int = Field(10_000, ge=1)
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1, description="Processes of the runner. auto: one per core the server may use on a machine without an "
        "NVIDIA GPU (their runtimes share the cores), one with a GPU.",
    )
    threads: int = Field(1, ge=1)
    gpu: int = Field(1, ge=0, description="GPUs requested; the runner falls back to CPU without one.")
    max_loaded_models: int | None = Field(
        None, ge=1, description="Model versions a worker keeps loaded; beyond it the least recently used is "
        "unloaded and loaded again on its next request.",
    )

    def worker_count(self) -> int:
        if self.workers != "auto":
            return self.workers
        return 1 if Path("/dev/nvidiactl").exists() else len(os.sched_getaffinity(0))

    def cpu_threads(self) -> int:
        """The CPU threads one worker's inference runtime may use: the server's cores, shared between the workers."""
        return max(1, len(os.sched_getaffinity(0)) // self.worker_count())

    def batch_cap(self, on_gpu: bool) -> int:
        return (self.gpu_max_batch_size or self.max_batch_size) if on_gpu else self.max_batch_size


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63, description="Catalog and model-store name.")
    family: str = Field(description="The family whose runner serves the model (runners/<family>.py).")
    task: Task
    default: bool = False
    description: str = ""
    sources: list[Source] = Field(min_length=1)
    max_batch_size: int | None = Field(None, ge=1, description="Cap below the runner's batch size.")
    hf_task: str | None = Field(
        None, description="transformers family: the task handler, and the Auto* class that loads the model.",
        json_schema_extra={"family": "transformers"},
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    half: Literal["auto", "on", "off"] = Field("auto", description="FP16 on GPU when auto.")
    export: Literal["engine"] | None = Field(
        None, description="Ultralytics: export the obtained weights at import (engine: TensorRT FP16, needs CUDA).",
        json_schema_extra={"family": "ultralytics"},
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Settings of the model's family, checked by the family (a new family's own)."
    )
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy, description="Which stored versions are loaded.")

    @model_validator(mode="after")
    def _family_fields(self) -> ModelEntry:
        for name, info in type(self).model_fields.items():
            owner = (info.json_schema_extra or {}).get("family") if isinstance(info.json_schema_extra, dict) else None
            if owner is not None and owner != self.family and getattr(self, name) is not None:
                raise ValueError(f"`{name}` is an option of the {owner} family only")
        return self

    @field_validator("name")
    @classmethod
    def _store_name(cls, name: str) -> str:
        if not _STORE_NAME.match(name):
            raise ValueError("use lower-case letters, digits, '.', '_' and '-' (a BentoML model name)")
        return name


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runners: dict[str, RunnerSettings] = Field(default_factory=dict)
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
        for entry in self.models:
            self.family_module(entry.family).check_entry(entry)
        for family in self.runners:
            self.family_module(family)
        return self

    def get(self, name: str) -> ModelEntry | None:
        return next((m for m in self.models if m.name == name), None)

    def family(self, family: str) -> list[ModelEntry]:
        return [m for m in self.models if m.family == family]

    def families(self) -> list[str]:
        """Every family the catalog uses, in order of first mention: one runner service each."""
        return list(dict.fromkeys([*self.runners, *(m.family for m in self.models)]))

    def runner(self, family: str) -> RunnerSettings:
        return self.runners.get(family, RunnerSettings())

    def family_module(self, family: str) -> Family:
        """The family's `FAMILY` object, from `runners.<family>` or the module the runner settings name."""
        from runners.family import load_family

        module = self.runner(family).module or f"runners.{family}"
        try:
            found = load_family(module)
        except ModuleNotFoundError as exc:
            if exc.name == module or module.startswith(f"{exc.name}."):
                raise ValueError(f"unknown family {family!r}: no module {module}") from None
            raise
        if found.name != family:
            raise ValueError(f"{module} defines the {found.name!r} family, not {family!r}")
        return found

    def batching(self, entry: ModelEntry, on_gpu: bool = False) -> BatchingInfo:
        runner = self.runner(entry.family)
        cap = runner.batch_cap(on_gpu)
        size = min(entry.max_batch_size or cap, cap)
        return BatchingInfo(max_batch_size=size, max_latency_ms=runner.max_latency_ms)


def catalog_path() -> Path:
    return settings().catalog


def weights_dir() -> Path | None:
    """$YOLO_TOYS_WEIGHTS, else ../shared/weights beside the project when it exists."""
    return settings().weights


def parse_catalog(path: Path) -> Catalog:
    with open(path, encoding="utf-8") as f:
        return Catalog.model_validate(yaml.safe_load(f))


@lru_cache(maxsize=4)
def _cached(path: str, mtime: float) -> Catalog:
    return parse_catalog(Path(path))


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or catalog_path()
    return _cached(str(path), path.stat().st_mtime)
