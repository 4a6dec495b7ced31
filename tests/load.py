"""Clients that record every answer while a test kills things, and the scenarios run both on local
processes and on containers of the image (tests/test_roles.py, tests/container/, tests/test_hardening.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

from bench.cluster import Cluster, Role
from conftest import bus_jpg


def wait_for(condition: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    """Whether `condition()` became true within `timeout` seconds, asked every `every` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


class Load:
    """Clients sending bus.jpg to /detect, and a /readyz and /livez prober, recording every answer.

    `rows`: (started, seconds, status, Retry-After, error); `probes`: (started, seconds, ready, live).
    """

    def __init__(self, url: str, clients: int = 6) -> None:
        self.url, self.rows, self.probes, self.stopped = url, [], [], threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        self.threads.append(threading.Thread(target=self._prober))
        self.t0 = time.monotonic()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join()

    def _client(self) -> None:
        bus = bus_jpg()
        with httpx.Client(timeout=60) as client:
            while not self.stopped.is_set():
                started = time.monotonic()
                try:
                    r = client.post(f"{self.url}/detect", files={"image": ("bus.jpg", bus, "image/jpeg")})
                    row = (started - self.t0, time.monotonic() - started, r.status_code, r.headers.get("retry-after"),
                           r.json().get("error") if r.status_code != 200 else None)  # fmt: skip
                except httpx.HTTPError as exc:
                    row = (started - self.t0, time.monotonic() - started, 0, None, type(exc).__name__)
                self.rows.append(row)
                if row[2] != 200:
                    time.sleep(0.2)

    def _prober(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopped.is_set():
                started = time.monotonic()
                try:
                    ready = client.get(f"{self.url}/readyz").status_code
                    live = client.get(f"{self.url}/livez").status_code
                except httpx.HTTPError:  # the server is gone (the shutdown test)
                    ready = live = 0
                self.probes.append((started - self.t0, time.monotonic() - started, ready, live))
                time.sleep(0.3)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        return wait_for(condition, timeout)


def detect(url: str) -> list[tuple[str, float]]:
    r = httpx.post(f"{url}/detect", files={"image": ("bus.jpg", bus_jpg(), "image/jpeg")}, timeout=120)
    assert r.status_code == 200, r.text
    return [(d["label"], round(d["score"], 4)) for d in r.json()["detections"]]


def series(front: Role, name: str, family: str = "ultralytics") -> dict[str, float]:
    """A front metric of the family by its `replica` label (or "" without one), from /metrics."""
    found: dict[str, float] = {}
    for line in httpx.get(f"{front.url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") and f'family="{family}"' in line:
            replica = line.split('replica="', 1)[1].split('"', 1)[0] if 'replica="' in line else ""
            found[replica] = found.get(replica, 0) + float(line.rsplit(" ", 1)[1])
    return found


def calls(front: Role) -> dict[str, float]:
    return series(front, "yolo_toys_runner_calls_total")


def killed_replica_costs_no_request(replicated: Cluster) -> str:
    """Two Ultralytics replicas under load; one is killed with SIGKILL (server and workers, as when its
    pod dies) and restarted: every request is answered 200, and both replicas take calls when both are up."""
    front, (first, second) = replicated.front, replicated.runners["ultralytics"]
    with Load(front.url, clients=6) as load:
        assert load.wait_for(lambda: sum(r[2] == 200 for r in load.rows) >= 30, 120)
        before = calls(front)
        first.kill()
        killed_at = load.now()
        assert load.wait_for(lambda: sum(r[0] > killed_at + 1 and r[2] == 200 for r in load.rows) >= 20, 120)
        during = calls(front)
        replicated.restart(first)
        replicated.wait_ready([first])
        restarted_at = load.now()
        assert load.wait_for(lambda: calls(front).get(first.url, 0) > during.get(first.url, 0) + 10, 120)
        time.sleep(1)
    statuses = Counter(r[2] for r in load.rows)
    assert set(statuses) == {200}, (statuses, [r for r in load.rows if r[2] != 200][:5])
    share = before[first.url] / (before[first.url] + before[second.url])
    assert 0.2 < share < 0.8, before  # both take calls; least-in-flight gives the faster one more
    assert all(p[2] == 200 and p[3] == 200 for p in load.probes), Counter((p[2], p[3]) for p in load.probes)
    resent = series(front, "yolo_toys_runner_resent_total").get("", 0)
    assert resent >= 1  # calls were on the killed replica, and were sent again
    slowest = max(r[1] for r in load.rows if killed_at - 5 < r[0] < restarted_at)
    return f"requests: {statuses}; calls before kill {before}; resent {resent}; slowest around the kill {slowest:.2f} s"
