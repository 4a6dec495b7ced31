"""docs/benchmarks.md and its plots from the JSON that `python -m bench` writes.

    python -m bench.report docs/benchmarks.json   # re-render without re-measuring

Every figure was measured in rounds (bench/rounds.py): the tables give the median over the rounds and
the min-max spread, the targets each round's ratio; a target is met only when it holds in every round.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

TARGETS = {"saturation": 0.95, "latency_hint": 0.85, "p50_ratio": 1.1, "vs_best_peer": 1.15, "peer_c": 16,
           "both_cores": 0.8, "rss_growth_pct": 5.0}  # fmt: skip
PEERS = {"baseline": "hand-written FastAPI", "litserve": "LitServe", "bentoml": "BentoML's YOLO example"}
SERVERS = {"served": "YOLO-Toys", **PEERS}  # key in the results -> what it is
IDLE_OK_PCT = 3.0  # the idle servers' CPU share of a core under which keeping them up does not move a point
COLOURS = {"served": "tab:blue", "baseline": "tab:orange", "litserve": "tab:green", "bentoml": "tab:purple"}


def _best(points: list[dict], key: str = "throughput") -> dict:
    return max(points, key=lambda p: p[key])


def _at(points: list[dict], c: int) -> dict | None:
    return next((p for p in points if p["concurrency"] == c), None)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def ratios(rnd: dict) -> dict:
    """The issue's targets for one model in one round."""
    limit, served = rnd["limit"], rnd["served"]
    best_limit, best_served = _best(limit), _best(served)
    out = {
        "limit_best": best_limit["throughput"], "limit_best_batch": best_limit["batch"],
        "served_best": best_served["throughput"], "served_best_c": best_served["concurrency"],
        "saturation": _ratio(best_served["throughput"], best_limit["throughput"]),
    }  # fmt: skip
    for point in rnd.get("hardware", []):  # OpenVINO's benchmark_app: the hardware's limit
        out[f"vs_{point['hint']}_hint"] = _ratio(best_served["throughput"], point["throughput"])
        out[f"{point['hint']}_hint"] = point["throughput"]
    if rnd.get("forward"):  # a PyTorch model's bare forward pass: its inference-only limit
        forward = _best(rnd["forward"])
        out["forward_best"], out["forward_best_batch"] = forward["throughput"], forward["batch"]
        out["vs_forward"] = _ratio(best_served["throughput"], forward["throughput"])
    b1, c1 = next((p for p in limit if p["batch"] == 1), None), _at(served, 1)
    if b1 and c1:
        out["p50_ratio"], out["p50_gap_ms"] = _ratio(c1["p50_ms"], b1["p50_ms"]), c1["p50_ms"] - b1["p50_ms"]
    out.update(_vs_peers(rnd))
    return out


def _vs_peers(rnd: dict) -> dict:
    """YOLO-Toys against the peer with the most throughput at c=16 in this round."""
    c = TARGETS["peer_c"]
    ours = _at(rnd["served"], c)
    at_c = {key: at for key in PEERS if (at := _at(rnd.get(key, []), c))}
    if not ours or not at_c:
        return {}
    best = max(at_c, key=lambda key: at_c[key]["throughput"])
    return {"best_peer": best, "vs_best_peer": _ratio(ours["throughput"], at_c[best]["throughput"]),
            "p99_served": ours["p99_ms"], "p99_best_peer": at_c[best]["p99_ms"]}  # fmt: skip


def rounds_of(model: dict) -> list[dict]:
    """A model's rounds; a JSON from before the rounds (one measurement of each) reads as one round."""
    return model.get("rounds", [model])


def per_round(model: dict) -> list[dict]:
    return [ratios(rnd) for rnd in rounds_of(model)]


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _spread(values: list[float]) -> tuple[float, float, float]:
    """Median, min, max."""
    return statistics.median(values), min(values), max(values)


def _each(values: list[float], fmt: str) -> str:
    """Each round's value, then the median: `0.958 · 0.931 (median **0.945**)`."""
    return " · ".join(fmt.format(v) for v in values) + f" (median **{fmt.format(statistics.median(values))}**)"


def _row(name: str, target: str, values: list[float], fmt: str, goal: str, ok: Callable[[float], bool] | None) -> str:
    mark = "" if ok is None else _mark(all(ok(v) for v in values))
    return f"| {name} | {target} | {_each(values, fmt)} | {goal} | {mark} |"


def _model_rows(name: str, rs: list[dict]) -> list[str]:
    """One row per target this model's rounds measured."""
    def having(key: str) -> list[float]:
        return [r[key] for r in rs if key in r]

    t = TARGETS
    rows = [_row(name, "served / in-process limit (best of each)", having("saturation"), "{:.3f}",
                 f">= {t['saturation']}", lambda v: v >= t["saturation"])]  # fmt: skip
    if having("vs_latency_hint"):
        rows.append(_row(name, "served / benchmark_app, latency hint (inference only)", having("vs_latency_hint"),
                         "{:.3f}", f">= {t['latency_hint']}", lambda v: v >= t["latency_hint"]))  # fmt: skip
    if having("vs_throughput_hint"):
        rows.append(_row(name, "served / benchmark_app, throughput hint, server cores", having("vs_throughput_hint"),
                         "{:.3f}", "for information", None))  # fmt: skip
    if having("vs_forward"):
        rows.append(_row(name, "served / PyTorch bare forward pass (best batch)", having("vs_forward"), "{:.3f}",
                         "for information", None))  # fmt: skip
    if having("p50_ratio"):
        rows.append(_row(name, "p50 at c=1 / in-process batch-1 p50", having("p50_ratio"), "{:.2f}",
                         f"<= {t['p50_ratio']}x", lambda v: v <= t["p50_ratio"]))  # fmt: skip
    peer = [r for r in rs if "vs_best_peer" in r]
    if peer:
        rows.append(_peer_row(name, peer))
    return rows


def _peer_row(name: str, rs: list[dict]) -> str:
    """Throughput against the round's best peer at c=16 and the p99s, each round."""
    c, goal = TARGETS["peer_c"], TARGETS["vs_best_peer"]
    ok = all(r["vs_best_peer"] >= goal and r["p99_served"] < r["p99_best_peer"] for r in rs)
    each = " · ".join(f"{r['vs_best_peer']:.2f}x vs {PEERS[r['best_peer']]}, p99 {r['p99_served']:.0f} vs "
                      f"{r['p99_best_peer']:.0f} ms" for r in rs)  # fmt: skip
    median = statistics.median(r["vs_best_peer"] for r in rs)
    return (f"| {name} | c={c}: served / best peer throughput; p99 | {each} (median **{median:.2f}x**) | "
            f">= {goal}x, lower p99 | {_mark(ok)} |")


def _global_rows(results: dict) -> list[str]:
    rows = []
    both = results.get("both_cores")
    if both and all(r["hardware"] for r in both["rounds"]):
        values = [_ratio(r["served"][0]["throughput"], r["hardware"][0]["throughput"]) for r in both["rounds"]]
        rows.append(_row(both["model"], f"both cores ({both['cpus']}): served at c={both['concurrency']} / "
                         "benchmark_app throughput hint", values, "{:.3f}", f">= {TARGETS['both_cores']}",
                         lambda v: v >= TARGETS["both_cores"]))  # fmt: skip
    soak = results.get("soak")
    if soak:
        failures = soak["failures"] + soak["failures_warmup"]
        rows.append(f"| {soak['model']} | failures at c={soak['concurrency']} for {soak['seconds']:.0f} s "
                    f"({soak['requests']} requests) | **{failures}** | 0 | {_mark(failures == 0)} |")
    memory = results.get("memory")
    if memory:
        growth, goal = memory["growth_pct"], TARGETS["rss_growth_pct"]
        rows.append(f"| {memory['model']} | RSS growth from request {memory['first']} to {memory['requests']} "
                    f"(c={memory['concurrency']}) | {memory['rss_first_mb']:.0f} -> {memory['rss_end_mb']:.0f} MB: "
                    f"**{growth:+.2f} %** | < {goal:.0f} % | {_mark(growth < goal)} |")
    return rows


def targets_rows(results: dict) -> list[str]:
    rows = []
    for name, model in results["models"].items():
        rows += _model_rows(name, per_round(model))
    return rows + _global_rows(results)


def targets_text(results: dict) -> str:
    return "\n".join(["| model | target | each round (median) | goal | |", "|---|---|---|---|---|",
                      *targets_rows(results)])  # fmt: skip


# ---- the summary bench-quick prints -------------------------------------------------------------------


def _round_line(r: dict) -> str:
    parts = [f"served/limit {r['saturation']:.3f} ({r['served_best']:.2f} img/s at c={r['served_best_c']} vs "
             f"{r['limit_best']:.2f} at batch {r['limit_best_batch']})"]  # fmt: skip
    parts += [f"served/benchmark_app {h} hint {r[f'vs_{h}_hint']:.3f} ({r[f'{h}_hint']:.2f}/s)"
              for h in ("latency", "throughput") if f"vs_{h}_hint" in r]  # fmt: skip
    if "vs_forward" in r:
        parts.append(f"served/forward pass {r['vs_forward']:.3f} ({r['forward_best']:.2f} img/s)")
    if "vs_best_peer" in r:
        parts.append(f"served/best peer ({PEERS[r['best_peer']]}) at c={TARGETS['peer_c']} {r['vs_best_peer']:.3f}, "
                     f"p99 {r['p99_served']:.0f} vs {r['p99_best_peer']:.0f} ms")  # fmt: skip
    if "p50_ratio" in r:
        parts.append(f"p50 at c=1 / in-process {r['p50_ratio']:.2f}")
    return "; ".join(parts)


def _spread_line(rs: list[dict]) -> str:
    keys = {"saturation": "served/limit", "vs_latency_hint": "served/benchmark_app latency hint",
            "vs_throughput_hint": "served/benchmark_app throughput hint", "vs_forward": "served/forward pass",
            "vs_best_peer": "served/best peer", "p50_ratio": "p50 c=1/in-process"}  # fmt: skip
    parts = []
    for key, label in keys.items():
        values = [r[key] for r in rs if key in r]
        if values:
            median, lo, hi = _spread(values)
            parts.append(f"{label} {median:.3f} ({lo:.3f}-{hi:.3f})")
    return "; ".join(parts)


def quick_summary(results: dict) -> str:
    lines = []
    for name, model in results["models"].items():
        rs = per_round(model)
        lines.append(f"{name}, {len(rs)} rounds:")
        lines += [f"  round {i}: {_round_line(r)}" for i, r in enumerate(rs, 1)]
        lines.append(f"  median (min-max): {_spread_line(rs)}")
        served = _merged(model, "served")
        lines += [f"  CPU ms/request at c={c} (median): {_cpu(points)}" for c, points in served.items()
                  if _cpu(points)]  # fmt: skip
        if model.get("multi"):
            lines.append(f"  16 images: {_multi_line(model['multi'])}")
    both = results.get("both_cores")
    if both and all(r["hardware"] for r in both["rounds"]):
        values = [_ratio(r["served"][0]["throughput"], r["hardware"][0]["throughput"]) for r in both["rounds"]]
        lines.append(f"both cores ({both['cpus']}), {both['model']}: served at c={both['concurrency']} / benchmark_app "
                     f"throughput hint {_each(values, '{:.3f}').replace('**', '')}")  # fmt: skip
    return "\n".join(lines)


# ---- merging the rounds --------------------------------------------------------------------------------


def _merged(model: dict, key: str, by: str = "concurrency") -> dict[int | str, list[dict]]:
    """Each level's (batch's, hint's) points over the rounds."""
    out: dict[int | str, list[dict]] = {}
    for rnd in rounds_of(model):
        for p in rnd.get(key, []):
            out.setdefault(p[by], []).append(p)
    return out


def _med(points: list[dict], key: str) -> float:
    return statistics.median(p[key] for p in points)


def _range(points: list[dict], key: str = "throughput") -> str:
    median, lo, hi = _spread([p[key] for p in points])
    return f"{median:.2f} ({lo:.2f}-{hi:.2f})"


def _cpu(points: list[dict]) -> str:
    names = [k for k in points[0].get("cpu_ms_per_request", {})]
    return ", ".join(f"{k} {statistics.median(p['cpu_ms_per_request'].get(k, 0.0) for p in points):.1f}"
                     for k in names)  # fmt: skip


def _multi_line(multi: dict) -> str:
    by_mode: dict[str, list[dict]] = {}
    for rnd in multi["rounds"]:
        for p in rnd:
            by_mode.setdefault(p["mode"], []).append(p)
    text = "; ".join(f"{mode} {_range(points)} images/s" for mode, points in by_mode.items())
    return text + ("" if multi["available"] else "; one /batch request: not available (404)")


# ---- docs/benchmarks.md ---------------------------------------------------------------------------------


def plot(name: str, model: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in SERVERS.items():
        merged = _merged(model, key)
        if not merged:
            continue
        cs = sorted(merged)
        med = [_med(merged[c], "throughput") for c in cs]
        err = [[m - min(p["throughput"] for p in merged[c]) for c, m in zip(cs, med, strict=True)],
               [max(p["throughput"] for p in merged[c]) - m for c, m in zip(cs, med, strict=True)]]  # fmt: skip
        ax_t.errorbar(cs, med, yerr=err, fmt="o-", color=COLOURS[key], capsize=3, label=label)
        ax_l.plot(cs, [_med(merged[c], "p50_ms") for c in cs], "o-", color=COLOURS[key], label=f"{label} p50")
        ax_l.plot(cs, [_med(merged[c], "p99_ms") for c in cs], "s--", color=COLOURS[key], label=f"{label} p99")
    limit = _merged(model, "limit", "batch")
    best = max(limit, key=lambda b: _med(limit[b], "throughput"))
    ax_t.axhline(_med(limit[best], "throughput"), color="black", ls=":", label=f"in-process limit (batch {best})")
    if 1 in limit:
        ax_l.axhline(_med(limit[1], "p50_ms"), color="black", ls=":", label="in-process p50 (batch 1)")
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_ylabel("images / s (median over rounds, min-max bars)")
    ax_t.set_ylim(bottom=0)
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency (ms, median over rounds)")
    fig.suptitle(model["label"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(model: dict) -> list[str]:
    n = len(rounds_of(model))
    rows = [f"| what | load | img/s: median (min-max) of {n} rounds | p50 ms | p95 ms | p99 ms | failures | "
            "CPU ms per request |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for b, points in sorted(_merged(model, "limit", "batch").items()):
        rows.append(f"| in-process limit | batch {b} | {_range(points)} | {_med(points, 'p50_ms'):.1f} | | "
                    f"{_med(points, 'p99_ms'):.1f} | | |")
    for b, points in sorted(_merged(model, "forward", "batch").items()):
        rows.append(f"| PyTorch bare forward pass, {points[0]['threads']} threads | batch {b}, inference only | "
                    f"{_range(points)} | {_med(points, 'median_ms'):.1f} | | | | |")
    for hint, points in _merged(model, "hardware", "hint").items():
        rows.append(f"| benchmark_app, {hint} hint, cores {points[0]['cpus']} | inference only | {_range(points)} | "
                    f"{_med(points, 'median_ms'):.1f} | | | | |")
    for key, label in SERVERS.items():
        for c, points in sorted(_merged(model, key).items()):
            failures = sum(p["failures"] + p["failures_warmup"] for p in points)
            rows.append(f"| {label} | c={c} | {_range(points)} | {_med(points, 'p50_ms'):.1f} | "
                        f"{_med(points, 'p95_ms'):.1f} | {_med(points, 'p99_ms'):.1f} | {failures} | {_cpu(points)} |")
    return rows


def _idle(results: dict) -> str:
    """What keeping the other servers up cost the measured one: the idle servers' CPU share per point."""
    points = [p["idle_cpu_pct"] for model in results["models"].values() for rnd in rounds_of(model)
              for key in SERVERS for p in rnd.get(key, []) if p.get("idle_cpu_pct")]  # fmt: skip
    if not points:
        return "- **Servers kept up:** one server per model (no peers), nothing else idle."
    shares = [sum(p.values()) for p in points]
    each = {key: statistics.median(p[key] for p in points if key in p)
            for key in SERVERS if any(key in p for p in points)}  # fmt: skip
    held = {name: sum(model.get("servers_rss_mb", {}).values()) for name, model in results["models"].items()}
    verdict = (f"Under {IDLE_OK_PCT:.0f} % of a core, the same for every server measured and far under what a point "
               "moves between rounds: kept up." if max(shares) < IDLE_OK_PCT else f"Over {IDLE_OK_PCT:.0f} % of a "
               "core in some point: see `idle_cpu_pct` in the JSON before trusting it.")  # fmt: skip
    return (f"- **Servers kept up:** each model's servers (YOLO-Toys and its peers) were started once and kept up, "
            f"idle on the same cores while another was measured; restarting them per point would add a start "
            f"(seconds to a minute) and a cold first request to every point. Measured: the idle servers together "
            f"took at most {max(shares):.1f} % of a core during a point (median {statistics.median(shares):.2f} %; "
            "each idle, median: " + ", ".join(f"{SERVERS[k]} {v:.2f} %" for k, v in each.items()) + "), and held "
            + ", ".join(f"{mb / 1024:.1f} GB ({name})" for name, mb in held.items())
            + f" of memory together. {verdict}")  # fmt: skip


def _method(results: dict) -> list[str]:
    s, m = results["settings"], results["machine"]
    cores = f"servers and limits on cores {m['server_cpus']}, load generator on cores {m['client_cpus']}"
    return [
        f"- **Date:** {results['date']}; the whole run took {results.get('seconds_total', 0) / 60:.1f} min"
        + (" (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in results.get("phases_s", {}).items()) + " min)."
           if results.get("phases_s") else "."),
        f"- **Command:** `{results['command']}`",
        f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB"
        + (f", {m['gpu']}" if m.get("gpu") else ", no GPU") + f"; {cores}.",
        "- **Software:** " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f", Python {m['python']}.",
        f"- **Rounds:** {s.get('rounds', 1)}. Each round measures the references first (in-process limit, forward pass, "
        "benchmark_app) with every server idle, then each load level on each server in turn, the order turned by "
        "one server each round. The tables give the median over the rounds and the min-max spread; the targets "
        "each round's ratio, met only when it holds in every round.",
        f"- **Load:** closed loop, each client sends the next request when the last returns; the photos `bus.jpg` "
        f"and `zidane.jpg` in turn; {s['warmup']:.0f} s warm-up (+{s.get('per_client_warmup', 0.1)} s per client) "
        f"before each point, then {s['seconds']:.0f} s measured. YOLO-Toys at c={s['concurrency']}, the peers at "
        f"c={s.get('peer_concurrency', s['concurrency'])}. Failures: any answer but 200.",
        _idle(results),
        "- **Limit:** the model called in-process on the server's cores, from JPEG bytes to result objects "
        "(decode, preprocess, inference, postprocess), one batch after the other.",
        "- **Inference only:** OpenVINO's `benchmark_app` for an OpenVINO export (latency hint on one core, "
        "throughput hint on the server cores); for a PyTorch model its bare forward pass, `model.model(tensor)` "
        "on random tensors of the shapes its pipeline feeds it, torch threads = server cores.",
        "- **CPU per request:** user + system CPU time of each server process (the front `yolo_toys`, each runner; "
        "the baseline's one process) over a whole point, warm-up included, divided by the requests sent in it.",
        "- **Peers**, on the same cores: `bench/baseline_app.py`, the FastAPI app a user would write (one process, "
        "model loaded at start-up, decode and predict in a thread-pool handler behind a lock); "
        "`bench/litserve_app.py`, LitServe as its docs write an API (decode, predict, encode in a `LitAPI`, one "
        "inference worker, no batching); `bench/bentoml_app.py`, BentoML's YOLO example (a `@bentoml.service`, "
        "`YOLO(path)` in `__init__`, one `@bentoml.api(batchable=True)` method on a list of images, "
        "BentoML's default adaptive batching).",
    ]


def _sections(results: dict) -> list[str]:
    """Several images per request, both cores, memory growth: what ran of them."""
    lines: list[str] = []
    multi = {name: m["multi"] for name, m in results["models"].items() if m.get("multi")}
    if multi:
        lines += ["## Several images in one request", "",
                  "16 images (`bus.jpg` and `zidane.jpg` in turn) to YOLO-Toys: one `POST /batch` with 16 `images` "
                  "fields, 16 single requests one after the other, and 16 single requests all at once; images/s, "
                  "median (min-max) over the rounds.", ""]  # fmt: skip
        lines += [f"- **{name}:** {_multi_line(m)}" for name, m in multi.items()] + [""]
    both = results.get("both_cores")
    if both:
        lines += ["## Both cores", "",
                  f"YOLO-Toys alone on cores {both['cpus']} (all of them), the load generator sharing those cores, "
                  f"c={both['concurrency']}; benchmark_app's throughput hint on the same cores in the same rounds.", "",
                  "| round | YOLO-Toys req/s | p99 ms | benchmark_app throughput hint /s |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {i} | {r['served'][0]['throughput']:.2f} | {r['served'][0]['p99_ms']:.0f} | "
                  + (f"{r['hardware'][0]['throughput']:.2f} |" if r["hardware"] else "n/a |")
                  for i, r in enumerate(both["rounds"], 1)] + [""]  # fmt: skip
    memory = results.get("memory")
    if memory:
        lines += ["## Memory growth", "",
                  f"{memory['requests']} requests at c={memory['concurrency']} to `{memory['model']}` in "
                  f"{memory['seconds']:.0f} s ({memory['failures']} failed); RSS of all the server's processes "
                  f"together after {memory['first']} requests and at the end: {memory['rss_first_mb']:.0f} -> "
                  f"{memory['rss_end_mb']:.0f} MB ({memory['growth_pct']:+.2f} %). Per worker: "
                  + ", ".join(f"{k} {v:.0f} -> {memory['by_process_end_mb'].get(k, 0):.0f} MB"
                              for k, v in memory["by_process_first_mb"].items()) + ".", ""]  # fmt: skip
    return lines


def write(results: dict, out: Path) -> None:
    plots = out / "bench"
    plots.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`, see `bench/`); do not edit by hand. "
        "Re-render from the JSON with `python -m bench.report docs/benchmarks.json`.",
        "",
        *_method(results),
        "",
        "## Targets",
        "",
        targets_text(results),
        "",
        *_sections(results),
    ]
    for name, model in results["models"].items():
        plot(name, model, plots / f"{name}.png")
        lines += [f"## {model['label']}", "", f"`{model['route']}` with `model={name}`.", "",
                  f"![{name}](bench/{name}.png)", "", *_table(model), ""]  # fmt: skip
    (out / "benchmarks.md").write_text("\n".join(lines))


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks.json")
    write(json.loads(source.read_text()), source.parent)
