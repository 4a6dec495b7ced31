"""The desired state file (models/state.py), version policies and `name:version`: no server needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.catalog import ModelEntry, VersionPolicy
from models.state import ModelWish, SlotReport, StateFile, WorkerReport
from runners.serving import aggregate
from yolo_toys.errors import ServiceError
from yolo_toys.front import split_version


def test_version_policies_choose_as_triton_does() -> None:
    stored = [1, 2, 3, 4]
    assert VersionPolicy().select(stored) == [4]
    assert VersionPolicy(kind="latest", count=2).select(stored) == [3, 4]
    assert VersionPolicy(kind="all").select(stored) == stored
    assert VersionPolicy(kind="specific", versions=[1, 3, 9]).select(stored) == [1, 3]
    entry = ModelEntry.model_validate({"name": "m", "family": "ultralytics", "task": "detect", "sources": [{"hub": "m.pt"}],
                                       "version_policy": {"kind": "latest", "count": 2}})  # fmt: skip
    assert entry.version_policy.count == 2


def test_updates_are_generations_kept_on_disk(tmp_path: Path) -> None:
    state = StateFile(tmp_path)
    assert state.read().generation == 0 and not state.changed()
    written = state.update(lambda d: d.models.__setitem__("yolo11n", ModelWish(versions=[2], default=2)))
    assert written.generation == 1
    other = StateFile(tmp_path)  # another process
    assert other.read().wish("yolo11n").default == 2
    state.update(lambda d: d.models["yolo11n"].versions.append(3))
    assert other.changed() and other.read().generation == 2 and other.read().wish("yolo11n").versions == [2, 3]
    assert not other.changed()


def test_reports_of_dead_workers_are_dropped(tmp_path: Path) -> None:
    state = StateFile(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state.report("ultralytics", WorkerReport(pid=int(dead.stdout), generation=3))
    state.report("ultralytics", WorkerReport(pid=os.getpid(), generation=4))
    assert [r.pid for r in state.reports("ultralytics")] == [os.getpid()]
    assert len(list((tmp_path / "workers").glob("*.json"))) == 1


def test_a_version_state_over_workers() -> None:
    ready, loading = SlotReport(state="ready"), SlotReport(state="loading")
    assert aggregate([ready, ready]) == ("ready", None, "2/2")
    assert aggregate([ready, loading]) == ("loading", None, "1/2")
    assert aggregate([SlotReport(state="failed", reason="bad"), ready])[:2] == ("failed", "bad")
    assert aggregate([SlotReport(state="unloaded")]) == ("unloaded", None, "1/1")


@pytest.mark.parametrize(("name", "expected"), [("yolo11n", ("yolo11n", None)), ("yolo11n:2", ("yolo11n", 2)),
                                                (None, (None, None)), ("a:b:12", ("a:b", 12))])  # fmt: skip
def test_a_request_names_a_version_after_a_colon(name: str | None, expected: tuple) -> None:
    assert split_version(name) == expected


@pytest.mark.parametrize("name", ["yolo11n:", "yolo11n:0", "yolo11n:x", ":3", "yolo11n:-1"])
def test_a_bad_version_is_a_400(name: str) -> None:
    with pytest.raises(ServiceError) as raised:
        split_version(name)
    assert raised.value.status == 400 and raised.value.error == "invalid model version"
