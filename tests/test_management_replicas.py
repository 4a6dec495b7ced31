"""Models managed at runtime across runner replicas: the front broadcasts each management call to every
ready replica of the model's family, each replica keeps its own desired state, and replicas that share
one model store store an uploaded artifact once (sha256).

The cluster is the manifests' roles (tests/manifests.py) as local processes (bench/cluster.py): a front
with an admin key, 2 Ultralytics runner replicas and 1 transformers runner, on a copy of the session's
model store (registrations add versions to it; the session's store stays as it is).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.cluster import Cluster, Role, cluster
from conftest import SHARED_WEIGHTS, bus_jpg
from manifests import RoleSpec, role_specs
from test_management import ADMIN, detect, manage, register, zipped

pytestmark = [pytest.mark.serve, pytest.mark.slow]


@pytest.fixture(scope="module")
def replicated(test_env: dict[str, str], imported: subprocess.CompletedProcess, tmp_path_factory) -> Iterator[Cluster]:
    where = tmp_path_factory.mktemp("managed_replicas")
    shutil.copytree(Path(test_env["BENTOML_HOME"]) / "models", where / "home" / "models", symlinks=True)
    specs = role_specs("cpu")  # a fresh dict; its RoleSpecs are replaced, never changed
    front = specs["front"]
    specs["front"] = RoleSpec(args=list(front.args), env={**front.env, "YOLO_TOYS_ADMIN_KEYS": ADMIN})
    env = {**test_env, "BENTOML_HOME": str(where / "home")}
    with cluster(specs, env, where / "logs", replicas={"ultralytics": 2}) as started:
        yield started


def shared_store(replicated: Cluster) -> Path:
    """The model store every server of the cluster uses (each home's `models` links to it)."""
    return (Path(replicated.env["front"]["BENTOML_HOME"]) / "models").resolve()


def stored_versions(store: Path, name: str) -> list[str]:
    """BentoML's version folders of `name` in a model store (not its `latest` file)."""
    return sorted(p.name for p in (store / name).iterdir() if p.is_dir() and (p / "model.yaml").is_file())


def on_replica(runner: Role, name: str = "yolo11n") -> dict:
    """The model as the replica itself says (its runner API `status`), not as the front sees it."""
    answer = httpx.post(f"{runner.url}/status", json={}, timeout=60)
    assert answer.status_code == 200, answer.text
    [found] = [m for m in answer.json() if m["name"] == name]
    return found


def states(detail: dict) -> dict[int, str]:
    return {v["version"]: v["state"] for v in detail["versions"]}


def assert_serving_version_2(replicated: Cluster) -> None:
    for runner in replicated.runners["ultralytics"]:
        detail = on_replica(runner)
        assert detail["default_version"] == 2 and states(detail) == {1: "unloaded", 2: "ready"}, (runner.url, detail)


def test_a_version_registered_through_the_front_reaches_every_replica_and_is_stored_once(
    replicated: Cluster, test_env: dict[str, str], tmp_path: Path
) -> None:
    store = shared_store(replicated)
    assert len(stored_versions(store, "yolo11n")) == 1
    export = zipped(SHARED_WEIGHTS / "yolov8n_int8_openvino_model", tmp_path / "yolov8n_int8_openvino_model.zip")
    registered = register(replicated.front, export, export.name, name="yolo11n", default="true")
    assert registered.status_code == 201, registered.text
    body = registered.json()
    assert body["version"] == 2 and "(on 2 of 2 replicas)" in body["message"], body
    assert body["model"]["default_version"] == 2, body["model"]
    assert_serving_version_2(replicated)
    assert len(stored_versions(store, "yolo11n")) == 2  # the second replica found the first one's version
    assert len(stored_versions(Path(test_env["BENTOML_HOME"]) / "models", "yolo11n")) == 1  # the session's store
    answers = [detect(replicated.front) for _ in range(12)]
    assert {(a["model"], a["version"]) for a in answers} == {("yolo11n", 2)}


def test_a_restarted_replica_comes_back_with_the_desired_state(replicated: Cluster) -> None:
    first = replicated.runners["ultralytics"][0]
    before = first.proc.pid
    first.stop()
    replicated.restart(first)
    replicated.wait_ready([first])
    replicated.front_sees(timeout=60)
    assert first.proc.pid != before
    detail = on_replica(first)
    assert detail["default_version"] == 2 and states(detail)[2] == "ready", detail
    assert_serving_version_2(replicated)
    assert len(stored_versions(shared_store(replicated), "yolo11n")) == 2
    answers = [detect(replicated.front) for _ in range(12)]
    assert {(a["model"], a["version"]) for a in answers} == {("yolo11n", 2)}


def test_unload_and_load_through_the_front_reach_every_replica(replicated: Cluster) -> None:
    unloaded = manage(replicated.front, "yolo11n", "unload")
    assert unloaded.status_code == 200, unloaded.text
    assert "(on 2 of 2 replicas)" in unloaded.json()["message"], unloaded.json()
    for runner in replicated.runners["ultralytics"]:
        detail = on_replica(runner)
        assert not detail["loaded"] and detail["default_version"] is None, (runner.url, detail)
        assert set(states(detail).values()) == {"unloaded"}, (runner.url, detail)
    refused = httpx.post(f"{replicated.front.url}/detect", files={"image": ("bus.jpg", bus_jpg())},
                         data={"model": "yolo11n"}, timeout=60)  # fmt: skip
    assert refused.status_code == 404 and refused.json()["error"] == "model not loaded", refused.text
    loaded = manage(replicated.front, "yolo11n", "load", version=2)
    assert loaded.status_code == 200, loaded.text
    assert "(on 2 of 2 replicas)" in loaded.json()["message"], loaded.json()
    assert loaded.json()["model"]["default_version"] == 2, loaded.json()
    assert_serving_version_2(replicated)
    answers = [detect(replicated.front, "yolo11n") for _ in range(12)]
    assert {(a["model"], a["version"]) for a in answers} == {("yolo11n", 2)}
