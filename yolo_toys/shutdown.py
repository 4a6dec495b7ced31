"""Graceful shutdown across processes: a rolling restart drops no request the front has begun.

BentoML's supervisor (circus) sends SIGTERM to the front and to every runner at once. The front then
finishes its in-flight requests (uvicorn's graceful shutdown), but:

- a runner that stops at once answers none of the calls those requests still make (measured here:
  5 of 8 requests in flight at SIGTERM got 503). So a runner keeps serving after SIGTERM until no
  call has been in flight for `IDLE_S`, within `MAX_S`;
- the front's runner probes (yolo_toys/health.py) would take a runner whose socket the supervisor
  has closed for dead and cancel the calls still running on open connections. So the front stops
  probing at SIGTERM and lets those calls finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger("yolo_toys.shutdown")

IDLE_S = 1.0
MAX_S = 15.0  # then uvicorn's own graceful shutdown, within circus's 30 s before SIGKILL


def before_sigterm(prepare: Callable[[], Awaitable[None]]) -> None:
    """On SIGTERM, await `prepare()` and then run the handler that was there (uvicorn's, which starts
    the graceful shutdown). Call at start-up, on the server's loop; a no-op outside a server."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # the service made in-process, not served
        return
    if not callable(handler):
        return

    async def prepare_then_stop(signum: int, frame: FrameType | None) -> None:
        await prepare()
        handler(signum, frame)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(lambda: loop.create_task(prepare_then_stop(signum, frame)))

    signal.signal(signal.SIGTERM, on_sigterm)


class Drain:
    """A runner's calls in flight; after SIGTERM the runner stops once they are over."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_call = time.monotonic()

    @contextmanager
    def call(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.last_call = time.monotonic()

    async def until_idle(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < MAX_S and (self.in_flight or time.monotonic() - self.last_call < IDLE_S):
            await asyncio.sleep(0.1)
        log.info("stopping after %.1f s of draining (%d calls in flight)", time.monotonic() - started, self.in_flight)
