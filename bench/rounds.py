"""Rounds, alternated point by point: every server of a model is started once and kept up; for each round
and each load level each server is measured in turn while the others sit idle on the same cores, and
the order turns by one server from one round to the next.

On a shared VM a single point moves by up to 20 % from one minute to the next; measured this way, the
servers compared at a level are measured minutes apart at most, every round, and the spread over the
rounds shows how far one figure can be trusted. Each point records how much CPU the idle servers took
meanwhile (`Point.idle_cpu_pct`): what keeping them up costs the measured one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from bench.loadgen import Point, Upload, closed_loop, prime
from bench.photos import photos
from bench.servers import cpu_seconds, server_processes, total_cpu_seconds, whole

PER_CLIENT_WARMUP = 0.05  # seconds of warm-up added per client: the queue fills before the window opens


def uploads() -> list[Upload]:
    """The photos every request sends, in turn."""
    return [Upload("image", name, data) for name, data in zip(("bus.jpg", "zidane.jpg"), photos(), strict=True)]


@dataclass
class Server:
    """One running server of a model: its results key, where it answers, what it is sent, at which levels."""

    key: str  # served (YOLO-Toys), baseline, litserve, bentoml
    url: str
    program: str  # how its processes are found: `bentoml` (a `bentoml serve`) or the program it was started as
    route: str
    fields: dict[str, str]
    levels: list[int]
    _workers: dict[str, psutil.Process] = field(default_factory=dict, repr=False)

    def workers(self) -> dict[str, psutil.Process]:
        """The processes whose CPU time per request is reported (BentoML's workers by service name)."""
        if not self._workers:
            self._workers = server_processes(self.url, self.program)
        return self._workers

    def processes(self) -> list[psutil.Process]:
        """All its processes, looked up now (a worker may have been restarted)."""
        return whole(self.url, self.program)

    def prime(self) -> None:
        prime(self.url + self.route, uploads(), self.fields)


def rotated(servers: list[Server], turn: int) -> list[Server]:
    """The servers in the order of round `turn`: the list turned left by `turn`."""
    k = turn % len(servers) if servers else 0
    return servers[k:] + servers[:k]


def measure(server: Server, idle: list[Server], c: int, seconds: float, warmup: float) -> Point:
    """One load level on `server`: its processes' CPU per request, and the idle servers' CPU share meanwhile."""
    own = server.workers()
    others = {o.key: o.processes() for o in idle}
    before, idle_before = cpu_seconds(own), {k: total_cpu_seconds(v) for k, v in others.items()}
    began = time.perf_counter()
    p = closed_loop(server.url + server.route, uploads(), c, seconds, warmup + c * PER_CLIENT_WARMUP, server.fields)
    elapsed = time.perf_counter() - began
    used = cpu_seconds(own)
    p.cpu_ms_per_request = {k: round((used[k] - before[k]) * 1000 / max(p.sent, 1), 2) for k in used if k in before}
    p.idle_cpu_pct = {k: round((total_cpu_seconds(v) - idle_before[k]) * 100 / elapsed, 2) for k, v in others.items()}
    return p


def describe(p: Point) -> str:
    cpu = ", ".join(f"{k} {ms:.1f}" for k, ms in p.cpu_ms_per_request.items())
    idle = sum(p.idle_cpu_pct.values())
    return (f"c={p.concurrency:>3}: {p.throughput:6.2f} req/s, p50 {p.p50_ms:7.1f} ms, p99 {p.p99_ms:7.1f} ms, "
            f"failures {p.failures} (+{p.failures_warmup} in warm-up); CPU ms/request: {cpu}; "
            f"idle servers {idle:.1f} % of a core")  # fmt: skip


def run(servers: list[Server], rounds: int, seconds: float, warmup: float, references: Callable[[int], dict],
        log: Callable[[str], None], what: str) -> list[dict]:  # fmt: skip
    """`rounds` rounds: `references(round)` first (measured while every server is idle), then each level with
    each server in turn. One dict per round: the references' keys and each server's points by its key."""
    levels = sorted({c for s in servers for c in s.levels})
    out = []
    for turn in range(rounds):
        record: dict = {**references(turn), **{s.key: [] for s in servers}}
        order = rotated(servers, turn)
        record["order"] = [s.key for s in order]
        for c in levels:
            for server in (s for s in order if c in s.levels):
                point = measure(server, [s for s in servers if s is not server], c, seconds, warmup)
                log(f"round {turn + 1} {server.key:<8} {what} {describe(point)}")
                record[server.key].append(point.model_dump())
        out.append(record)
    return out
