"""Runs a `buildah run ...` command and gives its SIGTERM to the server inside, as `docker stop` does.

Signalled itself, `buildah run` (chroot isolation) SIGKILLs the command it runs and leaves BentoML's
workers, which run in sessions of their own, orphaned; a container's main process should get the
SIGTERM instead, and stop its workers gracefully.

    python tests/container/forward.py buildah run ... CONTAINER -- ENTRYPOINT ARGS
"""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil


def is_server(process: psutil.Process) -> bool:
    """BentoML's supervisor: `bentoml serve` or `python -m bentoml_cli._internal.start ...`."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return False
    return any(arg.endswith("/bentoml") for arg in cmdline[:2]) or "bentoml_cli._internal.start" in cmdline


def server_of(pid: int) -> psutil.Process | None:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return None
    return next((p for p in children if is_server(p)), None)


def main() -> int:
    child = subprocess.Popen(sys.argv[1:])

    def forward(signum: int, _frame: object) -> None:
        target = server_of(child.pid)
        try:
            (target or psutil.Process(child.pid)).send_signal(signum)
        except psutil.Error:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
