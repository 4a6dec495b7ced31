"""docs/benchmarks.md and its plots from the JSON that `python -m bench` writes.

    python -m bench.report docs/benchmarks.json   # re-render without re-measuring
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGETS = {"saturation": 0.95, "p50_gap_ms": 5.0, "vs_baseline": 1.2, "baseline_c": 16}
PEERS = {"baseline": "hand-written FastAPI", "litserve": "LitServe"}  # key in the results -> what it is


def _best(points: list[dict], key: str = "throughput") -> dict:
    return max(points, key=lambda p: p[key])


def _at(points: list[dict], c: int) -> dict | None:
    return next((p for p in points if p["concurrency"] == c), None)


def ratios(model: dict) -> dict:
    """The issue's targets for one model, measured in this run."""
    limit, served = model["limit"], model["served"]
    best_limit, best_served = _best(limit), _best(served)
    out = {
        "limit_best": best_limit["throughput"], "limit_best_batch": best_limit["batch"],
        "served_best": best_served["throughput"], "served_best_c": best_served["concurrency"],
        "saturation": best_served["throughput"] / best_limit["throughput"],
    }  # fmt: skip
    for point in model.get("hardware", []):  # OpenVINO's benchmark_app: the hardware's limit
        out[f"vs_{point['hint']}_hint"] = best_served["throughput"] / point["throughput"]
        out[f"{point['hint']}_hint"] = point["throughput"]
    b1, c1 = next((p for p in limit if p["batch"] == 1), None), _at(served, 1)
    if b1 and c1:
        out["p50_gap_ms"] = c1["p50_ms"] - b1["p50_ms"]
    base, ours = _at(model.get("baseline", []), TARGETS["baseline_c"]), _at(served, TARGETS["baseline_c"])
    if base and ours:
        out["vs_baseline"] = ours["throughput"] / base["throughput"] if base["throughput"] else float("inf")
        out["p99_served"], out["p99_baseline"] = ours["p99_ms"], base["p99_ms"]
    peers = {key: at for key in PEERS if (at := _at(model.get(key, []), TARGETS["baseline_c"]))}
    if peers and ours:
        best = max(peers, key=lambda key: peers[key]["throughput"])
        out["best_peer"], out["p99_best_peer"] = best, peers[best]["p99_ms"]
        out["vs_best_peer"] = ours["throughput"] / peers[best]["throughput"] if peers[best]["throughput"] else float("inf")
    return out


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def targets_rows(results: dict) -> list[str]:
    rows = []
    for name, model in results["models"].items():
        r = ratios(model)
        rows.append(f"| {name} | saturation: served / limit | {r['served_best']:.2f} / {r['limit_best']:.2f} img/s "
                    f"(c={r['served_best_c']} vs batch {r['limit_best_batch']}) = **{r['saturation']:.3f}** | "
                    f">= {TARGETS['saturation']} | {_mark(r['saturation'] >= TARGETS['saturation'])} |")
        for hint in ("latency", "throughput"):
            if f"vs_{hint}_hint" in r:
                rows.append(f"| {name} | served / benchmark_app, {hint} hint (inference only) | {r['served_best']:.2f} / "
                            f"{r[f'{hint}_hint']:.2f} = **{r[f'vs_{hint}_hint']:.3f}** | for information | |")
        if "p50_gap_ms" in r:
            rows.append(f"| {name} | p50 at c=1 minus in-process batch-1 p50 | **{r['p50_gap_ms']:+.1f} ms** | "
                        f"<= {TARGETS['p50_gap_ms']:.0f} ms | {_mark(r['p50_gap_ms'] <= TARGETS['p50_gap_ms'])} |")
        if "vs_baseline" in r:
            ok = r["vs_baseline"] >= TARGETS["vs_baseline"] and r["p99_served"] < r["p99_baseline"]
            rows.append(f"| {name} | c={TARGETS['baseline_c']}: served / baseline throughput; p99 | "
                        f"**{r['vs_baseline']:.2f}x**; {r['p99_served']:.0f} vs {r['p99_baseline']:.0f} ms | "
                        f">= {TARGETS['vs_baseline']}x, lower p99 | {_mark(ok)} |")
        if "vs_best_peer" in r:
            rows.append(f"| {name} | best peer, c={TARGETS['baseline_c']}: served / {PEERS[r['best_peer']]}; p99 | "
                        f"**{r['vs_best_peer']:.2f}x**; {r['p99_served']:.0f} vs {r['p99_best_peer']:.0f} ms | "
                        "for information | |")
    soak = results.get("soak")
    if soak:
        failures = soak["failures"] + soak["failures_warmup"]
        rows.append(f"| {soak['model']} | failures at c={soak['concurrency']} for {soak['seconds']:.0f} s "
                    f"({soak['requests']} requests) | **{failures}** | 0 | {_mark(failures == 0)} |")
    return rows


def targets_text(results: dict) -> str:
    return "\n".join(["| model | target | measured | goal | |", "|---|---|---|---|---|", *targets_rows(results)])


def quick_summary(results: dict) -> str:
    lines = []
    for name, model in results["models"].items():
        r = ratios(model)
        lines.append(f"{name}: served/limit = {r['saturation']:.3f} ({r['served_best']:.2f} img/s at c="
                     f"{r['served_best_c']} vs {r['limit_best']:.2f} img/s at batch {r['limit_best_batch']}), "
                     f"p50 gap at c=1 {r.get('p50_gap_ms', float('nan')):+.1f} ms"
                     + "".join(f"; served/benchmark_app {h} hint = {r[f'vs_{h}_hint']:.3f} ({r[f'{h}_hint']:.2f}/s)"
                               for h in ("latency", "throughput") if f"vs_{h}_hint" in r)
                     + (f"; served/best peer ({PEERS[r['best_peer']]}) at c={TARGETS['baseline_c']} = "
                        f"{r['vs_best_peer']:.3f}" if "vs_best_peer" in r else "")
                     + "".join(f"; CPU ms/request at c={p['concurrency']}: {_cpu(p)}" for p in model["served"]
                               if p.get("cpu_ms_per_request")))
    return "\n".join(lines)


def plot(name: str, model: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for key, colour, label in (("served", "tab:blue", "YOLO-Toys (served)"), ("litserve", "tab:green", "LitServe"),
                               ("baseline", "tab:orange",
                                                                               "hand-written FastAPI")):
        points = model.get(key)
        if not points:
            continue
        cs = [p["concurrency"] for p in points]
        ax_t.plot(cs, [p["throughput"] for p in points], "o-", color=colour, label=label)
        ax_l.plot(cs, [p["p50_ms"] for p in points], "o-", color=colour, label=f"{label} p50")
        ax_l.plot(cs, [p["p99_ms"] for p in points], "s--", color=colour, label=f"{label} p99")
    b1 = next((p for p in model["limit"] if p["batch"] == 1), None)
    best = _best(model["limit"])
    ax_t.axhline(best["throughput"], color="black", ls=":", label=f"in-process limit (batch {best['batch']})")
    if b1 and b1 is not best:
        ax_t.axhline(b1["throughput"], color="grey", ls=":", label="in-process limit (batch 1)")
    if b1:
        ax_l.axhline(b1["p50_ms"], color="black", ls=":", label="in-process p50 (batch 1)")
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_ylabel("images / s")
    ax_t.set_ylim(bottom=0)
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency (ms)")
    fig.suptitle(model["label"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu(point: dict) -> str:
    return ", ".join(f"{k} {ms:.1f}" for k, ms in point.get("cpu_ms_per_request", {}).items())


def _table(model: dict) -> list[str]:
    rows = ["| what | load | img/s | p50 ms | p95 ms | p99 ms | failures | CPU ms per request |",
            "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in model["limit"]:
        rows.append(f"| in-process limit | batch {p['batch']} | {p['throughput']:.2f} | {p['p50_ms']:.1f} | | "
                    f"{p['p99_ms']:.1f} | | |")
    for p in model.get("hardware", []):
        rows.append(f"| benchmark_app, {p['hint']} hint, cores {p['cpus']} | inference only | {p['throughput']:.2f} | "
                    f"{p['median_ms']:.1f} | | | | |")
    for key, label in (("served", "YOLO-Toys"), *PEERS.items()):
        for p in model.get(key, []):
            rows.append(f"| {label} | c={p['concurrency']} | {p['throughput']:.2f} | {p['p50_ms']:.1f} | "
                        f"{p['p95_ms']:.1f} | {p['p99_ms']:.1f} | {p['failures'] + p['failures_warmup']} | {_cpu(p)} |")
    return rows


def write(results: dict, out: Path) -> None:
    plots = out / "bench"
    plots.mkdir(parents=True, exist_ok=True)
    m = results["machine"]
    cores = f"server and limit on cores {m['server_cpus']}, load generator on cores {m['client_cpus']}"
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`, see `bench/`); do not edit by hand. "
        "Re-render from the JSON with `python -m bench.report docs/benchmarks.json`.",
        "",
        f"- **Date:** {results['date']}; the whole run took {results.get('seconds_total', 0) / 60:.1f} min.",
        f"- **Command:** `{results['command']}`",
        f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB"
        + (f", {m['gpu']}" if m.get("gpu") else ", no GPU") + f"; {cores}.",
        "- **Software:** " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f", Python {m['python']}.",
        f"- **Load:** closed loop, each client sends the next request when the last returns; the photos "
        f"`bus.jpg` and `zidane.jpg` in turn; {results['settings']['warmup']:.0f} s warm-up (+0.1 s per client) "
        f"before each level, then {results['settings']['seconds']:.0f} s measured. Failures: any answer but 200.",
        "- **Limit:** the model called in-process on the server's cores, from JPEG bytes to result objects "
        "(decode, preprocess, inference, postprocess), one batch after the other.",
        "- **CPU per request:** user + system CPU time of each server process (the front `yolo_toys`, each runner; "
        "the baseline's one process) over a whole load level, warm-up included, divided by the requests sent in it.",
        "- **LitServe:** `bench/litserve_app.py`, the same model as LitServe's docs write an API (decode, predict, "
        "encode in a `LitAPI`, one inference worker, no batching), on the same cores.",
        "- **Baseline:** `bench/baseline_app.py`, the FastAPI app a user would write (one process, model "
        "loaded at start-up, decode and predict in a thread-pool handler behind a lock).",
        "",
        "## Targets",
        "",
        targets_text(results),
        "",
    ]
    for name, model in results["models"].items():
        plot(name, model, plots / f"{name}.png")
        lines += [f"## {model['label']}", "", f"`{model['route']}` with `model={name}`.", "",
                  f"![{name}](bench/{name}.png)", "", *_table(model), ""]  # fmt: skip
    (out / "benchmarks.md").write_text("\n".join(lines))


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks.json")
    write(json.loads(source.read_text()), source.parent)
