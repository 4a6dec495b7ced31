"""The runners' batcher: what queued while the model was busy forms the next batch; stale requests are shed."""

from __future__ import annotations

import asyncio
import time

from runners.batcher import Batcher
from yolo_toys.schemas import DetectResult, ImageSize, InferenceJob, Outcome, Task, Timings


def job(i: int) -> InferenceJob:
    return InferenceJob(model=f"m{i}", task=Task.detect, image=b"")


def answer(jobs: list[InferenceJob]) -> list[Outcome]:
    return [Outcome(result=DetectResult(model=j.model, image=ImageSize(width=1, height=1), timings=Timings(),
                                        detections=[])) for j in jobs]  # fmt: skip


class Recorder:
    """A batch function that takes `seconds` and records each batch it was given."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.batches = seconds, []

    def __call__(self, jobs: list[InferenceJob]) -> list[Outcome]:
        self.batches.append([j.model for j in jobs])
        time.sleep(self.seconds)
        return answer(jobs)


async def submit_staggered(batcher: Batcher, names: range, first_alone: bool = True) -> list[list[Outcome]]:
    first = asyncio.ensure_future(batcher.submit([job(names[0])]))
    await asyncio.sleep(0.05 if first_alone else 0)
    rest = [asyncio.ensure_future(batcher.submit([job(i)])) for i in names[1:]]
    return await asyncio.gather(first, *rest)


def test_requests_that_queue_while_a_batch_runs_form_the_next_batch() -> None:
    run = Recorder(0.3)
    batcher = Batcher("test", run, max_batch_size=4, max_latency_ms=10_000)
    outcomes = asyncio.run(submit_staggered(batcher, range(7)))
    assert run.batches == [["m0"], ["m1", "m2", "m3", "m4"], ["m5", "m6"]]
    assert [o.result.model for [o] in outcomes] == [f"m{i}" for i in range(7)]  # each caller gets its own


def test_a_lone_request_runs_at_once_in_a_batch_of_one() -> None:
    run = Recorder(0.01)
    batcher = Batcher("test", run, max_batch_size=8, max_latency_ms=10_000)

    async def scenario() -> None:
        await asyncio.gather(*(batcher.submit([job(i)]) for i in range(8)))  # a burst
        for i in range(8, 11):  # then one at a time
            await batcher.submit([job(i)])

    asyncio.run(scenario())
    assert run.batches[-3:] == [["m8"], ["m9"], ["m10"]]


def test_requests_that_waited_longer_than_max_latency_are_shed_with_503() -> None:
    run = Recorder(0.3)
    batcher = Batcher("test", run, max_batch_size=1, max_latency_ms=100)
    outcomes = asyncio.run(submit_staggered(batcher, range(3)))
    assert run.batches == [["m0"]]
    assert outcomes[0][0].status == 200
    for [shed] in outcomes[1:]:
        assert shed.status == 503 and shed.error is not None and shed.error.error == "overloaded"
        assert "test queue" in shed.error.detail


def test_a_failing_batch_answers_500_to_its_requests_and_the_next_batch_runs() -> None:
    calls = []

    def flaky(jobs: list[InferenceJob]) -> list[Outcome]:
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return answer(jobs)

    batcher = Batcher("test", flaky, max_batch_size=8, max_latency_ms=10_000)

    async def scenario() -> tuple[list[Outcome], list[Outcome]]:
        return await batcher.submit([job(0), job(1)]), await batcher.submit([job(2)])

    failed, fine = asyncio.run(scenario())
    assert [o.status for o in failed] == [500, 500] and failed[0].error.error == "internal error"
    assert [o.status for o in fine] == [200]
