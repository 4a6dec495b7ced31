"""Benchmark the served endpoint against the in-process limit, OpenVINO's benchmark_app and the peers
(a hand-written FastAPI app; LitServe for Ultralytics models).

    python -m bench            # make bench: every model, every load level; writes docs/benchmarks.*
    python -m bench --quick    # make bench-quick: yolov8n OpenVINO only, prints the ratios

The server (and the in-process limit, and the baseline) run on one set of cores, this process and
its load generator on the others, so every figure is measured on the same cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench import report
from bench.limit import HardwarePoint, LimitPoint, openvino_limit
from bench.loadgen import Point, Upload, closed_loop, prime
from bench.photos import photos
from bench.servers import cpu_seconds, pinned, server_processes, serving
from bench.setup import BY_NAME, MODELS, ROOT, prepare

BIN = Path(sys.executable).parent


def split_cores(server: str | None, client: str | None) -> tuple[str, str]:
    """Server cores and load-generator cores: by default the last quarter (at least one) drives the load."""
    cores = sorted(os.sched_getaffinity(0))
    if server and client:
        return server, client
    if len(cores) < 2:
        raise SystemExit("the benchmark needs at least 2 cores: one for the server, one for the load")
    n_client = max(1, len(cores) // 4)
    server_cores, client_cores = cores[:-n_client], cores[-n_client:]
    return server or ",".join(map(str, server_cores)), client or ",".join(map(str, client_cores))


def cpu_set(spec: str) -> set[int]:
    cpus: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def machine(server_cpus: str, client_cpus: str, gpu: bool) -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    gpu_names = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip() if gpu else ""
    versions = subprocess.run(
        [sys.executable, "-c", "import bentoml, torch, ultralytics, openvino, transformers as t; "
         "print(bentoml.__version__, torch.__version__, ultralytics.__version__, openvino.__version__, t.__version__)"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))  # fmt: skip
    return {
        "cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1), "gpu": gpu_names or None,
        "server_cpus": server_cpus, "client_cpus": client_cpus, "python": platform.python_version(),
        "versions": dict(zip(["bentoml", "torch", "ultralytics", "openvino", "transformers"], versions, strict=False)),
    }  # fmt: skip


def has_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except OSError:
        return False


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def measure_limit(name: str, path: Path, cpus: str, batches: list[int], seconds: float, env: dict) -> list[LimitPoint]:
    log(f"limit   {name}: in-process, batches {batches}, {seconds:.0f} s each, cores {cpus}")
    command = [sys.executable, "-m", "bench.limit", BY_NAME[name].family, str(path), "--seconds", str(seconds),
               "--batches", *map(str, batches)]  # fmt: skip
    out = subprocess.run(pinned(cpus, command), cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    points = [LimitPoint.model_validate_json(line) for line in out.splitlines() if line.startswith("{")]
    for p in points:
        log(f"        batch {p.batch}: {p.throughput:.2f} img/s, p50 {p.p50_ms:.1f} ms per call")
    return points


def measure_hardware(name: str, path: Path, cpus: str, seconds: float) -> list[HardwarePoint]:
    """For an OpenVINO export: `benchmark_app` with the latency hint on the first server core, and with the
    throughput hint on all server cores (the same cores when the server has one)."""
    xml = next(path.glob("*.xml"), None)
    if xml is None:
        return []
    first = str(min(cpu_set(cpus)))
    points = [openvino_limit(xml, first, "latency", seconds), openvino_limit(xml, cpus, "throughput", seconds)]
    for p in points:
        log(f"limit   {name}: benchmark_app {p.hint} hint on cores {p.cpus}: {p.throughput:.2f} inferences/s, "
            f"median {p.median_ms:.1f} ms")  # fmt: skip
    return points


def peers(family: str) -> list[tuple[str, list[str], str]]:
    """The other servers of the same model on the same cores: (results key, command, its program)."""
    found = [("baseline", [str(BIN / "uvicorn"), "bench.baseline_app:app", "--host", "127.0.0.1", "--port", "{port}",
                           "--log-level", "warning"], "uvicorn")]  # fmt: skip
    if family == "ultralytics":
        found.append(("litserve", [sys.executable, "-m", "bench.litserve_app", "--port", "{port}"], "bench.litserve_app"))
    return found


def load_levels(what: str, url: str, route: str, levels: list[int], seconds: float, warmup: float,
                fields: dict[str, str], program: str = "bentoml") -> list[Point]:
    """Each load level in turn, with the CPU time each server process spent per request over the level."""
    uploads = [Upload("image", name, data) for name, data in zip(("bus.jpg", "zidane.jpg"), photos(), strict=True)]
    prime(url + route, uploads, fields)
    processes = server_processes(url, program)
    points = []
    for c in levels:
        before = cpu_seconds(processes)
        p = closed_loop(url + route, uploads, c, seconds, warmup + c * 0.1, fields)
        used = cpu_seconds(processes)
        p.cpu_ms_per_request = {k: round((used[k] - before[k]) * 1000 / max(p.sent, 1), 2) for k in used if k in before}
        cpu = ", ".join(f"{k} {ms:.1f}" for k, ms in p.cpu_ms_per_request.items())
        log(f"{what} c={c:>3}: {p.throughput:6.2f} req/s, p50 {p.p50_ms:7.1f} ms, p99 {p.p99_ms:7.1f} ms, "
            f"failures {p.failures} (+{p.failures_warmup} in warm-up); CPU ms/request: {cpu}")  # fmt: skip
        points.append(p)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the regression guard: yolov8n OpenVINO, ~2 minutes")
    parser.add_argument("--models", nargs="+", choices=[m.name for m in MODELS])
    parser.add_argument("--concurrency", type=int, nargs="+")
    parser.add_argument("--batches", type=int, nargs="+", help="in-process batch sizes (default 1 2 4 8; GPU 1 8 16 32)")
    parser.add_argument("--seconds", type=float, help="measured seconds per load level")
    parser.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds before each level (+0.1 s per client)")
    parser.add_argument("--soak", type=float, default=60.0, help="seconds at the highest concurrency, first model")
    parser.add_argument("--server-cpus", help="cores of the server and the limit, e.g. 0 or 0-11")
    parser.add_argument("--client-cpus", help="cores of the load generator")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work", help="models, store, logs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where benchmarks.{json,md} and plots go")
    args = parser.parse_args()

    gpu = has_gpu()
    quick = args.quick
    names = args.models or (["yolov8n-openvino"] if quick else [m.name for m in MODELS])
    levels = args.concurrency or ([1, 16] if quick else [1, 4, 16, 64])
    batches = args.batches or ([1, 8, 16, 32] if gpu else [1, 4] if quick else [1, 2, 4, 8])
    seconds = args.seconds or (10.0 if quick else 20.0)
    server_cpus, client_cpus = split_cores(args.server_cpus, args.client_cpus)
    os.sched_setaffinity(0, cpu_set(client_cpus))
    started = datetime.datetime.now(datetime.timezone.utc)
    log(f"server cores {server_cpus}, load-generator cores {client_cpus}; models {names}; concurrency {levels}")

    env, paths = prepare(args.work, names)
    results: dict = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "machine": machine(server_cpus, client_cpus, gpu),
        "settings": {"seconds": seconds, "warmup": args.warmup, "concurrency": levels, "batches": batches},
        "models": {n: {"label": BY_NAME[n].label, "route": BY_NAME[n].route} for n in names},
    }
    for name in names:
        results["models"][name]["limit"] = [p.model_dump() for p in
                                            measure_limit(name, paths[name], server_cpus, batches, seconds / 2, env)]
        hardware = measure_hardware(name, paths[name], server_cpus, seconds) if paths[name].is_dir() else []
        results["models"][name]["hardware"] = [p.model_dump() for p in hardware]

    with serving([str(BIN / "bentoml"), "serve", "service:YoloToys", "--host", "127.0.0.1", "--port", "{port}"],
                 env, server_cpus, "/readyz", args.work / "logs" / "served.log") as url:  # fmt: skip
        for name in names:
            m = BY_NAME[name]
            points = load_levels(f"served  {name}", url, m.route, levels, seconds, args.warmup, {"model": name})
            results["models"][name]["served"] = [p.model_dump() for p in points]
        if not quick and args.soak > 0:
            c = max(levels)
            log(f"soak    {names[0]}: c={c} for {args.soak:.0f} s")
            [soak] = load_levels(f"soak    {names[0]}", url, BY_NAME[names[0]].route, [c], args.soak, args.warmup,
                                 {"model": names[0]})  # fmt: skip
            results["soak"] = {"model": names[0], **soak.model_dump()}

    for name in names:
        m = BY_NAME[name]
        peer_env = {**env, "BASELINE_FAMILY": m.family, "BASELINE_MODEL": str(paths[name])}
        for peer, command, program in peers(m.family):
            with serving(command, peer_env, server_cpus, "/health", args.work / "logs" / f"{peer}-{name}.log") as url:
                points = load_levels(f"{peer:<8} {name}", url, m.route, levels, seconds, args.warmup, {}, program)
            results["models"][name][peer] = [p.model_dump() for p in points]

    results["seconds_total"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds())
    if quick:
        print(report.quick_summary(results))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, args.out)
    log(f"wrote {args.out / 'benchmarks.md'} in {results['seconds_total']} s")
    print(report.targets_text(results))


if __name__ == "__main__":
    main()
