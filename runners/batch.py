"""One adaptive batch, on the inference thread: check and decode each request once, group the
requests that can share an inference call, and run each group in chunks no larger than its model's
batch cap. A failure answers only the requests it concerns.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import Histogram

from yolo_toys.errors import ServiceError
from yolo_toys.imaging import DecodedImage, decode
from yolo_toys.schemas import ErrorBody, InferenceJob, Outcome, PredictOptions
from yolo_toys.settings import settings

log = logging.getLogger("yolo_toys.runners")

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
BATCH_PIXELS_HELD = 2  # decoded pixels a batch holds at once, in units of the pixel limit (YOLO_TOYS_MAX_PIXELS)


def _batch_sizes(name: str, documentation: str, label: str) -> Histogram:
    return Histogram(name, documentation, [label], buckets=BATCH_BUCKETS)


RUNNER_BATCH = _batch_sizes("yolo_toys_runner_batch_size",
                            "Requests per batch a runner takes from its queue (before the batch is split per model).",
                            "runner")  # fmt: skip
MODEL_BATCH = _batch_sizes("yolo_toys_model_batch_size",
                           "Images per inference call, per model (after the adaptive batch is split per model).",
                           "model")  # fmt: skip

# index in the batch, image fitted for the model, decode + fit milliseconds, milliseconds spent loading the model
# for it (a cold start: runners/serving.py)
Member = tuple[int, DecodedImage, float, float]
Resolve = Callable[[InferenceJob], tuple[Any, float]]  # the loaded model version of a job, and the load milliseconds
Fit = Callable[[Any, DecodedImage, PredictOptions], DecodedImage]


class Loaded(Protocol):
    entry: Any


def failed(exc: ServiceError) -> Outcome:
    """A runner's answer that the front turns back into `exc`."""
    return Outcome(status=exc.status, error=ErrorBody(error=exc.error, detail=exc.detail))


def _member(job: InferenceJob, resolve: Resolve, index: int, fit: Fit) -> tuple[Loaded, Member]:
    """Resolve, check, decode and fit one request: every limit is checked here, before any inference work."""
    loaded, load_ms = resolve(job)
    if loaded.entry.task != job.task:
        raise ServiceError(422, "wrong task for model", f"{job.model} serves {loaded.entry.task.value}")
    started = time.perf_counter()
    image = fit(loaded, decode(job.image), job.options)
    return loaded, (index, image, (time.perf_counter() - started) * 1000, load_ms)


Infer = Callable[[Any, list[InferenceJob], list[Member], list[Outcome | None]], None]


def _pixels(member: Member) -> int:
    height, width = member[1].original.shape
    return height * width


def _chunks(members: list[Member], size: int, max_pixels: int) -> Iterator[list[Member]]:
    """Runs of at most `size` members and `max_pixels` decoded pixels (or one larger image): what one
    inference call allocates grows with its images' pixels (a processor converts them all at once)."""
    chunk: list[Member] = []
    for member in members:
        if chunk and (len(chunk) == size or sum(map(_pixels, chunk)) + _pixels(member) > max_pixels):
            yield chunk
            chunk = []
        chunk.append(member)
    if chunk:
        yield chunk


def _run_chunk(infer: Infer, loaded: Loaded, jobs: list[InferenceJob], chunk: list[Member],
               outcomes: list[Outcome | None]) -> None:  # fmt: skip
    try:
        infer(loaded, jobs, chunk, outcomes)
    except ServiceError as exc:  # the family refuses these inputs (e.g. an image shape the model cannot take)
        log.info("%s refused %d image(s): %s", loaded.entry.name, len(chunk), exc)
        for i, *_ in chunk:
            outcomes[i] = failed(exc)
    except Exception as exc:  # a model failure answers its own requests, never the batch
        log.exception("inference failed for %s on %d image(s)", loaded.entry.name, len(chunk))
        for i, *_ in chunk:
            outcomes[i] = failed(ServiceError(500, "inference failed", f"{type(exc).__name__}: {exc}"))


def _run_groups(groups: dict[tuple, list[Member]], models: Mapping[int, Loaded], cap: Callable[[Any], int],
                infer: Infer, jobs: list[InferenceJob], outcomes: list[Outcome | None]) -> None:  # fmt: skip
    limit = settings().max_pixels
    for (model_id, _, _), members in groups.items():
        for chunk in _chunks(members, cap(models[model_id].entry), limit):
            _run_chunk(infer, models[model_id], jobs, chunk, outcomes)


def run_batch(
    jobs: list[InferenceJob],
    resolve: Resolve,
    cap: Callable[[Any], int],
    infer: Infer,
    group_key: Callable[[Any, DecodedImage], Hashable] = lambda loaded, image: None,
    fit: Fit = lambda loaded, image, options: image,
) -> list[Outcome]:
    """Check, decode, fit and group `jobs`, call `infer` once per chunk, and return one outcome per job.

    `infer(loaded, jobs, chunk, outcomes)` fills `outcomes[i]` for each member `i` of the chunk.
    `fit` bounds what the model's preprocessing allocates (runners/family.py); `group_key` adds to the
    grouping whatever else must be equal within one call (an image shape). The decoded images a batch
    holds at once are bounded too: once they reach BATCH_PIXELS_HELD x the pixel limit, what is decoded
    is run before the rest is decoded (a batch of 32 images of 40 MP would hold 7.7 GB).
    """
    outcomes: list[Outcome | None] = [None] * len(jobs)
    groups: dict[tuple, list[Member]] = defaultdict(list)
    models: dict[int, Loaded] = {}  # the versions this batch resolved to: a route switched meanwhile does not move them
    held, limit = 0, settings().max_pixels
    for i, job in enumerate(jobs):
        try:
            loaded, member = _member(job, resolve, i, fit)
        except ServiceError as exc:
            outcomes[i] = failed(exc)
            continue
        models[id(loaded)] = loaded
        groups[(id(loaded), job.options.model_dump_json(exclude={"top_k"}), group_key(loaded, member[1]))].append(member)
        held += _pixels(member)
        if held >= BATCH_PIXELS_HELD * limit:
            _run_groups(groups, models, cap, infer, jobs, outcomes)
            groups, held = defaultdict(list), 0
    _run_groups(groups, models, cap, infer, jobs, outcomes)
    return [o if o is not None else failed(ServiceError(500, "internal error", "no outcome")) for o in outcomes]
