"""Where a runner family runs, as the front sees it: one or more replicas, and which one gets a call.

By default a family has one replica, the address BentoML gives the dependency (a local socket under
`bentoml serve`, the `--depends` URL of a front served alone). `YOLO_TOYS_REPLICAS` lists several:
`ultralytics=http://10.1.0.7:3000,http://10.1.0.8:3000 transformers=dns+http://runners:3000`, where a
`dns+` address stands for every address its host name resolves to, looked up again every few seconds
(a Kubernetes headless Service). Balancing here and not in a TCP balancer: BentoML's client keeps
connections open, so a per-connection balancer (a ClusterIP Service) keeps one client's calls mostly
on one replica (docs/replicas.md: 64/36 against 50/50 here), and only the caller can resend a call
whose replica died under it.

Each call goes to the ready replica with the fewest calls in flight. A replica is left out once its
probe fails (yolo_toys/health.py), and a call whose connection failed, or whose replica was found
down while it waited, is sent to another ready one: predictions have no side effects, so a call
lost with its replica is sent again rather than failed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Counter, Gauge

from yolo_toys.errors import ServiceError
from yolo_toys.health import PROBE_INTERVAL_S, RunnerHealth

log = logging.getLogger("yolo_toys.replicas")

CALLS = Counter("yolo_toys_runner_calls", "Calls from the front to each runner replica.", ["family", "replica"])
RESENT = Counter("yolo_toys_runner_resent", "Calls sent again after their replica's connection failed.", ["family"])
READY = Gauge("yolo_toys_runner_replicas_ready", "Ready replicas of each runner family, as one front process sees them.",
              ["family"], multiprocess_mode="max")  # fmt: skip
CONNECTION_FAILED = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)  # refused, reset, closed
RESOLVE_EVERY_S = 5.0
CLOSE_AFTER_S = 180.0  # a replica gone from DNS keeps its connections for the calls still on it (timeout 120 s)


class Lost(Exception):
    """The call never got its answer from this replica; another may take it."""


class Replica:
    """One runner server: its client, its probe state and the calls in flight on it."""

    def __init__(self, family: str, url: str, proxy: Any, opened: bool = False) -> None:
        self.family, self.url, self.proxy = family, url, proxy  # proxy: BentoML's RemoteProxy (or in-process service)
        self.health = RunnerHealth(family, proxy.to_async, url)
        self.inflight = 0
        self.opened = opened

    async def open(self) -> None:
        """Set the client up (its endpoints), as BentoML does for a dependency at start-up."""
        await self.proxy.__aenter__()
        self.opened = True

    async def call(self, method: str, *args: Any) -> Any:
        """The replica's answer; `Lost` if the connection failed or the replica was found down meanwhile."""
        self.inflight += 1
        CALLS.labels(family=self.family, replica=self.url).inc()
        try:
            return await self.health.guard(getattr(self.proxy.to_async, method)(*args))
        except CONNECTION_FAILED as exc:
            await self.health.check()
            raise Lost(f"{self.url}: {type(exc).__name__}") from exc
        except ServiceError as exc:  # guard: the replica is not ready, or went down under the call
            raise Lost(f"{self.url}: {exc.detail}") from exc
        finally:
            self.inflight -= 1


class ReplicaSet:
    """All replicas of one runner family, kept current (probes, DNS) by `watch`."""

    def __init__(self, family: str, sources: list[str], make: Callable[[str], Replica], owned: bool = True) -> None:
        self.family, self.sources, self.make = family, sources, make
        self.replicas: list[Replica] = [make(url) for url in sources if not url.startswith("dns+")]
        self._turn = itertools.count()
        self._resolved_at = 0.0
        self.owned = owned  # its clients are made here, so closed here

    @classmethod
    def single(cls, family: str, proxy: Any) -> ReplicaSet:
        """The one replica BentoML resolved the dependency to (its own socket, or the `--depends` URL)."""
        replica = Replica(family, str(getattr(proxy.to_async, "url", "in-process")), proxy, opened=True)
        return cls(family, [replica.url], lambda _url: replica, owned=False)

    @property
    def ready(self) -> bool:
        return any(r.health.ready for r in self.replicas)

    def pick(self, exclude: list[Replica]) -> Replica | None:
        """The ready replica with the fewest calls in flight; ties go round."""
        ready = [r for r in self.replicas if r.health.ready and r not in exclude]
        if not ready:
            return None
        start = next(self._turn) % len(ready)
        return min(ready[start:] + ready[:start], key=lambda r: r.inflight)

    async def call(self, method: str, *args: Any) -> Any:
        """Call `method` on a ready replica, and on the next one while calls are lost; 503 when none is left.

        A replica whose connection broke but which still answers its probe may be tried again: a
        runner's server closes a connection idle for 5 s, and a call written just then is lost
        before the runner reads it.
        """
        down: list[Replica] = []
        for _ in range(len(self.replicas) + 1):
            replica = self.pick(down)
            if replica is None:
                break
            try:
                return await replica.call(method, *args)
            except Lost as exc:
                RESENT.labels(family=self.family).inc()
                log.info("%s call lost (%s); sending it to a ready replica", self.family, exc)
                if not replica.health.ready:
                    down.append(replica)
        raise self.unavailable()

    async def broadcast(self, method: str, *args: Any) -> list[Any]:
        """Call `method` on every ready replica at once (a management call: each replica has its own
        workers and store); the answers of those that answered, 503 when none is ready or answered."""
        ready = [r for r in self.replicas if r.health.ready]
        answers = await asyncio.gather(*(r.call(method, *args) for r in ready), return_exceptions=True)
        for replica, answer in zip(ready, answers, strict=True):
            if isinstance(answer, BaseException):
                log.warning("%s %s on %s failed: %s", self.family, method, replica.url, answer)
        answered = [a for a in answers if not isinstance(a, BaseException)]
        if not answered:
            raise self.unavailable()
        return answered

    def unavailable(self) -> ServiceError:
        if len(self.replicas) == 1:
            return self.replicas[0].health.unavailable()
        if not self.replicas:
            detail = f"no {self.family} runner address has been found yet; retry later"
        else:
            detail = f"none of the {len(self.replicas)} {self.family} runner replicas is ready; retry later"
        return ServiceError.retry_later("runner unavailable", detail)

    async def watch(self) -> None:
        """Forever, once a second: probe every replica, and look the `dns+` names up again when due."""
        while True:
            if time.monotonic() - self._resolved_at >= RESOLVE_EVERY_S and any(s.startswith("dns+") for s in self.sources):
                await self._resolve()
            await asyncio.gather(*(r.open() for r in self.replicas if not r.opened))
            await asyncio.gather(*(r.health.check(strikes=2) for r in self.replicas))
            READY.labels(family=self.family).set(sum(r.health.ready for r in self.replicas))
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _resolve(self) -> None:
        """The replicas are the fixed addresses and every address the `dns+` names resolve to now."""
        self._resolved_at = time.monotonic()
        urls = [url for source in self.sources for url in await expand(source)]
        known = {r.url: r for r in self.replicas}
        if not urls and self.replicas:
            log.warning("%s: no address resolved; keeping the last known %d", self.family, len(self.replicas))
            return
        self.replicas = [known.get(url) or self.make(url) for url in dict.fromkeys(urls)]
        for url in known.keys() - set(urls):
            log.info("%s replica %s is gone from DNS", self.family, url)
            asyncio.get_running_loop().call_later(CLOSE_AFTER_S, _close, known[url])
        for url in set(urls) - known.keys():
            log.info("%s replica %s found", self.family, url)

    async def close(self) -> None:
        if self.owned:
            await asyncio.gather(*(r.proxy.close() for r in self.replicas))


def _close(replica: Replica) -> None:
    if hasattr(replica.proxy, "close"):
        asyncio.ensure_future(replica.proxy.close())


async def expand(source: str) -> list[str]:
    """`source` itself, or for `dns+SCHEME://NAME:PORT` one URL per address NAME resolves to (none if it fails)."""
    if not source.startswith("dns+"):
        return [source]
    parts = urlsplit(source.removeprefix("dns+"))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        log.warning("cannot resolve %s: %s", parts.hostname, exc)
        return []
    hosts = dict.fromkeys(info[4][0] for info in infos)
    return [f"{parts.scheme}://{_host(h)}:{port}" for h in sorted(hosts)]


def _host(address: str) -> str:
    return f"[{address}]" if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address) else address

