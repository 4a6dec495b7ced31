"""The benchmark's own logic: core split, percentiles, rounds, target ratios and the report it writes; the
plain BentoML peer's detections against the hand-written baseline's; the count-bound load and `/batch`."""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bench import multi, phases, report
from bench.__main__ import cpu_set, split_cores
from bench.loadgen import Upload, counted, percentiles
from bench.rounds import Server, rotated
from models.catalog import weights_dir


def point(c: int, throughput: float, p50: float, p99: float, failures: int = 0) -> dict:
    return {"concurrency": c, "seconds": 10.0, "requests": int(throughput * 10), "throughput": throughput,
            "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "mean_ms": p50, "failures": failures,
            "failures_warmup": 0, "statuses": {"200": int(throughput * 10)}}  # fmt: skip


def a_round(served16: float, peer16: float, latency_hint: float = 12.5) -> dict:
    """One round of model `m`: the limit, benchmark_app, YOLO-Toys and two peers."""
    return {
        "limit": [{"batch": 1, "images": 100, "seconds": 10.0, "throughput": 10.0, "p50_ms": 100.0, "p99_ms": 110.0},
                  {"batch": 4, "images": 120, "seconds": 10.0, "throughput": 12.0, "p50_ms": 330.0, "p99_ms": 340.0}],
        "forward": [],
        "hardware": [{"hint": "latency", "cpus": "0", "throughput": latency_hint, "median_ms": 40.0},
                     {"hint": "throughput", "cpus": "0", "throughput": 25.0, "median_ms": 70.0}],
        "served": [{**point(1, 9.0, 104.0, 120.0), "idle_cpu_pct": {"baseline": 0.1, "litserve": 0.3}},
                   {**point(16, served16, 1300.0, 1400.0), "idle_cpu_pct": {"baseline": 0.2, "litserve": 0.4},
                    "cpu_ms_per_request": {"yolo_toys": 6.5, "ultralytics": 80.25}}],
        "baseline": [point(1, 9.5, 101.0, 115.0), point(16, 9.0, 1700.0, 2000.0)],
        "litserve": [point(1, 9.8, 100.0, 112.0), point(16, peer16, 1600.0, 1800.0)],
        "order": ["served", "baseline", "litserve"],
    }  # fmt: skip


RESULTS = {
    "date": "2026-11-21T00:00:00+00:00",
    "command": "python -m bench",
    "machine": {"cpu": "test cpu", "cores": 2, "memory_gb": 1.0, "gpu": None, "server_cpus": "0",
                "client_cpus": "1", "python": "3.11", "versions": {"bentoml": "1.4.39"}},
    "settings": {"seconds": 10.0, "warmup": 2.0, "per_client_warmup": 0.05, "rounds": 3, "concurrency": [1, 16],
                 "peer_concurrency": [1, 16], "batches": [1, 4]},
    "phases_s": {"setup": 30, "rounds m": 600},
    "models": {"m": {
        "label": "a model", "route": "/detect", "servers_rss_mb": {"served": 900, "baseline": 400, "litserve": 700},
        "rounds": [a_round(11.5, 10.0), a_round(12.0, 10.0), a_round(11.0, 10.0)],
        "multi": {"available": False, "images": 16, "rounds": [[
            {"mode": multi.MODES[1], "images": 16, "seconds": 2.0, "throughput": 8.0, "statuses": {"200": 16}},
            {"mode": multi.MODES[2], "images": 16, "seconds": 1.0, "throughput": 16.0, "statuses": {"200": 16}}]]},
    }},
    "soak": {"model": "m", **point(16, 11.0, 1400.0, 1500.0, failures=1)},
    "memory": {"model": "m", "concurrency": 16, "requests": 10000, "first": 1000, "rss_first_mb": 1000.0,
               "rss_end_mb": 1030.0, "growth_pct": 3.0, "by_process_first_mb": {"ultralytics": 600.0},
               "by_process_end_mb": {"ultralytics": 625.0}, "failures": 0, "seconds": 400.0},
    "both_cores": {"model": "m", "cpus": "0,1", "concurrency": 16, "rounds": [
        {"served": [point(16, 21.0, 700.0, 800.0)], "hardware": [{"hint": "throughput", "cpus": "0,1",
                                                                   "throughput": 25.0, "median_ms": 70.0}]},
        {"served": [point(16, 19.0, 700.0, 800.0)], "hardware": [{"hint": "throughput", "cpus": "0,1",
                                                                   "throughput": 25.0, "median_ms": 70.0}]}]},
}  # fmt: skip


def rows_by_target(results: dict) -> dict[str, str]:
    return {row.split("|")[2].strip().split(":")[0]: row for row in report.targets_rows(results)}


def test_ratios_are_per_round_against_that_rounds_limits_and_best_peer() -> None:
    r = report.per_round(RESULTS["models"]["m"])[0]
    assert r["saturation"] == pytest.approx(11.5 / 12.0)
    assert (r["served_best_c"], r["limit_best_batch"]) == (16, 4)
    assert r["p50_ratio"] == pytest.approx(1.04) and r["p50_gap_ms"] == pytest.approx(4.0)  # the batch-1 limit
    assert (r["best_peer"], r["vs_best_peer"], r["p99_served"], r["p99_best_peer"]) == (
        "litserve", pytest.approx(1.15), 1400.0, 1800.0)  # fmt: skip
    assert r["vs_latency_hint"] == pytest.approx(11.5 / 12.5) and r["vs_throughput_hint"] == pytest.approx(11.5 / 25.0)


def test_a_target_is_met_only_when_every_round_holds_it() -> None:
    rows = rows_by_target(RESULTS)
    assert rows["served / in-process limit (best of each)"].endswith("**missed** |")  # 0.958, 1.000, 0.917
    assert "0.958 · 1.000 · 0.917 (median **0.958**)" in rows["served / in-process limit (best of each)"]
    assert rows["c=16"].endswith("**missed** |")  # 1.15x, 1.20x, then 1.10x < 1.15x
    assert "1.15x vs LitServe, p99 1400 vs 1800 ms" in rows["c=16"]
    assert rows["p50 at c=1 / in-process batch-1 p50"].endswith("| met |")  # 1.04x every round
    assert rows["served / benchmark_app, latency hint (inference only)"].endswith("| met |")  # >= 0.85 each round
    assert rows["both cores (0,1)"].endswith("**missed** |") and "0.840 · 0.760" in rows["both cores (0,1)"]
    assert rows["failures at c=16 for 10 s (110 requests)"].endswith("**missed** |")  # one failure
    assert rows["RSS growth from request 1000 to 10000 (c=16)"].endswith("| met |")


def test_every_round_above_the_goal_is_met() -> None:
    fast = {**RESULTS, "models": {"m": {**RESULTS["models"]["m"], "rounds": [a_round(12.0, 10.0)] * 3}}}
    rows = rows_by_target(fast)
    assert rows["c=16"].endswith("| met |") and rows["served / in-process limit (best of each)"].endswith("| met |")


def test_report_writes_medians_spreads_sections_and_one_plot_per_model(tmp_path: Path) -> None:
    report.write(RESULTS, tmp_path)
    text = (tmp_path / "benchmarks.md").read_text()
    assert "python -m bench" in text and "test cpu" in text and "no GPU" in text
    assert "| YOLO-Toys | c=16 | 11.50 (11.00-12.00) |" in text
    assert "| hand-written FastAPI | c=1 | 9.50 (9.50-9.50) |" in text
    assert "| benchmark_app, latency hint, cores 0 | inference only | 12.50 (12.50-12.50) | 40.0 |" in text
    assert "| 0 | yolo_toys 6.5, ultralytics 80.2 |" in text and "| LitServe | c=16 | 10.00 (10.00-10.00) |" in text
    assert "at most 0.6 % of a core" in text and "2.0 GB (m)" in text  # the idle servers, measured
    assert "each idle, median: hand-written FastAPI 0.15 %, LitServe 0.35 %" in text
    assert "one /batch request: not available (404)" in text and "all at once 16.00 (16.00-16.00) images/s" in text
    assert "1000 -> 1030 MB (+3.00 %)" in text and "| 1 | 21.00 | 800 | 25.00 |" in text
    assert (tmp_path / "bench" / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_summary_prints_each_round_and_the_spread() -> None:
    summary = report.quick_summary(RESULTS)
    assert "round 1: served/limit 0.958" in summary and "round 3: served/limit 0.917" in summary
    assert "served/benchmark_app latency hint 0.920 (12.50/s)" in summary
    assert "served/best peer (LitServe) at c=16 1.150" in summary
    assert "median (min-max): served/limit 0.958 (0.917-1.000)" in summary
    assert "CPU ms/request at c=16 (median): yolo_toys 6.5, ultralytics 80.2" in summary


def test_the_order_turns_each_round() -> None:
    servers = [Server(k, "", "", "/detect", {}, [1]) for k in ("served", "baseline", "litserve")]
    orders = [[s.key for s in rotated(servers, turn)] for turn in range(3)]
    assert orders == [["served", "baseline", "litserve"], ["baseline", "litserve", "served"],
                      ["litserve", "served", "baseline"]]  # fmt: skip


def test_percentiles() -> None:
    values = percentiles([float(v) for v in range(1, 101)])
    assert values["p50_ms"] == pytest.approx(50.5) and values["p99_ms"] == pytest.approx(99.01)
    assert percentiles([])["p99_ms"] == 0.0


def test_cores_are_split_between_server_and_load() -> None:
    assert cpu_set("0-2,5") == {0, 1, 2, 5}
    assert split_cores("3", "4") == ("3", "4")
    cores = sorted(os.sched_getaffinity(0))
    server, client = split_cores(None, None)
    assert cpu_set(server) | cpu_set(client) == set(cores) and not cpu_set(server) & cpu_set(client)
    assert len(cpu_set(client)) == max(1, len(cores) // 4)


@pytest.fixture
def detect_only() -> Iterator[str]:
    """A real HTTP server with `/detect` and no `/batch`, on a thread of its own."""
    async def detect(request: web.Request) -> web.Response:
        await request.post()
        return web.json_response({"detections": []})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/detect", detect)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.run_until_complete(runner.cleanup())


def test_counted_load_sends_exactly_n_and_batch_is_not_available_without_the_route(detect_only: str) -> None:
    p = counted(detect_only + "/detect", [Upload("image", "a.jpg", b"x")], 4, 25)
    assert (p.requests, p.failures, p.statuses) == (25, 0, {"200": 25})
    pictures = [("bus.jpg", b"x"), ("zidane.jpg", b"y")]
    absent = multi.measure(multi.MODES[0], detect_only, "/detect", pictures, "m")
    assert not multi.available(absent) and absent.throughput == 0.0
    together = multi.measure(multi.MODES[2], detect_only, "/detect", pictures, "m")
    assert multi.available(together) and together.statuses == {"200": 16} and together.throughput > 0
    phase = phases.multi_images(Server("served", detect_only, "", "/detect", {"model": "m"}, []), 2, lambda _: None)
    assert not phase["available"] and [[p["mode"] for p in r] for r in phase["rounds"]] == [
        [multi.MODES[1], multi.MODES[2]], [multi.MODES[1], multi.MODES[2]]]  # the bench goes on without /batch


def test_the_plain_bentoml_peer_finds_what_the_baseline_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    """BentoML's YOLO example (bench/bentoml_app.py) and the hand-written FastAPI app, same model, bus.jpg."""
    from fastapi.testclient import TestClient
    from ultralytics.utils import ASSETS

    shared = weights_dir()
    if shared is None:
        pytest.fail("no pretrained weights: put ../shared/weights beside the project or set YOLO_TOYS_WEIGHTS")
    monkeypatch.setenv("BASELINE_MODEL", str(shared / "yolov8n_int8_openvino_model"))
    from bench.bentoml_app import BentoYolo

    [ours] = BentoYolo.inner().detect([ASSETS / "bus.jpg"])
    baseline = importlib.import_module("bench.baseline_app")
    answer = TestClient(baseline.app).post("/detect", files={"image": ("bus.jpg", (ASSETS / "bus.jpg").read_bytes())})
    theirs = answer.json()["detections"]
    assert len(ours) == len(theirs) >= 4
    for a, b in zip(ours, theirs, strict=True):
        assert (a["class"], a["name"]) == (b["class_id"], b["label"])
        assert a["confidence"] == pytest.approx(b["score"], abs=1e-4)
        assert [a["box"][k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(b["box"], abs=0.01)
