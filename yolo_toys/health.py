"""Whether each runner answers, known at all times, so that nothing waits on a dead one.

BentoML's supervisor owns the runners' listening sockets: when a runner process dies, a request sent
to it queues in the socket's backlog until the restarted process has loaded its models (30 s here),
and BentoML's own `/readyz` waits on the same queue (measured: no answer for 28 s). Instead the
front probes every runner's `/readyz` itself, with a short timeout, once a second; two failed probes
in a row, or one after a call's connection broke, and the runner is down. While a runner is
down (or still starting) its calls go to another replica (yolo_toys/replicas.py) or are answered 503
`runner unavailable` with a `Retry-After`, calls already waiting on it are cancelled (and sent again
elsewhere), and the front's `/readyz` says 503 while a family has no ready replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

import aiohttp
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from yolo_toys.errors import ServiceError
from yolo_toys.settings import settings

log = logging.getLogger("yolo_toys.health")
T = TypeVar("T")
State = Literal["starting", "ready", "down"]
PROBE_INTERVAL_S = 1.0


class RunnerHealth:
    """One runner's state from its last probe: `starting` until its first answer, then `ready` or `down`."""

    def __init__(self, name: str, client: Any, where: str = "") -> None:
        self.name, self.client, self.where = name, client, where  # client: BentoML's async client of the runner
        self.state: State = "starting"
        self.since = time.monotonic()
        self.misses = 0  # probes failed in a row
        self._gone = asyncio.Event()  # set while the runner is not ready: cancels the calls waiting on it

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def probe(self) -> bool:
        """GET the runner's /readyz within the probe timeout; a runner served in-process is always ready."""
        manager = getattr(self.client, "_session_manager", None)
        if manager is None:
            return True
        try:
            session = await manager.get_session()
            timeout = aiohttp.ClientTimeout(total=settings().runner_probe_timeout_s)
            async with session.get(self.client._readyz_endpoint, timeout=timeout) as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def check(self, strikes: int = 1) -> bool:
        """Probe now; the runner is down after `strikes` failed probes in a row.

        The periodic probe takes two: a runner whose inference thread holds the GIL in one long numpy
        call can miss one probe while alive. A call whose connection broke takes one.
        """
        ok = await self.probe()
        self.misses = 0 if ok else self.misses + 1
        if ok:
            self._set("ready")
        elif self.state != "ready" or self.misses >= strikes:
            self._set("starting" if self.state == "starting" else "down")
        return self.ready

    def _set(self, state: State) -> None:
        if state == self.state:
            return
        if state == "ready":
            self._gone.clear()
            log.info("%s runner %s is ready (%s for %.1f s)", self.name, self.where, self.state, time.monotonic() - self.since)
        else:
            self._gone.set()
            log.warning("%s runner %s is not answering; no calls go to it until it is back", self.name, self.where)
        self.state, self.since = state, time.monotonic()

    def unavailable(self) -> ServiceError:
        seconds = time.monotonic() - self.since
        what = "starting" if self.state == "starting" else "not answering"
        detail = f"the {self.name} runner is {what} (for {seconds:.0f} s); retry later"
        return ServiceError.retry_later("runner unavailable", detail)

    async def guard(self, call: Awaitable[T]) -> T:
        """Await `call`, or answer 503 as soon as the runner is found down while it waits."""
        if not self.ready:
            if asyncio.iscoroutine(call):
                call.close()
            raise self.unavailable()
        task = asyncio.ensure_future(call)
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the client went away: so does its runner call
            task.cancel()
            raise
        finally:
            gone.cancel()
        if not task.done():
            task.cancel()
            raise self.unavailable()
        return task.result()


class Health:
    """The runner families of one front process (yolo_toys/replicas.py), each probed by its own task."""

    def __init__(self, families: dict[str, Any]) -> None:
        self.families = families  # name -> ReplicaSet: `watch()`, `ready`, `unavailable()`
        self._tasks: list[asyncio.Task] = []
        self.shutting_down = False

    def start(self) -> None:
        self._tasks = [asyncio.create_task(f.watch(), name=f"health:{name}") for name, f in self.families.items()]

    def stop(self, shutting_down: bool = False) -> None:
        self.shutting_down = self.shutting_down or shutting_down
        for task in self._tasks:
            task.cancel()

    def not_ready(self) -> list[Any]:
        return [f for f in self.families.values() if not f.ready]


class Probes:
    """ASGI middleware that answers the front's `/readyz` from the probes, at once, never waiting on a runner."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/readyz":
            await self.app(scope, receive, send)
            return
        health = _health()
        if health is None or health.shutting_down:
            waiting = ["the service is " + ("starting" if health is None else "shutting down")]
        else:
            down = health.not_ready()
            some_up = len(down) < len(health.families) and settings().ready_when == "any"
            waiting = [] if some_up else [family.unavailable().detail for family in down]
        if not waiting:
            await PlainTextResponse("ready\n")(scope, receive, send)
            return
        await ServiceError.retry_later("not ready", "; ".join(waiting)).response()(scope, receive, send)


def _health() -> Health | None:
    """The front instance's `Health`; None before BentoML has made the instance."""
    from _bentoml_sdk.service import get_current_service

    try:
        return getattr(get_current_service(), "health", None)
    except Exception:  # BentoMLException: "service isn't instantiated yet"
        return None
