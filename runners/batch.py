"""What every family runner shares: loading its catalog models, and the adaptive-batch loop.

A batch mixes requests for several models and options. Each request is checked and decoded once;
requests that can share one inference call are grouped; each group runs in chunks no larger than
its model's batch cap; a failure answers only the requests it concerns.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping
from typing import Annotated, Any, Protocol

from bentoml.validators import ContentType

from imaging import DecodedImage, ImageError, decode
from models.catalog import ModelEntry, RunnerSettings
from schemas import ErrorBody, InferenceJob, Outcome

log = logging.getLogger("yolo_toys.runners")

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)  # the batch-size histograms' buckets


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
        # The inter-service client otherwise recycles its connections every 100 requests while
        # calls are in flight, and some of those calls fail under load (BentoML #5540).
        "runner_connection": {"max_requests": 10**9, "max_age": 1e9},
        "logging": {"access": {"enabled": False}},
        "metrics": {"enabled": False},
    }


# The media type is stated so that BentoML does not derive it from the list's JSON schema, which it
# otherwise rebuilds for every response (~7 ms of the runner's CPU per request, measured with py-spy).
Outcomes = Annotated[list[Outcome], ContentType("application/json")]

Member = tuple[int, DecodedImage, float]  # index in the batch, decoded image, decode milliseconds


class Loaded(Protocol):
    entry: ModelEntry


def load_all(
    family: str, entries: list[ModelEntry], load: Callable[[ModelEntry], Any], describe: Callable[[Any], str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Load every model of a family once; a model that fails is left out with a one-line reason."""
    models: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for entry in entries:
        started = time.perf_counter()
        try:
            models[entry.name] = load(entry)
        except Exception as exc:
            missing[entry.name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("model %s not loaded: %s", entry.name, missing[entry.name])
            continue
        log.info("loaded %s (%s) in %.1f s", entry.name, describe(models[entry.name]), time.perf_counter() - started)
    log.info("%s runner ready (pid %d): %s; missing: %s", family, os.getpid(),
             ", ".join(models) or "none", ", ".join(missing) or "none")  # fmt: skip
    return models, missing


def error(status: int, error: str, detail: str) -> Outcome:
    return Outcome(status=status, error=ErrorBody(error=error, detail=detail))


def run_batch(
    jobs: list[InferenceJob],
    models: Mapping[str, Loaded],
    missing: Mapping[str, str],
    cap: Callable[[ModelEntry], int],
    infer: Callable[[Any, list[InferenceJob], list[Member], list[Outcome | None]], None],
    shape_key: Callable[[Any, DecodedImage], Hashable] = lambda loaded, image: None,
) -> list[Outcome]:
    """Check, decode and group `jobs`, call `infer` once per chunk, and return one outcome per job.

    `infer(loaded, jobs, chunk, outcomes)` fills `outcomes[i]` for each member `i` of the chunk.
    `shape_key` adds to the grouping whatever else must be equal within one call (an image shape).
    """
    outcomes: list[Outcome | None] = [None] * len(jobs)
    groups: dict[tuple, list[Member]] = defaultdict(list)
    for i, job in enumerate(jobs):
        loaded = models.get(job.model)
        if loaded is None:
            outcomes[i] = error(404, "model not loaded", missing.get(job.model, f"unknown model {job.model!r}"))
            continue
        if loaded.entry.task != job.task:
            outcomes[i] = error(422, "wrong task for model", f"{job.model} serves {loaded.entry.task.value}")
            continue
        started = time.perf_counter()
        try:
            image = decode(job.image)
        except ImageError as exc:
            outcomes[i] = error(exc.status, exc.error, exc.detail)
            continue
        decode_ms = (time.perf_counter() - started) * 1000
        key = (job.model, job.options.model_dump_json(exclude={"top_k"}), shape_key(loaded, image))
        groups[key].append((i, image, decode_ms))

    for (model_name, _, _), members in groups.items():
        loaded = models[model_name]
        size = cap(loaded.entry)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            try:
                infer(loaded, jobs, chunk, outcomes)
            except Exception as exc:  # a model failure answers its own requests, never the batch
                log.exception("inference failed for %s on %d image(s)", model_name, len(chunk))
                for i, _, _ in chunk:
                    outcomes[i] = error(500, "inference failed", f"{type(exc).__name__}: {exc}")
    return [o if o is not None else error(500, "internal error", "no outcome") for o in outcomes]
