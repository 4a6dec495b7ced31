"""Closed-loop HTTP load: `concurrency` clients, each sending its next request as soon as the last returns,
for a time (`closed_loop`) or for a number of requests (`counted`)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
import numpy as np
from pydantic import BaseModel


class Point(BaseModel):
    """One load level: what the clients saw in the measured window (the warm-up excluded)."""

    concurrency: int
    seconds: float
    requests: int
    throughput: float  # successful requests per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    failures: int  # non-200 answers and connection errors in the window
    failures_warmup: int
    statuses: dict[str, int]
    sent: int = 0  # every request of the level, warm-up and the tail after the window included
    # CPU milliseconds per request of each server process (front, runners) over the whole level: what each hop costs
    cpu_ms_per_request: dict[str, float] = {}
    # the other servers, idle on the same cores meanwhile: the share of one core each used over the level, in %
    idle_cpu_pct: dict[str, float] = {}


@dataclass(frozen=True)
class Upload:
    """A file to post as multipart, plus the form's other fields."""

    field: str
    filename: str
    data: bytes
    content_type: str = "image/jpeg"


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "mean_ms": 0.0}
    arr = np.asarray(latencies_ms)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(arr.mean())}


async def post(session: aiohttp.ClientSession, url: str, upload: Upload, fields: dict[str, str]) -> str:
    """One multipart request; its status code, or the name of the connection error."""
    form = aiohttp.FormData()
    form.add_field(upload.field, upload.data, filename=upload.filename, content_type=upload.content_type)
    for key, value in fields.items():
        form.add_field(key, value)
    try:
        async with session.post(url, data=form) as response:
            await response.read()
            return str(response.status)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return type(exc).__name__


async def _client(session: aiohttp.ClientSession, url: str, uploads: list[Upload], fields: dict[str, str],
                  start: int, stop_at: float, log: list[tuple[float, float, str]]) -> None:
    i = start
    while time.perf_counter() < stop_at:
        sent = time.perf_counter()
        status = await post(session, url, uploads[i % len(uploads)], fields)
        log.append((sent, time.perf_counter(), status))
        i += 1


async def _run(url: str, uploads: list[Upload], fields: dict[str, str], concurrency: int, warmup_s: float,
               seconds: float) -> Point:
    log: list[tuple[float, float, str]] = []
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        window = (began + warmup_s, began + warmup_s + seconds)
        await asyncio.gather(*(
            _client(session, url, uploads, fields, k, window[1], log) for k in range(concurrency)
        ))  # fmt: skip
    measured = [(s, e, st) for s, e, st in log if window[0] <= e <= window[1]]
    ok = [(e - s) * 1000 for s, e, st in measured if st == "200"]
    statuses = Counter(st for _, _, st in measured)
    return Point(
        concurrency=concurrency,
        seconds=seconds,
        requests=len(measured),
        throughput=len(ok) / seconds,
        failures=len(measured) - len(ok),
        failures_warmup=sum(1 for s, e, st in log if e < window[0] and st != "200"),
        statuses=dict(statuses),
        sent=len(log),
        **percentiles(ok),
    )


async def _counted(url: str, uploads: list[Upload], fields: dict[str, str], concurrency: int, n: int) -> Point:
    log: list[tuple[float, float, str]] = []
    numbers = itertools.count()

    async def client(session: aiohttp.ClientSession) -> None:
        while (i := next(numbers)) < n:
            sent = time.perf_counter()
            status = await post(session, url, uploads[i % len(uploads)], fields)
            log.append((sent, time.perf_counter(), status))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    ok = [(e - s) * 1000 for s, e, st in log if st == "200"]
    return Point(concurrency=concurrency, seconds=seconds, requests=len(log), throughput=len(ok) / seconds,
                 failures=len(log) - len(ok), failures_warmup=0, statuses=dict(Counter(st for *_, st in log)),
                 sent=len(log), **percentiles(ok))  # fmt: skip


def counted(url: str, uploads: list[Upload], concurrency: int, n: int, fields: dict[str, str] | None = None) -> Point:
    """`n` requests in all from `concurrency` clients; every one counts, no warm-up."""
    return asyncio.run(_counted(url, uploads, fields or {}, concurrency, n))


async def _prime(url: str, uploads: list[Upload], fields: dict[str, str], n: int) -> list[str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        return [await post(session, url, uploads[i % len(uploads)], fields) for i in range(n)]


def prime(url: str, uploads: list[Upload], fields: dict[str, str] | None = None, n: int = 4) -> None:
    """A few requests one after the other before any measurement: lazy set-up (Ultralytics builds its
    predictor on the first call) must not land in the first load level."""
    statuses = asyncio.run(_prime(url, uploads, fields or {}, n))
    if set(statuses) != {"200"}:
        raise RuntimeError(f"{url} answered {statuses} while priming")


def closed_loop(url: str, uploads: list[Upload], concurrency: int, seconds: float, warmup_s: float,
                fields: dict[str, str] | None = None) -> Point:
    """Requests that complete inside [warm-up end, warm-up end + seconds] count; clients stop at the end."""
    return asyncio.run(_run(url, uploads, fields or {}, concurrency, warmup_s, seconds))
