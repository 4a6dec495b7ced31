"""Start a server pinned to given cores, wait until it answers, and stop it and every process under it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpus: str | None, command: list[str]) -> list[str]:
    """`command` on the given cores (`taskset`), or on any core when `cpus` is None."""
    return command if cpus is None else ["taskset", "-c", cpus, *command]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def serving(command: list[str], env: dict[str, str], cpus: str | None, ready: str, log: Path,
            timeout: float = 300) -> Iterator[str]:
    """Run `command` (with `{port}` filled in) on `cpus`; yield its base URL once `ready` answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(pinned(cpus, [c.format(port=port) for c in command]), cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not _ready(url + ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start; see {log}:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s, to the server and every process under it: BentoML's workers
    run in sessions of their own, which a signal to the server's process group does not reach."""
    if proc.poll() is not None:
        return
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=5)
    for worker in alive:
        worker.kill()


def own_home(env: dict[str, str], where: Path) -> dict[str, str]:
    """`env` with a BentoML home of its own that shares the model store: `bentoml serve` empties its
    home's Prometheus directory at start, so a second server on one home took the metrics of the
    first (measured: a running server's model metrics vanished from its /metrics)."""
    home = where / "bentoml_home"
    home.mkdir(parents=True, exist_ok=True)
    store = Path(env.get("BENTOML_HOME") or Path.home() / "bentoml") / "models"
    if store.is_dir() and not (home / "models").exists():
        (home / "models").symlink_to(store, target_is_directory=True)
    return {**env, "BENTOML_HOME": str(home)}


def _launched(url: str, program: str = "serve") -> psutil.Process:
    """The process started with `program` (an argument of its command line) and `url`'s port."""
    port = url.rsplit(":", 1)[1]
    found = [p for p in psutil.process_iter(["cmdline"]) if port in (p.info["cmdline"] or [])
             and any(arg == program or arg.endswith(f"/{program}") for arg in p.info["cmdline"])]  # fmt: skip
    pids = {p.pid for p in found}
    [root] = [p for p in found if p.ppid() not in pids]  # forked workers (LitServe's) repeat the command line
    return root


def workers(url: str) -> dict[str, psutil.Process]:
    """The worker processes of the `bentoml serve` listening on `url`'s port, by service name."""
    found = {}
    for child in _launched(url).children(recursive=True):
        cmdline = child.cmdline()
        if "--service-name" in cmdline:
            found[cmdline[cmdline.index("--service-name") + 1]] = child
    return found


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far."""
    seconds = {}
    for name, process in processes.items():
        try:
            times = process.cpu_times()
        except psutil.Error:  # gone meanwhile
            continue
        seconds[name] = times.user + times.system
    return seconds


def server_processes(url: str, program: str) -> dict[str, psutil.Process]:
    """The processes that serve `url`: a `bentoml serve`'s workers by service name, else the process started
    with `program` (`uvicorn`: the hand-written baseline) and its children (LitServe's workers)."""
    if program == "bentoml":
        return workers(url)
    main = _launched(url, program)
    return {"server": main, **{f"child {i}": child for i, child in enumerate(main.children(recursive=True), 1)}}


def whole(url: str, program: str) -> list[psutil.Process]:
    """Every process of the server on `url`'s port: the one started with `program` (`bentoml`: `bentoml serve`)
    and all under it, BentoML's arbiter and workers included."""
    root = _launched(url, "serve" if program == "bentoml" else program)
    return [root, *root.children(recursive=True)]


def total_cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU seconds the processes have used so far, together (those gone meanwhile left out)."""
    return sum(cpu_seconds({str(p.pid): p for p in processes}).values())


def rss_mb(processes: list[psutil.Process]) -> float:
    """Resident memory of the processes together, in MB."""
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20
