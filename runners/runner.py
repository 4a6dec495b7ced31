"""The one runner skeleton: a model family behind a BentoML service with adaptive batching.

`runner_service` makes the `@bentoml.service` of one family (service.py makes one per family of
the catalog). At start-up it loads the family's catalog models from the model store; `status` says
what it serves, `predict` queues requests for the batcher (runners/batcher.py), and each chunk of a
batch goes through the family's `infer`, then `to_result` per image.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar

import bentoml
from bentoml.validators import ContentType
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from models.catalog import Catalog, ModelEntry, RunnerSettings, load_catalog
from models.store import stored
from runners.batch import MODEL_BATCH, Member, run_batch
from runners.batcher import Batcher
from runners.family import Family, LoadedModel
from yolo_toys import drawing, workarounds
from yolo_toys.imaging import DecodedImage
from yolo_toys.schemas import InferenceJob, ModelDetail, Outcome, Timings
from yolo_toys.shutdown import Drain, before_sigterm

log = logging.getLogger("yolo_toys.runners")

# The media type is stated so that BentoML does not derive it from the list's JSON schema, which it
# otherwise rebuilds for every response (~7 ms of the runner's CPU per request, measured with py-spy).
Outcomes = Annotated[list[Outcome], ContentType("application/json")]


def load_stored(family: Family, entry: ModelEntry) -> LoadedModel:
    """The entry's weights from the model store, loaded by its family."""
    model = stored(entry.name)
    if model is None:
        raise FileNotFoundError(f"not in the model store; run `python -m models import {entry.name}`")
    loaded = family.load(entry, Path(model.path) / model.info.metadata["entry"])
    loaded.source = str(model.info.metadata.get("source", ""))
    return loaded


class FamilyRunner:
    """What every family's runner service does; `runner_service` binds it to one family."""

    family: ClassVar[Family]

    def __init__(self) -> None:
        workarounds.install()
        catalog = load_catalog()
        self.catalog, self.entries = catalog, catalog.family(self.family.name)
        self.models: dict[str, LoadedModel] = {}
        self.missing: dict[str, str] = {}
        for entry in self.entries:
            self._load(entry)
        log.info("%s runner ready (pid %d): %s; missing: %s", self.family.name, os.getpid(),
                 ", ".join(self.models) or "none", ", ".join(self.missing) or "none")  # fmt: skip
        self.on_gpu = any(m.device.startswith("cuda") for m in self.models.values())
        settings = catalog.runner(self.family.name)
        self.batcher = Batcher(self.family.name, self.run, settings.batch_cap(self.on_gpu), settings.max_latency_ms)
        self.drain = Drain()
        before_sigterm(self.drain.until_idle)

    def _load(self, entry: ModelEntry) -> None:
        """Load one model; one that fails is left out with a one-line reason."""
        started = time.perf_counter()
        try:
            self.models[entry.name] = model = load_stored(self.family, entry)
        except Exception as exc:
            self.missing[entry.name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("model %s not loaded: %s", entry.name, self.missing[entry.name])
            return
        log.info("loaded %s (%s) in %.1f s", entry.name, model.describe(), time.perf_counter() - started)

    @bentoml.api
    def status(self) -> list[ModelDetail]:
        """What this runner serves, and why the rest of its catalog is not loaded."""
        return [self._detail(entry) for entry in self.entries]

    def _detail(self, entry: ModelEntry) -> ModelDetail:
        m = self.models.get(entry.name)
        loaded = {} if m is None else {
            "source": m.source, "format": m.format, "device": m.device, "half": m.half, "imgsz": m.imgsz,
            "fixed_imgsz": m.fixed_imgsz, "open_vocabulary": m.open_vocabulary, "labels": m.labels,
            "label_count": len(m.labels),
        }  # fmt: skip
        return ModelDetail(name=entry.name, family=entry.family, task=entry.task, default=entry.default,
                           loaded=m is not None, reason=self.missing.get(entry.name),
                           batching=self.catalog.batching(entry, self.on_gpu), **loaded)  # fmt: skip

    @bentoml.api
    async def predict(self, jobs: list[InferenceJob]) -> Outcomes:
        """Queue the jobs for the next batch (runners/batcher.py) and answer when they are done."""
        with self.drain.call():
            return await self.batcher.submit(jobs)

    def run(self, jobs: list[InferenceJob]) -> list[Outcome]:
        """One batch, on the inference thread."""
        cap = lambda entry: self.catalog.batching(entry, self.on_gpu).max_batch_size  # noqa: E731
        return run_batch(jobs, self.models, self.missing, cap, self._infer, self.family.group_key, self.family.fit)

    def _infer(self, model: LoadedModel, jobs: list[InferenceJob], chunk: list[Member], outcomes: list) -> None:
        """One inference call for images that share a model and options; fills their outcomes."""
        members = [jobs[i] for i, _, _ in chunk]
        with model.lock:
            inference = self.family.infer(model, [image for _, image, _ in chunk], members[0].options)
        n = len(chunk)
        MODEL_BATCH.labels(model=model.entry.name).observe(n)
        for (i, image, decode_ms), job, output in zip(chunk, members, inference.outputs, strict=True):
            timings = Timings(decode_ms=decode_ms, preprocess_ms=inference.preprocess_ms / n,
                              inference_ms=inference.inference_ms / n, postprocess_ms=inference.postprocess_ms / n,
                              batch_size=n)  # fmt: skip
            outcomes[i] = self._outcome(model, job, image, output, timings)

    def _outcome(self, model: LoadedModel, job: InferenceJob, image: DecodedImage, output: Any,
                 timings: Timings) -> Outcome:  # fmt: skip
        """The result is of the upload (`image.original`), whatever crop or copy the model was given."""
        started = time.perf_counter()
        result = self.family.to_result(model, output, image.original, job, timings)
        result.timings.postprocess_ms += (time.perf_counter() - started) * 1000
        jpeg = drawing.render(image.original.rgb, result) if job.annotate else None
        return Outcome(result=result, annotated_jpeg=jpeg)


class StoredModels(list):
    """The family's catalog models the store holds, as `bentoml build` packages them.

    Looked up when BentoML first reads the list (at build), not when the service is defined: a
    list filled on first use.
    """

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self._names: list[str] | None = names

    def _fill(self) -> None:
        if self._names is not None:
            names, self._names = self._names, None
            self.extend(bentoml.models.BentoModel(model.tag) for name in names if (model := stored(name)))

    def __iter__(self) -> Any:
        self._fill()
        return super().__iter__()

    def __len__(self) -> int:
        self._fill()
        return super().__len__()

    def __getitem__(self, index: Any) -> Any:
        self._fill()
        return super().__getitem__(index)


def service_config(settings: RunnerSettings) -> dict[str, Any]:
    """`@bentoml.service` arguments of a family runner: its catalog settings, and what serving costs.

    The front service logs each request and counts it in /metrics; a runner doing it again cost ~5%
    of the throughput of yolov8n on one CPU core (bench/), so runners do neither (the models' own
    metrics, e.g. `yolo_toys_model_batch_size`, stay).
    """
    return {
        "workers": settings.workers,
        "threads": settings.threads,
        "resources": {"gpu": settings.gpu} if settings.gpu else None,
        "traffic": {"timeout": 300},
        "runner_connection": workarounds.RUNNER_CONNECTION,
        "logging": {"access": {"enabled": False}},
        "metrics": {"enabled": False},
    }


class RunnerMetrics:
    """ASGI middleware: `GET /metrics` of a runner, its own series (`yolo_toys_runner_inflight`, batch
    sizes) for Prometheus to scrape from a runner served alone (a runner pod, deploy/kubernetes/).

    Under `bentoml serve` the front's /metrics already has them (one multiprocess directory); BentoML's
    own route is off with the runners' request metrics (`service_config`).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics":
            await self.app(scope, receive, send)
            return
        text = await asyncio.to_thread(_exposition)
        await Response(text, media_type=CONTENT_TYPE_LATEST)(scope, receive, send)


def _exposition() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)


def runner_service(catalog: Catalog, name: str) -> bentoml.Service:
    """The BentoML service that serves one family of the catalog."""
    family = catalog.family_module(name)
    cls = type(f"{name.title().replace('_', '')}Runner", (FamilyRunner,), {"family": family, "__module__": __name__})
    service = bentoml.service(name=name, **service_config(catalog.runner(name)))(cls)
    service.models = StoredModels([entry.name for entry in catalog.family(name)])
    service.add_asgi_middleware(RunnerMetrics)
    return service


def with_runners(front: type) -> type:
    """Class decorator of the front service: one `bentoml.depends` per family of the catalog, as an
    attribute named after the family, and the family names in `front.families`."""
    catalog = load_catalog()
    families = catalog.families()
    for name in families:
        if hasattr(front, name):
            raise ValueError(f"family name {name!r} clashes with an attribute of {front.__name__}")
        setattr(front, name, bentoml.depends(runner_service(catalog, name)))
    front.families = tuple(families)  # type: ignore[attr-defined]
    return front
