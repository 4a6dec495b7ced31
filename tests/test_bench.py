"""The benchmark's own logic: core split, percentiles, target ratios and the report it writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import cpu_set, split_cores
from bench.loadgen import percentiles


def point(c: int, throughput: float, p50: float, p99: float, failures: int = 0) -> dict:
    return {"concurrency": c, "seconds": 10.0, "requests": int(throughput * 10), "throughput": throughput,
            "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "mean_ms": p50, "failures": failures,
            "failures_warmup": 0, "statuses": {"200": int(throughput * 10)}}  # fmt: skip


RESULTS = {
    "date": "2026-11-21T00:00:00+00:00",
    "command": "python -m bench",
    "machine": {"cpu": "test cpu", "cores": 2, "memory_gb": 1.0, "gpu": None, "server_cpus": "0",
                "client_cpus": "1", "python": "3.11", "versions": {"bentoml": "1.4.39"}},
    "settings": {"seconds": 10.0, "warmup": 5.0, "concurrency": [1, 16], "batches": [1, 4]},
    "models": {"m": {
        "label": "a model", "route": "/detect",
        "limit": [{"batch": 1, "images": 100, "seconds": 10.0, "throughput": 10.0, "p50_ms": 100.0, "p99_ms": 110.0},
                  {"batch": 4, "images": 120, "seconds": 10.0, "throughput": 12.0, "p50_ms": 330.0, "p99_ms": 340.0}],
        "served": [point(1, 9.0, 104.0, 120.0),
                   {**point(16, 11.5, 1300.0, 1400.0), "cpu_ms_per_request": {"yolo_toys": 6.5, "ultralytics": 80.25}}],
        "hardware": [{"hint": "latency", "cpus": "0", "throughput": 23.0, "median_ms": 40.0},
                     {"hint": "throughput", "cpus": "0", "throughput": 25.0, "median_ms": 70.0}],
        "baseline": [point(1, 9.5, 101.0, 115.0), point(16, 9.0, 1700.0, 2000.0)],
        "litserve": [point(1, 9.8, 100.0, 112.0), point(16, 10.0, 1600.0, 1800.0)],
    }},
    "soak": {"model": "m", **point(16, 11.0, 1400.0, 1500.0, failures=1)},
}  # fmt: skip


def test_ratios_compare_best_served_with_best_limit_and_c16_with_the_baseline() -> None:
    r = report.ratios(RESULTS["models"]["m"])
    assert r["saturation"] == pytest.approx(11.5 / 12.0)
    assert (r["served_best_c"], r["limit_best_batch"]) == (16, 4)
    assert r["p50_gap_ms"] == pytest.approx(4.0)  # against the batch-1 limit
    assert r["vs_baseline"] == pytest.approx(11.5 / 9.0)
    assert (r["p99_served"], r["p99_baseline"]) == (1400.0, 2000.0)
    assert (r["best_peer"], r["vs_best_peer"], r["p99_best_peer"]) == ("litserve", pytest.approx(1.15), 1800.0)
    assert r["vs_latency_hint"] == pytest.approx(11.5 / 23.0) and r["vs_throughput_hint"] == pytest.approx(11.5 / 25.0)


def test_targets_mark_what_is_met_and_what_is_missed() -> None:
    rows = {row.split("|")[2].strip().split(":")[0]: row for row in report.targets_rows(RESULTS)}
    assert "**0.958**" in rows["saturation"] and rows["saturation"].endswith("| met |")
    assert rows["p50 at c=1 minus in-process batch-1 p50"].endswith("| met |")
    assert rows["c=16"].endswith("| met |")  # 1.28x and a lower p99
    assert rows["failures at c=16 for 10 s (110 requests)"].endswith("**missed** |")  # one failure


def test_a_saturation_below_the_target_is_missed() -> None:
    slow = {**RESULTS, "models": {"m": {**RESULTS["models"]["m"], "served": [point(16, 11.0, 1300.0, 1400.0)]}}}
    [row] = [r for r in report.targets_rows(slow) if "saturation" in r]
    assert "**0.917**" in row and row.endswith("**missed** |")


def test_report_writes_markdown_and_one_plot_per_model(tmp_path: Path) -> None:
    report.write(RESULTS, tmp_path)
    text = (tmp_path / "benchmarks.md").read_text()
    assert "python -m bench" in text and "test cpu" in text and "no GPU" in text
    assert "| YOLO-Toys | c=16 | 11.50 |" in text and "| hand-written FastAPI | c=1 | 9.50 |" in text
    assert "| benchmark_app, latency hint, cores 0 | inference only | 23.00 | 40.0 |" in text
    assert "| 0 | yolo_toys 6.5, ultralytics 80.2 |" in text and "| LitServe | c=16 | 10.00 |" in text
    assert "best peer, c=16: served / LitServe; p99 | **1.15x**; 1400 vs 1800 ms" in text
    assert "served / benchmark_app, throughput hint (inference only) | 11.50 / 25.00 = **0.460**" in text
    assert (tmp_path / "bench" / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_quick_summary_names_the_hardware_limit() -> None:
    summary = report.quick_summary(RESULTS)
    assert "served/limit = 0.958" in summary and "served/benchmark_app latency hint = 0.500 (23.00/s)" in summary
    assert "CPU ms/request at c=16: yolo_toys 6.5, ultralytics 80.2" in summary
    assert "served/best peer (LitServe) at c=16 = 1.150" in summary
