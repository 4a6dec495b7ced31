"""Several images in one request: one `POST /batch` with 16 images against 16 single requests, one after
the other and all at once (issue 13).

`/batch` takes repeated multipart `images` fields plus `task` and `model` and answers `{"results": [...]}`,
one result per image, in order. A server without the route (404) makes the phase "not available".
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
from pydantic import BaseModel

from bench.loadgen import Upload, post

MODES = ("one /batch request", "single requests one after the other", "single requests all at once")
IMAGES = 16


class MultiPoint(BaseModel):
    """One way of sending the images: how long they all took and what the answers were."""

    mode: str
    images: int
    seconds: float
    throughput: float  # images per second, 0 when any answer failed
    statuses: dict[str, int]


async def _one_batch(session: aiohttp.ClientSession, url: str, uploads: list[Upload], fields: dict[str, str],
                     task: str) -> list[str]:  # fmt: skip
    form = aiohttp.FormData()
    for upload in uploads:
        form.add_field("images", upload.data, filename=upload.filename, content_type=upload.content_type)
    for key, value in {"task": task, **fields}.items():
        form.add_field(key, value)
    try:
        async with session.post(url + "/batch", data=form) as response:
            if response.status != 200:
                return [str(response.status)]
            results = (await response.json()).get("results", [])
            errors = sum(1 for r in results if isinstance(r, dict) and "error" in r)
            whole = len(results) == len(uploads) and not errors
            return ["200"] if whole else [f"200: {len(results)} results, {errors} errors"]
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return [type(exc).__name__]


async def _singles(session: aiohttp.ClientSession, url: str, uploads: list[Upload], fields: dict[str, str],
                   route: str, together: bool) -> list[str]:  # fmt: skip
    if together:
        return list(await asyncio.gather(*(post(session, url + route, u, fields) for u in uploads)))
    return [await post(session, url + route, u, fields) for u in uploads]


async def _measure(mode: str, send: Callable[[aiohttp.ClientSession], Awaitable[list[str]]]) -> MultiPoint:
    connector = aiohttp.TCPConnector(limit=IMAGES)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        began = time.perf_counter()
        statuses = await send(session)
        seconds = time.perf_counter() - began
    ok = set(statuses) == {"200"}
    return MultiPoint(mode=mode, images=IMAGES, seconds=seconds, throughput=IMAGES / seconds if ok else 0.0,
                      statuses=dict(Counter(statuses)))  # fmt: skip


def measure(mode: str, url: str, route: str, photos: list[tuple[str, bytes]], model: str) -> MultiPoint:
    """The 16 images (the photos in turn) sent one of the `MODES` ways to the server on `url`."""
    uploads = [Upload("image", name, data) for i in range(IMAGES) for name, data in [photos[i % len(photos)]]]
    fields, task = {"model": model}, route.strip("/")
    senders = {
        MODES[0]: lambda s: _one_batch(s, url, uploads, fields, task),
        MODES[1]: lambda s: _singles(s, url, uploads, fields, route, together=False),
        MODES[2]: lambda s: _singles(s, url, uploads, fields, route, together=True),
    }
    return asyncio.run(_measure(mode, senders[mode]))


def available(point: MultiPoint) -> bool:
    """Whether the server has the route at all: it did not answer 404 (nor 405, a route that only reads)."""
    return not set(point.statuses) & {"404", "405"}
