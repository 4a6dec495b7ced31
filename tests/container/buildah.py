"""Containers of an image run with buildah (daemonless): `buildah from IMAGE`, then `buildah run` of
the image's own entrypoint with the role's arguments, on the host's network.

`Buildah` is a `Launcher` (bench/cluster.py): `Role.kill`/`Role.stop` act on the process tree under
`role.proc`, which with chroot isolation (no PID namespace) holds every process of the container.
`role.proc` is forward.py around `buildah run`, so that `Role.stop`'s SIGTERM reaches the server.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from bench.cluster import Role

MARKER = "YOLO_TOYS_TEST_CONTAINER"  # in every process of a container run here: the container's name
FORWARD = Path(__file__).with_name("forward.py")  # SIGTERM to the server inside, as `docker stop` does


def buildah(*args: str, timeout: float = 300) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def available() -> bool:
    return shutil.which("buildah") is not None


def image_config(image: str) -> dict:
    """The image's inspect document (`buildah inspect --type image`), or {} when it is not stored."""
    try:
        return json.loads(buildah("inspect", "--type", "image", image))
    except RuntimeError:
        return {}


class Buildah:
    """Each `start` runs a fresh container of `image`, as a restarted pod gets a fresh container."""

    def __init__(self, image: str, host: str = "127.0.0.1") -> None:
        config = image_config(image)
        if not config:
            raise RuntimeError(f"no image {image}: run `make container`")
        self.image = image
        self.entrypoint: list[str] = config["OCIv1"]["config"]["Entrypoint"]
        self.host = host
        self.containers: list[str] = []

    def create(self) -> str:
        container = buildah("from", "--pull=never", self.image)
        self.containers.append(container)
        return container

    def run(self, role: Role, args: list[str], env: dict[str, str]) -> None:
        """The image's entrypoint with `args` in a new container; its output goes to `role.log`."""
        container = self.create()
        command = [sys.executable, str(FORWARD), "buildah", "run", "--isolation", "chroot", "--network", "host",
                   "--user", "bentoml"]  # fmt: skip
        for key, value in {**env, MARKER: container}.items():
            command += ["--env", f"{key}={value}"]
        command += [container, "--", *self.entrypoint, *args]
        with open(role.log, "ab") as out:
            role.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, role: Role, args: list[str], env: dict[str, str]) -> None:
        # Kubernetes pods listen on every address of their own network; here they share the host's.
        # A container has a BentoML home of its own already: a host path given for one means nothing inside.
        env = {key: value for key, value in env.items() if key != "BENTOML_HOME"}
        self.run(role, [*args, "--host", self.host], env)

    def leftovers(self) -> list[psutil.Process]:
        """Processes still running from any container started here (they carry its marker variable)."""
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get(MARKER) in self.containers:
                    found.append(process)
            except psutil.Error:
                continue
        return found

    def close(self) -> None:
        for container in self.containers:
            subprocess.run(["buildah", "rm", container], capture_output=True, timeout=120)
        self.containers.clear()


@contextmanager
def mounted(image: str) -> Iterator[Path]:
    """The root filesystem of a fresh container of `image`, mounted on the host (root only)."""
    container = buildah("from", "--pull=never", image)
    try:
        yield Path(buildah("mount", container))
    finally:
        subprocess.run(["buildah", "umount", container], capture_output=True, timeout=120)
        subprocess.run(["buildah", "rm", container], capture_output=True, timeout=120)


def layers(image: str) -> list[tuple[str, int]]:
    """Each layer of `image` with the Dockerfile step that made it and its size in bytes (uncompressed)."""
    config = image_config(image)
    sizes = [layer["size"] for layer in json.loads(config["Manifest"])["layers"]]
    steps = [h.get("created_by", "") for h in config["OCIv1"]["history"] if not h.get("empty_layer")]
    # `|8 ARG=... /bin/sh -c COMMAND` (a RUN with build args) or `/bin/sh -c #(nop) COPY ...`
    steps = [re.sub(r"^(\|\d+ (\S+=\S* )*)?(/bin/sh -c )?(#\(nop\) )?", "", step) for step in steps]
    return list(zip(steps, sizes, strict=True))
