"""The locust load test runs against a real server and sees no failure."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Server

pytestmark = pytest.mark.serve


def test_locust_rest_load_has_no_failures(server: Server, test_env: dict[str, str], tmp_path: Path) -> None:
    locust = Path(sys.executable).parent / "locust"
    proc = subprocess.run(
        [str(locust), "-f", "locustfiles/rest.py", "--host", server.url, "--headless", "-u", "6", "-r", "6",
         "-t", "20s", "--csv", str(tmp_path / "run"), "--only-summary"],
        cwd=ROOT, env=test_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    with open(tmp_path / "run_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) >= 10, proc.stderr[-2000:]
    assert int(total["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()
    expected = {"/detect", "/segment", "/pose", "/classify", "/zero_shot_classify", "/caption", "/vqa", "/depth"}
    assert expected <= set(rows), sorted(rows)
    assert server.healthy()


def test_locust_websocket_streams_have_no_failures(server: Server, test_env: dict[str, str], tmp_path: Path) -> None:
    locust = Path(sys.executable).parent / "locust"
    proc = subprocess.run(
        [str(locust), "-f", "locustfiles/websocket.py", "--host", server.url, "--headless", "-u", "6", "-r", "6",
         "-t", "15s", "--csv", str(tmp_path / "ws"), "--only-summary"],
        cwd=ROOT, env={**test_env, "YOLO_TOYS_LOCUST_MODEL": "yolov8n"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    with open(tmp_path / "ws_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    results = rows["/ws/stream result"]
    assert int(results["Request Count"]) >= 12, proc.stderr[-2000:]
    assert int(results["Failure Count"]) == 0, (tmp_path / "ws_failures.csv").read_text()
    assert server.healthy()
