"""The Bento as a cluster runs it: each role a server of its own, wired by `--depends` (issue 11).

A role is started with the container arguments of the Kubernetes manifests (tests/manifests.py), on
loopback ports instead of Service names. `Processes` runs a role as `start-http-server` from the
source tree; the container test (tests/container/) runs the same arguments in the built image.
`Load` is a set of clients that records every answer while a test kills things.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psutil

from bench.servers import free_port
from conftest import bus_jpg, own_home

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Role:
    """One running server: a role of the Bento on a port."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def tree(self) -> list[psutil.Process]:
        """The server and every process under it (BentoML's workers run in sessions of their own)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def kill(self) -> None:
        """SIGKILL to the whole server, as when its pod or machine dies."""
        for process in self.tree():
            process.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout: float = 30) -> None:
        tree = self.tree()
        if not tree:
            return
        tree[0].send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=timeout)
        for process in alive:
            process.kill()
        self.proc.wait()


class Launcher(Protocol):
    """How a role's container arguments become a running server."""

    def start(self, role: Role, args: list[str], env: dict[str, str]) -> None: ...


class Processes:
    """A role as a process from the source tree: what the image's entrypoint runs, with `.` as the Bento."""

    def start(self, role: Role, args: list[str], env: dict[str, str]) -> None:
        assert args[0] == "start-http-server", args
        command = [sys.executable, "-m", "bentoml_cli._internal.start", *args, "--host", "127.0.0.1", "."]
        with open(role.log, "ab") as out:
            role.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip


def on_port(args: list[str], port: int) -> list[str]:
    """The arguments with `--port` set to `port`."""
    i = args.index("--port")
    return [*args[: i + 1], str(port), *args[i + 2 :]]


def with_depends(args: list[str], urls: dict[str, str]) -> list[str]:
    """The front's arguments with each `--depends NAME=URL` pointed at `urls[NAME]`."""
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg == "--depends":
            name = out[i + 1].split("=", 1)[0]
            out[i + 1] = f"{name}={urls[name]}"
    return out


@dataclass
class Cluster:
    """The front and `replicas[family]` servers of each runner family, each from its role's arguments."""

    front: Role
    runners: dict[str, list[Role]]
    launcher: Launcher
    args: dict[str, list[str]]
    env: dict[str, dict[str, str]]

    def restart(self, role: Role) -> None:
        self.launcher.start(role, on_port(self.args[role.name], role.port), self.env[role.name])

    def wait_ready(self, roles: list[Role], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for role in roles:
            while not role.ready():
                if role.proc is not None and role.proc.poll() is not None:
                    raise RuntimeError(f"{role.name} on :{role.port} exited:\n{role.log.read_text(errors='replace')[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{role.name} on :{role.port} not ready:\n{role.log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)


def replica_list(runners: dict[str, list[Role]]) -> str:
    """`YOLO_TOYS_REPLICAS` naming the given servers: `family=URL,URL family=URL`."""
    return " ".join(f"{family}=" + ",".join(r.url for r in roles) for family, roles in runners.items())


@contextmanager
def cluster(specs: dict, base_env: dict[str, str], logs: Path, launcher: Launcher | None = None,
            replicas: dict[str, int] | None = None) -> Iterator[Cluster]:  # fmt: skip
    """Start every role from `specs` (tests/manifests.py `role_specs`), ready when entered, stopped on exit."""
    launcher = launcher or Processes()
    logs.mkdir(parents=True, exist_ok=True)
    families = [name for name in specs if name != "front"]
    runners = {f: [Role(f, free_port(), logs / f"{f}-{i}.log") for i in range((replicas or {}).get(f, 1))] for f in families}
    front = Role("front", free_port(), logs / "front.log")
    # A home of its own per server, as in a pod: a server empties its home's Prometheus directory at start.
    env = {name: own_home({**base_env, **spec.env}, logs / name) for name, spec in specs.items()}
    env["front"]["YOLO_TOYS_REPLICAS"] = replica_list(runners)
    args = {f: specs[f].args for f in families}
    args["front"] = with_depends(specs["front"].args, {f: roles[0].url for f, roles in runners.items()})
    started = Cluster(front, runners, launcher, args, env)
    with ExitStack() as stack:
        for role in [*(r for roles in runners.values() for r in roles), front]:
            stack.callback(role.stop)
            started.restart(role)
        started.wait_ready([*(r for roles in runners.values() for r in roles), front])
        yield started


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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.2)
        return False
