"""The built image checked from outside, with its own entrypoint (`make container-test`, docs/container.md).

1. The whole Bento in one container, no arguments: ready, /detect, /models, /demo/, /metrics. Image
   size, layers and start-up time go to docs/container.json and the table in docs/container.md.
2. The three roles as containers of their own, with the Kubernetes manifests' arguments
   (tests/manifests.py), wired by `--depends` on loopback ports: the whole Bento's answers.
3. Two Ultralytics runner replicas under load, one SIGKILLed and restarted: tests/test_roles.py's
   scenario, on containers.

Containers are run with buildah (tests/container/buildah.py); YOLO_TOYS_IMAGE names another image.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.cluster import Role, cluster
from bench.servers import ROOT, free_port
from container.buildah import Buildah, available, image_config, layers, mounted
from load import detect, killed_replica_costs_no_request
from manifests import role_specs
from models.catalog import load_catalog

IMAGE = os.environ.get("YOLO_TOYS_IMAGE", "yolo-toys:latest")
RESULTS = ROOT / "docs" / "container.json"
DOC = ROOT / "docs" / "container.md"
SITE_PACKAGES = "/app/.venv/lib/python3.11/site-packages"

pytestmark = pytest.mark.serve


def record(**entries: object) -> None:
    """Merge `entries` into docs/container.json."""
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(entries)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


@pytest.fixture(scope="module")
def launcher() -> Iterator[Buildah]:
    if not available():
        pytest.fail("the container test runs the image with buildah: apt-get install -y buildah")
    if not image_config(IMAGE):
        pytest.fail(f"no image {IMAGE}: run `make container`")
    started = Buildah(IMAGE)
    yield started
    started.close()


@pytest.fixture(scope="module")
def whole(launcher: Buildah, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The whole Bento in one container (the entrypoint without arguments: `bentoml serve`): its
    start-up time and its answers, taken before the container is stopped to free the two cores."""
    role = Role("bento", free_port(), tmp_path_factory.mktemp("whole") / "bento.log")
    launcher.run(role, [], {"BENTOML_HOST": "127.0.0.1", "BENTOML_PORT": str(role.port)})
    try:
        startup = role.wait_ready()
        answers = {
            "startup_s": round(startup, 1),
            "detections": detect(role.url),
            "models": httpx.get(f"{role.url}/models", timeout=30).json(),
            "demo": httpx.get(f"{role.url}/demo/", timeout=30),
            "metrics": httpx.get(f"{role.url}/metrics", timeout=30).text,
            "livez": httpx.get(f"{role.url}/livez", timeout=10).status_code,
        }
    finally:
        role.stop()
    answers["leftovers"] = launcher.leftovers()
    return answers


def test_whole_bento_serves_in_one_container(whole: dict) -> None:
    labels = Counter(label for label, _ in whole["detections"])
    assert labels["bus"] >= 1 and labels["person"] >= 4, labels
    catalog = {entry.name for entry in load_catalog().models}
    assert {m["name"] for m in whole["models"]["models"]} == catalog
    assert whole["demo"].status_code == 200 and "text/html" in whole["demo"].headers["content-type"]
    assert whole["livez"] == 200
    assert re.search(r"^bentoml_service_request_total", whole["metrics"], re.M), whole["metrics"][:2000]
    assert re.search(r"^yolo_toys_", whole["metrics"], re.M), whole["metrics"][:2000]
    assert not whole["leftovers"], whole["leftovers"]
    record(
        whole_bento={
            "startup_s": whole["startup_s"],
            "detect_bus_jpg": dict(labels),
            "models_loaded": sorted(m["name"] for m in whole["models"]["models"] if m["loaded"]),
        }
    )


def test_image_size_is_recorded(launcher: Buildah) -> None:
    """Size per Dockerfile step and the largest parts of the virtual environment, into the docs."""
    steps = layers(IMAGE)
    with mounted(IMAGE) as root:
        du = subprocess.run(["du", "-sb", *(str(p) for p in (root / SITE_PACKAGES.lstrip("/")).iterdir())],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    packages = sorted(((int(n), Path(p).name) for n, p in (line.split("\t") for line in du.splitlines())), reverse=True)
    total = sum(size for _, size in steps)
    record(
        image=IMAGE,
        image_id=image_config(IMAGE)["FromImageID"][:12],
        measured=datetime.date.today().isoformat(),
        engine=subprocess.run(["buildah", "--version"], capture_output=True, text=True).stdout.strip(),
        size_bytes=total,
        layers=[{"step": " ".join(step.split()), "bytes": size} for step, size in steps if size > 1_000_000],
        site_packages_top=[{"package": name, "bytes": size} for size, name in packages[:12]],
        site_packages_bytes=sum(size for size, _ in packages),
    )
    write_table()
    assert total > 0


def test_three_roles_answer_as_the_whole_bento(launcher: Buildah, whole: dict, tmp_path: Path) -> None:
    with cluster(role_specs("cpu"), {}, tmp_path, launcher) as roles:
        for role in [roles.front, *(r for rs in roles.runners.values() for r in rs)]:
            for probe in ("/livez", "/readyz"):
                assert httpx.get(f"{role.url}{probe}", timeout=10).status_code == 200, (role.name, probe)
        assert detect(roles.front.url) == whole["detections"]
        assert httpx.get(f"{roles.front.url}/models", timeout=30).json() == whole["models"]
    assert not launcher.leftovers()
    record(roles="each role's /livez and /readyz 200; /detect (bus.jpg) and /models equal to the whole Bento's")


def test_a_killed_runner_replica_costs_no_request(launcher: Buildah, tmp_path: Path) -> None:
    with cluster(role_specs("cpu"), {}, tmp_path, launcher, replicas={"ultralytics": 2}) as replicated:
        summary = killed_replica_costs_no_request(replicated)
    assert not launcher.leftovers()
    print(summary)
    record(killed_replica=summary)


def describe(step: str, first: bool) -> str:
    """A Dockerfile step as a table cell: which install or copy made the layer."""
    if first:
        return "base image (python:3.11-slim)"
    if copy := re.match(r"COPY \S+ in (\S+)", step):
        return f"COPY {copy[1]}" + (" (the Bento: code, models)" if copy[1] == "./" else "")
    if "uv --directory" in step:
        return "uv pip install -r env/python/requirements.txt"
    if install := re.search(r"apt-get install ((-\S+ |Dpkg\S+ )*)(.*)", step):
        return "apt-get install " + install[3]
    return step[:60]


def write_table() -> None:
    """The measured table of docs/container.md, between its markers, from docs/container.json."""
    results = json.loads(RESULTS.read_text())
    gb = 1e9
    rows = [
        ("image", f"`{results['image']}` ({results['image_id']}), {results['engine']}, {results['measured']}"),
        ("size (uncompressed layers)", f"{results['size_bytes'] / gb:.2f} GB"),
        *(
            (f"layer: {describe(layer['step'], i == 0)}", f"{layer['bytes'] / gb:.2f} GB")
            for i, layer in enumerate(results["layers"])
        ),
        ("of which site-packages", f"{results['site_packages_bytes'] / gb:.2f} GB"),
        *((f"site-packages: `{p['package']}`", f"{p['bytes'] / gb:.2f} GB") for p in results["site_packages_top"][:6]),
    ]
    if "whole_bento" in results:
        rows.append(("start-up, container start to /readyz 200", f"{results['whole_bento']['startup_s']} s"))
    rows = [(what.replace("|", r"\|"), value) for what, value in rows]  # a `|` in a cell ends it
    table = "\n".join(["| what | measured |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])
    begin, end = "<!-- container-test:begin -->", "<!-- container-test:end -->"
    text = DOC.read_text()
    if begin in text and end in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + table + "\n" + text[text.index(end) :]
        DOC.write_text(text)
