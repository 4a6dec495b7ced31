"""The Bento as a cluster runs it: each role a server of its own, wired by `--depends` (issue 11).

A role is started with its container arguments (the Kubernetes manifests', tests/manifests.py), on
loopback ports instead of Service names. `Processes` runs a role as `start-http-server` from the
source tree; a container launcher (tests/container/) runs the same arguments in the built image.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import psutil

from bench.servers import ROOT, free_port, own_home


@dataclass
class Role:
    """One running server: a role of the Bento on a port."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds until `/readyz` answers 200; raises with the log's tail if the server exits or times out."""
        started = time.monotonic()
        while not self.ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} on :{self.port} exited:\n{self.log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{self.name} on :{self.port} not ready in {timeout:.0f} s:\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")  # fmt: skip
            time.sleep(0.2)
        return time.monotonic() - started

    def worker(self) -> psutil.Process:
        """The server's one worker process (BentoML's service worker under the supervisor)."""
        [found] = [p for p in self.tree() if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]
        return found

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
    args: dict[str, list[str]]  # per role name
    env: dict[str, dict[str, str]]  # per server (its log's name: each has a BentoML home of its own)

    def restart(self, role: Role) -> None:
        self.launcher.start(role, on_port(self.args[role.name], role.port), self.env[role.log.stem])

    def front_sees(self, timeout: float = 60, want: dict[str, int] | None = None) -> None:
        """Until the front's probes have found every runner server ready (its `/metrics`). With
        YOLO_TOYS_READY_WHEN=any the front's /readyz is 200 once one family is up, and it probes once
        a second: a runner that has just become ready may still be `starting` for the front."""
        listed = bool(self.env["front"].get("YOLO_TOYS_REPLICAS"))  # else one URL per family (a balancer)
        want = want or {family: len(roles) if listed else 1 for family, roles in self.runners.items()}
        deadline = time.monotonic() + timeout
        while (seen := self._ready_replicas()) != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the front sees {seen} ready replicas, not {want}")
            time.sleep(0.5)

    def _ready_replicas(self) -> dict[str, int]:
        text = httpx.get(f"{self.front.url}/metrics", timeout=30).text
        found = re.findall(r'^yolo_toys_runner_replicas_ready\{family="(\w+)"\} (\S+)$', text, re.M)
        return {family: int(float(value)) for family, value in found}

    def wait_ready(self, roles: list[Role], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for role in roles:
            role.wait_ready(max(deadline - time.monotonic(), 0))


def replica_list(runners: dict[str, list[Role]]) -> str:
    """`YOLO_TOYS_REPLICAS` naming the given servers: `family=URL,URL family=URL`."""
    return " ".join(f"{family}=" + ",".join(r.url for r in roles) for family, roles in runners.items())


Route = Callable[[dict[str, list[Role]]], dict[str, str]]


@contextmanager
def cluster(specs: dict[str, Any], base_env: dict[str, str], logs: Path, launcher: Launcher | None = None,
            replicas: dict[str, int] | None = None, route: Route | None = None,
            listing: Callable[[dict[str, list[Role]]], str] = replica_list,
            sees: dict[str, int] | None = None) -> Iterator[Cluster]:  # fmt: skip
    """Start every role from `specs` (name -> `.args`, `.env`: tests/manifests.py `role_specs`), ready when
    entered, stopped on exit.

    The front balances over `replicas[family]` servers of each runner (`YOLO_TOYS_REPLICAS`, as
    `listing(runners)` writes it), or, with `route`, calls the one URL per family that `route(runners)`
    gives (a balancer in between). Entered once the front sees `sees` ready servers per family (by
    default every server it was given).
    """
    launcher = launcher or Processes()
    logs.mkdir(parents=True, exist_ok=True)
    families = [name for name in specs if name != "front"]
    runners = {f: [Role(f, free_port(), logs / f"{f}-{i}.log") for i in range((replicas or {}).get(f, 1))] for f in families}
    front = Role("front", free_port(), logs / "front.log")
    roles = [*(r for rs in runners.values() for r in rs), front]
    # A home of its own per server, as in a pod: a server empties its home's Prometheus directory at start.
    env = {r.log.stem: own_home({**base_env, **specs[r.name].env}, logs / r.log.stem) for r in roles}
    urls = route(runners) if route else {f: rs[0].url for f, rs in runners.items()}
    env["front"]["YOLO_TOYS_REPLICAS"] = "" if route else listing(runners)
    args = {f: specs[f].args for f in families}
    args["front"] = with_depends(specs["front"].args, urls)
    started = Cluster(front, runners, launcher, args, env)
    with ExitStack() as stack:
        for role in roles:
            stack.callback(role.stop)
            started.restart(role)
        started.wait_ready(roles)
        started.front_sees(want=sees)
        yield started
