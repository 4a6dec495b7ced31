"""Adaptive batching in the runner: whenever the model is free, every waiting request up to the cap goes in.

BentoML's own dispatcher (1.4.39) corks requests to grow batches, from a running average of past
queue waits; after a burst that average keeps single requests waiting for hundreds of milliseconds
(a c=1 client got 2 req/s instead of 12 right after a c=16 load), and it polls every millisecond
while a batch runs, on the cores inference needs. Here nothing waits on purpose: the batch is what
queued while the previous one ran, so it grows with the load and is 1 when there is none. Requests
that waited longer than `max_latency_ms` are shed with a 503 instead of being run late.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Gauge

from runners.batch import RUNNER_BATCH, failed
from yolo_toys.errors import ServiceError
from yolo_toys.schemas import InferenceJob, Outcome

log = logging.getLogger("yolo_toys.runners")

Run = Callable[[list[InferenceJob]], list[Outcome]]
# What a runner holds, queued or in inference: the load signal for scaling runner replicas
# (deploy/kubernetes/), where a queue that keeps growing means too few of them.
INFLIGHT = Gauge("yolo_toys_runner_inflight", "Jobs accepted by the runner and not answered yet (queued + in inference).",
                 ["runner"], multiprocess_mode="livesum")  # fmt: skip


class Batcher:
    """One queue and one inference thread per runner process."""

    def __init__(self, name: str, run: Run, max_batch_size: int, max_latency_ms: int) -> None:
        self.name, self.run = name, run
        self.max_batch_size, self.max_latency_s = max_batch_size, max_latency_ms / 1000
        self._queue: deque[tuple[InferenceJob, asyncio.Future[Outcome], float]] = deque()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-inference")

    def after_batch(self, work: Callable[[], None]) -> Callable[[], None]:
        """A call that queues `work` on the inference thread, to run once the batch in progress is done
        (an unloaded model's memory, held by that batch until then, is given back after it)."""
        return lambda: self._executor.submit(work) and None

    async def submit(self, jobs: list[InferenceJob]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        if self._loop_task is None:
            self._wake = asyncio.Event()
            self._loop_task = loop.create_task(self._serve(), name=f"{self.name}-batcher")
        assert self._wake is not None
        now = time.monotonic()
        futures = [loop.create_future() for _ in jobs]
        self._queue.extend((job, future, now) for job, future in zip(jobs, futures, strict=True))
        self._wake.set()
        inflight = INFLIGHT.labels(runner=self.name)
        inflight.inc(len(jobs))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            inflight.dec(len(jobs))

    def _next_batch(self) -> list[tuple[InferenceJob, asyncio.Future[Outcome]]]:
        batch = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch_size:
            job, future, queued = self._queue.popleft()
            if future.done():  # the caller went away
                continue
            waited = now - queued
            if waited > self.max_latency_s:
                detail = f"waited {waited:.1f} s in the {self.name} queue; the limit is {self.max_latency_s:g} s"
                future.set_result(failed(ServiceError(503, "overloaded", detail)))
                continue
            batch.append((job, future))
        return batch

    async def _serve(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._next_batch()
            if not batch:
                continue
            RUNNER_BATCH.labels(runner=self.name).observe(len(batch))
            try:
                outcomes = await loop.run_in_executor(self._executor, self.run, [job for job, _ in batch])
            except Exception:
                log.exception("%s batch of %d failed", self.name, len(batch))
                outcomes = [failed(ServiceError(500, "internal error", "inference failed"))] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
