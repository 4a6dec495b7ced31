"""The one runner skeleton: a model family behind a BentoML service with adaptive batching.

`runner_service` makes the `@bentoml.service` of one family (service.py makes one per family of
the catalog). At start-up it loads the family's models from the model store as the desired state
says (runners/serving.py); `status` says what it serves, `predict` queues requests for the batcher
(runners/batcher.py), and each chunk of a batch goes through the family's `infer`, then `to_result`
per image; `predict` answers each job's final HTTP body, which the front sends as it is
(`Answer` in yolo_toys/schemas.py); `manage` and `register` are the management API's side (runners/manage.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from typing import Annotated, Any, ClassVar

import bentoml
from bentoml.validators import ContentType
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from models.catalog import Catalog, RunnerSettings, load_catalog
from models.state import StateFile
from models.store import stored
from runners import manage
from runners.batch import MODEL_BATCH, Member, run_batch
from runners.batcher import Batcher
from runners.family import Family, LoadedModel
from runners.serving import Poller, Served, keep_freed_memory, release_memory
from yolo_toys import drawing, workarounds
from yolo_toys.errors import ServiceError
from yolo_toys.imaging import DecodedImage
from yolo_toys.schemas import (
    RESULT,
    Answer,
    ErrorBody,
    InferenceJob,
    ManageOutcome,
    ManageResult,
    ModelAction,
    ModelDetail,
    Outcome,
    RegisterJob,
    Timings,
    pack_answers,
)
from yolo_toys.shutdown import Drain, before_sigterm

log = logging.getLogger("yolo_toys.runners")

# `pack_answers` bytes: BentoML sends a `bytes` answer as it is and its client hands it over as it is
# (no pickling, no validation in the front). The media type is stated so that BentoML does not derive
# it from the answer's JSON schema, which it otherwise rebuilds for every response (~7 ms of the
# runner's CPU per request, measured with py-spy).
ANSWERS_MEDIA_TYPE = "application/vnd.yolo-toys.answers"
PackedAnswers = Annotated[bytes, ContentType(ANSWERS_MEDIA_TYPE)]


class FamilyRunner:
    """What every family's runner service does; `runner_service` binds it to one family.

    Which model versions it serves, and where each request goes, is `self.served` (runners/serving.py),
    kept in line with the desired state that the management API writes (runners/manage.py).
    """

    family: ClassVar[Family]

    def __init__(self) -> None:
        workarounds.install()
        keep_freed_memory()
        catalog = load_catalog()
        self.catalog, settings = catalog, catalog.runner(self.family.name)
        self.batcher = Batcher(self.family.name, self.run, settings.max_batch_size, settings.max_latency_ms)
        self.served = Served(self.family, catalog, StateFile(), self.batcher.after_batch(release_memory),
                             settings.max_loaded_models)  # fmt: skip
        self.served.reconcile(self.served.state.read())
        self.batcher.max_batch_size = settings.batch_cap(self.served.on_gpu)
        loaded = [f"{d.name}:{d.default_version}" for d in self.served.details() if d.loaded]
        log.info("%s runner ready (pid %d): %s", self.family.name, os.getpid(), ", ".join(loaded) or "nothing loaded")
        Poller(self.served).start()
        self.drain = Drain()
        before_sigterm(self.drain.until_idle)

    @bentoml.api
    def status(self) -> list[ModelDetail]:
        """Every model of the family: its versions and their state in each worker, and why what is not loaded is not."""
        return self.served.details()

    @bentoml.api
    async def predict(self, jobs: list[InferenceJob]) -> PackedAnswers:
        """Queue the jobs for the next batch (runners/batcher.py) and answer when they are done: each
        job's HTTP body, its `timings.total_ms` the runner's wall time from the job's arrival."""
        arrived = time.perf_counter()
        with self.drain.call():
            outcomes = await self.batcher.submit(jobs)
        return pack_answers([_answer(outcome, arrived) for outcome in outcomes])

    @bentoml.api
    async def manage(self, action: ModelAction) -> ManageOutcome:
        """Load, unload, set the default or a traffic split; answers once every worker has it (runners/manage.py)."""
        with self.drain.call():
            return await _managed(manage.act(self.served, action))

    @bentoml.api
    async def register(self, job: RegisterJob) -> ManageOutcome:
        """Store an uploaded artifact as a new version (checked by loading it once), and load it if asked."""
        with self.drain.call():
            return await _managed(manage.register(self.served, job))

    def run(self, jobs: list[InferenceJob]) -> list[Outcome]:
        """One batch, on the inference thread."""
        cap = lambda entry: self.catalog.batching(entry, self.served.on_gpu).max_batch_size  # noqa: E731
        return run_batch(jobs, self._resolve, cap, self._infer, self.family.group_key, self.family.fit)

    def _resolve(self, job: InferenceJob) -> tuple[LoadedModel, float]:
        return self.served.resolve(job.model, job.version)

    def _infer(self, model: LoadedModel, jobs: list[InferenceJob], chunk: list[Member], outcomes: list) -> None:
        """One inference call for images that share a model version and options; fills their outcomes."""
        members = [jobs[i] for i, *_ in chunk]
        with model.lock:
            inference = self.family.infer(model, [image for _, image, _, _ in chunk], members[0].options)
        n = len(chunk)
        MODEL_BATCH.labels(model=model.entry.name).observe(n)
        for (i, image, decode_ms, load_ms), job, output in zip(chunk, members, inference.outputs, strict=True):
            timings = Timings(decode_ms=decode_ms, preprocess_ms=inference.preprocess_ms / n,
                              inference_ms=inference.inference_ms / n, postprocess_ms=inference.postprocess_ms / n,
                              batch_size=n, load_ms=load_ms)  # fmt: skip
            outcomes[i] = self._outcome(model, job, image, output, timings)

    def _outcome(self, model: LoadedModel, job: InferenceJob, image: DecodedImage, output: Any,
                 timings: Timings) -> Outcome:  # fmt: skip
        """The result is of the upload (`image.original`), whatever crop or copy the model was given."""
        started = time.perf_counter()
        result = self.family.to_result(model, output, image.original, job, timings)
        result.timings.postprocess_ms += (time.perf_counter() - started) * 1000
        result.version = model.version
        jpeg = drawing.render(image.original.rgb, result) if job.annotate else None
        return Outcome(result=result, annotated_jpeg=jpeg)


def _answer(outcome: Outcome, arrived: float) -> Answer:
    """The route's answer to one job, serialised once, here."""
    if outcome.result is None:
        error = outcome.error or ErrorBody(error="internal error", detail="no result")
        return ServiceError.from_body(outcome.status, error).answer()
    outcome.result.timings.total_ms = (time.perf_counter() - arrived) * 1000
    return Answer(200, RESULT.dump_json(outcome.result), outcome.result.version, outcome.annotated_jpeg)


async def _managed(call: Awaitable[ManageResult]) -> ManageOutcome:
    try:
        return ManageOutcome(result=await call)
    except ServiceError as exc:
        return ManageOutcome(status=exc.status, error=ErrorBody(error=exc.error, detail=exc.detail))


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
        "workers": settings.worker_count(),
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
