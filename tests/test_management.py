"""Models managed at runtime, against a real `bentoml serve` with admin keys and a 2-worker runner.

The server has its own copy of the model store (registrations add versions to it), a catalog of
yolo11n (the shared INT8 OpenVINO export) and two tiny transformers models behind a runner that
keeps one model loaded (`max_loaded_models: 1`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from conftest import ROOT, SHARED_WEIGHTS, Server, bus_jpg, serving
from load import Load, wait_for

pytestmark = [pytest.mark.serve, pytest.mark.slow]

ADMIN = "admin-key-for-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
TIMEOUT = httpx.Timeout(300, connect=10)


@pytest.fixture(scope="module")
def managed(test_env: dict[str, str], imported: subprocess.CompletedProcess, tmp_path_factory) -> Iterator[Server]:
    where = tmp_path_factory.mktemp("managed")
    store = Path(test_env["BENTOML_HOME"]) / "models"
    for name in ("yolo11n", "tiny-vit", "tiny-detr"):
        shutil.copytree(store / name, where / "home" / "models" / name, symlinks=True)
    test_catalog = yaml.safe_load(Path(test_env["YOLO_TOYS_CATALOG"]).read_text())
    catalog = {
        "runners": {"ultralytics": {"workers": 2, "gpu": 0}, "transformers": {"max_loaded_models": 1, "gpu": 0}},
        "models": [m for m in test_catalog["models"] if m["name"] in ("yolo11n", "tiny-vit", "tiny-detr")],
    }
    (where / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    env = {**test_env, "BENTOML_HOME": str(where / "home"), "YOLO_TOYS_CATALOG": str(where / "catalog.yaml"),
           "YOLO_TOYS_ADMIN_KEYS": ADMIN, "YOLO_TOYS_MAX_ARTIFACT_BYTES": str(64 * 2**20)}  # fmt: skip
    with serving(env, where / "serve.log") as server:
        yield server


def zipped(folder: Path, to: Path) -> Path:
    with zipfile.ZipFile(to, "w") as z:
        for file in sorted(folder.rglob("*")):
            z.write(file, Path(folder.name) / file.relative_to(folder))
    return to


def register(server: Server, artifact: Path | bytes, filename: str, **form: str) -> httpx.Response:
    data = artifact.read_bytes() if isinstance(artifact, Path) else artifact
    fields = {"family": "ultralytics", "task": "detect", **form}
    return httpx.post(f"{server.url}/models", data=fields, files={"artifact": (filename, data)}, headers=AUTH,
                      timeout=TIMEOUT)  # fmt: skip


def manage(server: Server, name: str, action: str, **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/models/{name}/{action}", json=body, headers=AUTH, timeout=TIMEOUT)


def model(server: Server, name: str) -> dict:
    response = httpx.get(f"{server.url}/models/{name}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def versions(server: Server, name: str) -> dict[int, dict]:
    return {v["version"]: v for v in model(server, name)["versions"]}


def detect(server: Server, model_name: str | None = None) -> dict:
    response = httpx.post(f"{server.url}/detect", files={"image": ("bus.jpg", bus_jpg())},
                          data={"model": model_name} if model_name else None, timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def labels(result: dict) -> list[tuple[str, float]]:
    return [(d["label"], round(d["score"], 2)) for d in result["detections"]]


def runner_workers(server: Server, family: str) -> list[psutil.Process]:
    port = server.url.rsplit(":", 1)[1]
    [supervisor] = [p for p in psutil.process_iter(["cmdline"]) if "serve" in (p.info["cmdline"] or [])
                    and port in (p.info["cmdline"] or [])]  # fmt: skip
    found = []
    for child in supervisor.children(recursive=True):
        try:
            if family in child.cmdline() and "--service-name" in child.cmdline():
                found.append(child)
        except psutil.Error:  # a worker just killed (a zombie until reaped)
            continue
    return found


class Clients(Load):
    """Load's clients and prober, but each answer kept as (started, status, version, labels): the clients
    send bus.jpg to /detect without naming a version."""

    def _client(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stopped.is_set():
                started = time.monotonic()
                try:
                    r = client.post(f"{self.url}/detect", files={"image": ("bus.jpg", bus_jpg())})
                    body = r.json()
                    row = (started, r.status_code, body.get("version"), labels(body) if r.status_code == 200 else body)
                except httpx.HTTPError as exc:
                    row = (started, 0, None, type(exc).__name__)
                self.rows.append(row)


# ---- access -----------------------------------------------------------------------------------------


def test_management_needs_an_admin_key(managed: Server, server: Server) -> None:
    no_admin = httpx.post(f"{server.url}/models/yolo11n/unload", json={}, timeout=30)
    assert no_admin.status_code == 403 and no_admin.json()["error"] == "model management disabled"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": ADMIN + "x"}):
        refused = httpx.post(f"{managed.url}/models/yolo11n/unload", json={}, headers=headers, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized", refused.text
    assert detect(managed)["version"] == 1  # nothing was unloaded
    assert httpx.get(f"{managed.url}/models", timeout=30).status_code == 200  # listing needs no admin key


# ---- bad artifacts ----------------------------------------------------------------------------------


def test_bad_artifacts_get_a_4xx_and_change_nothing(managed: Server, tmp_path: Path, hf_weights: dict) -> None:
    before = model(managed, "yolo11n")
    pose = zipped(SHARED_WEIGHTS / "yolov8n-pose_int8_openvino_model", tmp_path / "pose.zip")
    good = zipped(SHARED_WEIGHTS / "yolov8n_int8_openvino_model", tmp_path / "good.zip")
    cases = [
        (register(managed, good.read_bytes()[: good.stat().st_size // 2], "cut.zip", name="yolo11n"), 400, "corrupt artifact"),
        (register(managed, b"just some text\n", "notes.txt", name="yolo11n"), 415, "unsupported artifact"),
        (register(managed, b"\x80\x02}q\x00.", "model.pt", name="yolo11n"), 403, "pickle artifacts disabled"),
        (register(managed, pose, "pose.zip", name="yolo11n"), 422, "artifact does not fit"),  # pose weights, detect model
        (register(managed, zipped(hf_weights["tiny-vit"], tmp_path / "vit.zip"), "vit.zip", name="yolo11n"), 422,
         "wrong family for artifact"),
        (register(managed, good, "good.zip", name="yolo11n", task="segment"), 409, "model exists"),
        (register(managed, good, "good.zip", name="new-model", family="no-such-family"), 422, "unknown family"),
        (register(managed, good, "good.zip", name="Bad Name!"), 400, "invalid request"),
        (manage(managed, "yolo11n", "split", weights={"1": "lots"}), 400, "invalid request"),
        (register(managed, b"\0" * (65 * 2**20), "huge.onnx", name="yolo11n"), 413, "request too large"),
        (manage(managed, "yolo11n", "load", version=9), 404, "unknown version"),
        (manage(managed, "no-such-model", "load"), 404, "unknown model"),
    ]
    for response, status, error in cases:
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error", "detail"} and response.json()["error"] == error, response.text
    assert model(managed, "yolo11n") == before
    assert "new-model" not in {m["name"] for m in httpx.get(f"{managed.url}/models", timeout=30).json()["models"]}


# ---- a new version, an upgrade under load, every worker, a restart --------------------------------------


def same(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    """The same detections, scores to 0.011 (a batch of another size moves the third decimal)."""
    return len(got) == len(expected) and all(a == c and abs(b - d) <= 0.011 for (a, b), (c, d) in zip(got, expected, strict=True))


def test_upgrade_under_load_fails_no_request_and_every_answer_names_its_version(managed: Server, tmp_path: Path) -> None:
    v1 = labels(detect(managed, "yolo11n"))
    export = zipped(SHARED_WEIGHTS / "yolov8n_int8_openvino_model", tmp_path / "yolov8n_int8_openvino_model.zip")
    registered = register(managed, export, export.name, name="yolo11n")
    assert registered.status_code == 201, registered.text
    body = registered.json()
    assert body["version"] == 2 and body["model"]["default_version"] == 1  # loaded beside the default, not instead
    new = {v["version"]: v for v in body["model"]["versions"]}[2]
    assert (new["state"], new["workers"], new["source"]) == ("ready", "2/2", f"upload:{export.name}")
    assert len(new["sha256"]) == 64 and new["load_s"] > 0
    v2 = labels(detect(managed, "yolo11n:2"))
    assert not same(v1, v2), "the two versions must be told apart by their answers"

    with Clients(managed.url, clients=4) as clients:
        time.sleep(3)
        switched = manage(managed, "yolo11n", "default", version=2)
        switched_at = time.monotonic()
        time.sleep(3)
    assert switched.status_code == 200, switched.text
    failures = [row for row in clients.rows if row[1] != 200]
    assert clients.rows and not failures, failures[:5]
    for _, _, version, got in clients.rows:
        assert same(got, {1: v1, 2: v2}[version]), (version, got)
    assert {version for started, _, version, _ in clients.rows if started < switched_at - 2} == {1}
    after = [version for started, _, version, _ in clients.rows if started > switched_at]
    assert len(after) >= 8 and set(after) == {2}, after  # 4 clients over 2 workers: both serve version 2
    state = versions(managed, "yolo11n")
    assert (state[2]["state"], state[2]["workers"], state[2]["default"]) == ("ready", "2/2", True)
    assert (state[1]["state"], state[1]["workers"]) == ("unloaded", "2/2")  # unloaded once idle


def test_a_killed_worker_comes_back_to_the_desired_state(managed: Server) -> None:
    workers = runner_workers(managed, "ultralytics")
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)

    def back() -> bool:
        pids = {p.pid for p in runner_workers(managed, "ultralytics")}
        state = versions(managed, "yolo11n")
        return len(pids) == 2 and workers[0].pid not in pids and state[2]["workers"] == "2/2" and state[2]["state"] == "ready"

    assert wait_for(back, 180, every=1), versions(managed, "yolo11n")
    assert versions(managed, "yolo11n")[1]["state"] == "unloaded"
    assert {detect(managed)["version"] for _ in range(8)} == {2}


# ---- a traffic split, memory, the LRU cap ----------------------------------------------------------------


def version_counts(server: Server) -> Counter:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    counts: Counter = Counter()
    for line in text.splitlines():
        if line.startswith('yolo_toys_model_version_requests_total{model="yolo11n"'):
            counts[int(line.split('version="')[1].split('"')[0])] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_a_90_10_split_is_served_and_counted_per_version(managed: Server) -> None:
    split = manage(managed, "yolo11n", "split", weights={"1": 90, "2": 10})
    assert split.status_code == 200, split.text
    shown = {v["version"]: v for v in split.json()["model"]["versions"]}
    assert (shown[1]["weight"], shown[2]["weight"], shown[1]["state"], shown[1]["workers"]) == (90, 10, "ready", "2/2")
    before = version_counts(managed)
    answered = Counter(detect(managed)["version"] for _ in range(200))
    assert answered[1] + answered[2] == 200 and 5 <= answered[2] <= 40, answered
    after = version_counts(managed)
    assert {v: after[v] - before[v] for v in (1, 2)} == {1: answered[1], 2: answered[2]}
    assert 'yolo_toys_model_version_latency_seconds_count{model="yolo11n",version="2"}' in httpx.get(
        f"{managed.url}/metrics", timeout=30).text  # fmt: skip
    cleared = manage(managed, "yolo11n", "split", weights=None)
    assert cleared.status_code == 200 and cleared.json()["model"]["split"] is None
    assert {detect(managed)["version"] for _ in range(6)} == {2}


def rss(processes: list[psutil.Process]) -> int:
    return sum(p.memory_info().rss for p in processes)


def test_unloading_gives_the_memory_back(managed: Server) -> None:
    workers = runner_workers(managed, "ultralytics")
    assert manage(managed, "yolo11n", "unload", version=1).status_code == 200
    time.sleep(2)
    base = rss(workers)
    loaded = manage(managed, "yolo11n", "load", version=1)
    assert loaded.status_code == 200 and versions(managed, "yolo11n")[1]["memory_bytes"] > 0
    time.sleep(2)
    grown = rss(workers)
    assert manage(managed, "yolo11n", "unload", version=1).status_code == 200
    time.sleep(2)
    freed = grown - rss(workers)
    print(f"2 workers: {base / 2**20:.0f} MiB, loaded {grown / 2**20:.0f} MiB, unloaded {(grown - freed) / 2**20:.0f} MiB")
    assert grown - base > 20 * 2**20 and freed >= 0.6 * (grown - base), (base, grown, freed)
    assert detect(managed)["version"] == 2


def classify(server: Server, name: str) -> dict:
    response = httpx.post(f"{server.url}/classify", files={"image": ("bus.jpg", bus_jpg())}, data={"model": name}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def infer(server: Server, name: str) -> dict:
    return detect(server, name) if name == "tiny-detr" else classify(server, name)


def test_a_capped_runner_evicts_the_least_recently_used_and_loads_on_demand(managed: Server) -> None:
    state = {name: versions(managed, name)[1] for name in ("tiny-vit", "tiny-detr")}
    [cold] = [name for name, v in state.items() if v["state"] == "unloaded"]  # one place: one of them waits
    [warm] = [name for name in state if name != cold]
    assert state[cold]["reason"].startswith(("evicted", "not loaded yet")), state
    assert infer(managed, cold)["timings"]["load_ms"] > 0  # a cold start, in the result's timings
    assert infer(managed, cold)["timings"]["load_ms"] == 0
    assert versions(managed, warm)[1]["state"] == "unloaded" and "evicted" in versions(managed, warm)[1]["reason"]
    assert infer(managed, warm)["timings"]["load_ms"] > 0
    assert versions(managed, cold)[1]["state"] == "unloaded"


# ---- the CLI: an ONNX export and a transformers folder ---------------------------------------------------


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_TOYS_URL": server.url, "YOLO_TOYS_ADMIN_KEY": ADMIN}
    return subprocess.run([sys.executable, "-m", "models", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def onnx_export(random_weights: dict, tmp_path_factory) -> Path:
    """The random-weight yolov8n exported to ONNX by Ultralytics' own exporter."""
    from ultralytics import YOLO

    work = tmp_path_factory.mktemp("onnx")
    copy = shutil.copy2(random_weights["rand-yolov8n"], work / "rand-yolov8n.pt")
    return Path(YOLO(copy).export(format="onnx", imgsz=320, dynamic=True))


def test_the_cli_registers_an_onnx_export_loads_and_unloads_it(managed: Server, onnx_export: Path) -> None:
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    done = cli(managed, "register", str(onnx_export), "--name", "rand-onnx", "--family", "ultralytics", "--task", "detect")
    assert done.returncode == 0 and "stored as version 1" in done.stdout, done.stdout + done.stderr
    served = detect(managed, "rand-onnx")
    assert (served["model"], served["version"]) == ("rand-onnx", 1)
    expected = YOLO(str(onnx_export)).predict(str(ASSETS / "bus.jpg"), verbose=False)[0]
    assert len(served["detections"]) == len(expected.boxes)
    table = cli(managed, "versions", "rand-onnx")
    assert table.returncode == 0 and "ready" in table.stdout, table.stdout + table.stderr
    assert cli(managed, "unload", "rand-onnx").returncode == 0
    refused = httpx.post(f"{managed.url}/detect", files={"image": ("bus.jpg", bus_jpg())}, data={"model": "rand-onnx"},
                         timeout=60)  # fmt: skip
    assert refused.status_code == 404 and refused.json()["error"] == "model not loaded"
    assert cli(managed, "load", "rand-onnx").returncode == 0
    assert detect(managed, "rand-onnx")["version"] == 1
    wrong = cli(managed, "load", "rand-onnx", "--version", "7")
    assert wrong.returncode == 1 and "unknown version" in wrong.stderr


def test_the_cli_registers_a_transformers_folder(managed: Server, hf_weights: dict) -> None:
    done = cli(managed, "register", str(hf_weights["tiny-vit"]), "--name", "vit-uploaded", "--family", "transformers",
               "--task", "classify", "--hf-task", "image-classification")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = classify(managed, "vit-uploaded")
    assert (result["model"], result["version"]) == ("vit-uploaded", 1) and result["top_k"]
    listed = {m["name"]: m for m in httpx.get(f"{managed.url}/models", timeout=30).json()["models"]}
    assert listed["vit-uploaded"]["family"] == "transformers" and listed["vit-uploaded"]["loaded"]
