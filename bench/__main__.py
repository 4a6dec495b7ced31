"""Benchmark the served endpoint against the in-process limit, the inference-only limit (OpenVINO's
benchmark_app, PyTorch's bare forward pass) and the peers (a hand-written FastAPI app; LitServe and a
plain BentoML service as BentoML's YOLO example writes it, for Ultralytics models).

    python -m bench            # make bench: every model, 3 rounds; writes docs/benchmarks.*
    python -m bench --quick    # make bench-quick: yolov8n OpenVINO only, 2 rounds, prints the ratios

The servers (and the in-process limit, and benchmark_app) run on one set of cores, this process and
its load generator on the others, so every figure is measured on the same cores. Every server of a
model is started once and kept up; each round measures each load level on each server in turn
(bench/rounds.py). Then, on YOLO-Toys: several images in one request, the soak, memory growth over
10,000 requests; last, YOLO-Toys again with all cores, the load generator sharing them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench import phases, report, rounds
from bench.limit import ForwardPoint, HardwarePoint, LimitPoint, openvino_limit
from bench.rounds import Server
from bench.servers import own_home, pinned, rss_mb, serving
from bench.setup import BY_NAME, MODELS, ROOT, prepare

BIN = Path(sys.executable).parent
SERVED = [str(BIN / "bentoml"), "serve", "service:YoloToys", "--host", "127.0.0.1", "--port", "{port}"]
PHASES = ("peers", "multi", "soak", "memory", "both-cores")
QUICK_SKIPS = ["soak", "memory", "both-cores"]


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
        [sys.executable, "-c", "import bentoml, torch, ultralytics, openvino, litserve, transformers as t; print("
         "bentoml.__version__, torch.__version__, ultralytics.__version__, openvino.__version__, litserve.__version__, "
         "t.__version__)"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))  # fmt: skip
    names = ["bentoml", "torch", "ultralytics", "openvino", "litserve", "transformers"]
    return {
        "cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1), "gpu": gpu_names or None,
        "server_cpus": server_cpus, "client_cpus": client_cpus, "python": platform.python_version(),
        "versions": dict(zip(names, versions, strict=False)),
    }  # fmt: skip


def has_gpu() -> bool:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    except OSError:
        return False


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the limits: in-process pipeline, bare forward pass, benchmark_app --------------------------------


def openvino_xml(path: Path) -> Path | None:
    return next(path.glob("*.xml"), None) if path.is_dir() else None


def measure_limit(name: str, path: Path, cpus: str, batches: list[int], seconds: float,
                  env: dict) -> tuple[list[LimitPoint], list[ForwardPoint]]:  # fmt: skip
    """The in-process pipeline at each batch size; for a PyTorch model also its bare forward pass."""
    forward = openvino_xml(path) is None
    command = [sys.executable, "-m", "bench.limit", BY_NAME[name].family, str(path), "--seconds", str(seconds),
               "--batches", *map(str, batches), *(["--forward"] if forward else [])]  # fmt: skip
    out = subprocess.run(pinned(cpus, command), cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    points = [LimitPoint.model_validate_json(line) for line in out.splitlines() if line.startswith("{")]
    passes = [ForwardPoint.model_validate_json(line.split(" ", 1)[1]) for line in out.splitlines()
              if line.startswith("forward ")]  # fmt: skip
    log(f"limit   {name}: in-process on cores {cpus}: "
        + ", ".join(f"batch {p.batch} {p.throughput:.2f} img/s (p50 {p.p50_ms:.1f} ms)" for p in points)
        + "".join(f"; forward pass batch {p.batch} {p.throughput:.2f} img/s" for p in passes))  # fmt: skip
    return points, passes


def measure_hardware(name: str, path: Path, cpus: str, seconds: float) -> list[HardwarePoint]:
    """For an OpenVINO export: `benchmark_app` with the latency hint on the first server core, and with the
    throughput hint on all server cores (the same cores when the server has one)."""
    xml = openvino_xml(path)
    if xml is None:
        return []
    first = str(min(cpu_set(cpus)))
    points = [openvino_limit(xml, first, "latency", seconds), openvino_limit(xml, cpus, "throughput", seconds)]
    for p in points:
        log(f"limit   {name}: benchmark_app {p.hint} hint on cores {p.cpus}: {p.throughput:.2f} inferences/s, "
            f"median {p.median_ms:.1f} ms")  # fmt: skip
    return points


def references(name: str, path: Path, args: argparse.Namespace, env: dict) -> dict:
    """What a round measures first, every server idle: the in-process limit, the forward pass, benchmark_app."""
    limit, forward = measure_limit(name, path, args.server_cpus, args.batches, args.seconds / 2, env)
    hardware = measure_hardware(name, path, args.server_cpus, args.seconds)
    return {"limit": [p.model_dump() for p in limit], "forward": [p.model_dump() for p in forward],
            "hardware": [p.model_dump() for p in hardware]}  # fmt: skip


# ---- the servers --------------------------------------------------------------------------------------


def peers(family: str) -> list[tuple[str, list[str], str]]:
    """The other servers of the same model on the same cores: (results key, command, its program)."""
    found = [("baseline", [str(BIN / "uvicorn"), "bench.baseline_app:app", "--host", "127.0.0.1", "--port", "{port}",
                           "--log-level", "warning"], "uvicorn")]  # fmt: skip
    if family == "ultralytics":
        litserve = [sys.executable, "-m", "bench.litserve_app", "--port", "{port}"]
        found.append(("litserve", litserve, "bench.litserve_app"))
        found.append(("bentoml", [str(BIN / "bentoml"), "serve", "bench.bentoml_app:BentoYolo", "--host", "127.0.0.1",
                                  "--port", "{port}"], "bentoml"))  # fmt: skip
    return found


def start_peers(stack: contextlib.ExitStack, name: str, path: Path, env: dict,
                args: argparse.Namespace) -> list[Server]:  # fmt: skip
    """Each peer of the model started on the server cores and primed; stopped when `stack` closes."""
    m, logs = BY_NAME[name], args.work / "logs"
    peer_env = {**env, "BASELINE_FAMILY": m.family, "BASELINE_MODEL": str(path)}
    started = []
    for key, command, program in peers(m.family):
        bentoml = program == "bentoml"  # a BentoML home of its own beside YOLO-Toys: see own_home
        server_env = own_home(peer_env, logs / f"{key}-{name}") if bentoml else peer_env
        log_file = logs / f"{key}-{name}.log"
        url = stack.enter_context(serving(command, server_env, args.server_cpus, "/readyz" if bentoml else "/health",
                                          log_file))  # fmt: skip
        server = Server(key, url, program, m.route, {}, args.peer_concurrency)
        server.prime()
        started.append(server)
    return started


def memory_check(servers: list[Server]) -> dict:
    """Every running server's resident memory (all its processes), and what the machine still has."""
    held = {s.key: round(rss_mb(s.processes())) for s in servers}
    available = round(psutil.virtual_memory().available / 2**20)
    log("memory  " + ", ".join(f"{k} {mb} MB" for k, mb in held.items()) + f"; {available} MB still available")
    return {"servers_rss_mb": held, "available_mb": available}


def model_rounds(name: str, path: Path, served_url: str, env: dict, args: argparse.Namespace) -> dict:
    """Every round of one model: references, then YOLO-Toys and its peers alternated point by point."""
    m = BY_NAME[name]
    served = Server("served", served_url, "bentoml", m.route, {"model": name}, args.concurrency)
    served.prime()
    with contextlib.ExitStack() as stack:
        servers = [served, *([] if "peers" in args.skip else start_peers(stack, name, path, env, args))]
        memory = memory_check(servers)
        log(f"rounds  {name}: {args.rounds} rounds; servers {[s.key for s in servers]}")
        measured = rounds.run(servers, args.rounds, args.seconds, args.warmup,
                              lambda _turn: references(name, path, args, env), log, name)  # fmt: skip
    return {"rounds": measured, **memory}


# ---- the phases ---------------------------------------------------------------------------------------


def served_phases(url: str, names: list[str], args: argparse.Namespace, results: dict) -> None:
    """On the running YOLO-Toys, after the rounds: several images per request, the soak, memory growth."""
    first = BY_NAME[names[0]]
    server = Server("served", url, "bentoml", first.route, {"model": first.name}, args.concurrency)
    if "multi" not in args.skip:
        with timed(results, "multi"):
            for name in names:
                results["models"][name]["multi"] = phases.multi_images(
                    Server("served", url, "bentoml", BY_NAME[name].route, {"model": name}, []), args.rounds, log)
    if "soak" not in args.skip and args.soak > 0:
        with timed(results, "soak"):
            results["soak"] = phases.soak(server, max(args.concurrency), args.soak, args.warmup, log)
    if "memory" not in args.skip and args.rss_requests > 0:
        with timed(results, "memory"):
            growth = phases.memory_growth(server, args.rss_requests, min(1000, args.rss_requests // 10), 16, log)
            results["memory"] = growth.model_dump()


def both_cores(name: str, path: Path, env: dict, args: argparse.Namespace) -> dict:
    """YOLO-Toys on every core with the load generator sharing them, against benchmark_app's throughput hint
    on every core, alternated round by round."""
    cpus, c = args.all_cpus, max(args.peer_concurrency)
    os.sched_setaffinity(0, cpu_set(cpus))
    log(f"both    {name}: YOLO-Toys and the load generator on cores {cpus}, c={c}, {args.rounds} rounds")
    try:
        with serving(SERVED, env, cpus, "/readyz", args.work / "logs" / "served-all-cores.log") as url:
            server = Server("served", url, "bentoml", BY_NAME[name].route, {"model": name}, [c])
            server.prime()
            out = [_both_round(turn, server, openvino_xml(path), cpus, args) for turn in range(args.rounds)]
    finally:
        os.sched_setaffinity(0, cpu_set(args.client_cpus))
    return {"model": name, "cpus": cpus, "concurrency": c, "rounds": out}


def _both_round(turn: int, server: Server, xml: Path | None, cpus: str, args: argparse.Namespace) -> dict:
    """One round of the both-cores phase: YOLO-Toys first in even rounds, benchmark_app first in odd ones."""
    def hardware() -> list[dict]:
        return [openvino_limit(xml, cpus, "throughput", args.seconds).model_dump()] if xml else []

    first = hardware() if turn % 2 else None
    served = rounds.measure(server, [], server.levels[0], args.seconds, args.warmup)
    record = {"served": [served.model_dump()], "hardware": first if first is not None else hardware()}
    log(f"round {turn + 1} both     {server.fields['model']} {rounds.describe(served)}; benchmark_app "
        + (f"{record['hardware'][0]['throughput']:.2f}/s" if record["hardware"] else "n/a"))  # fmt: skip
    return record


@contextlib.contextmanager
def timed(results: dict, phase: str) -> Iterator[None]:
    began = time.monotonic()
    yield
    results.setdefault("phases_s", {})[phase] = round(time.monotonic() - began)


# ---- the run ------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the regression guard: yolov8n OpenVINO, 2 rounds, ~7 min")
    parser.add_argument("--models", nargs="+", choices=[m.name for m in MODELS])
    parser.add_argument("--rounds", type=int, help="rounds of every point (default 3; --quick 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="YOLO-Toys' load levels (default 1 4 16 64)")
    parser.add_argument("--peer-concurrency", type=int, nargs="+", help="the peers' (default 1 16, or --concurrency)")
    parser.add_argument("--batches", type=int, nargs="+", help="in-process batch sizes (default 1 4 8; GPU 1 8 16 32)")
    parser.add_argument("--seconds", type=float, help="measured seconds per point (default 8; --quick 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per point (+0.05 s a client)")
    parser.add_argument("--soak", type=float, default=60.0, help="seconds at the highest concurrency, first model")
    parser.add_argument("--rss-requests", type=int, default=10000, help="requests of the memory-growth phase at c=16")
    parser.add_argument("--skip", nargs="+", choices=PHASES,
                        help=f"phases left out (--quick leaves out {' '.join(QUICK_SKIPS)} too)")  # fmt: skip
    parser.add_argument("--server-cpus", help="cores of the servers and the limits, e.g. 0 or 0-11")
    parser.add_argument("--client-cpus", help="cores of the load generator")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work", help="models, store, logs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where benchmarks.{json,md} and plots go")
    return parser.parse_args()


def settle(args: argparse.Namespace, gpu: bool) -> argparse.Namespace:
    """The defaults that depend on --quick and the machine, filled in."""
    quick = args.quick
    args.names = args.models or (["yolov8n-openvino"] if quick else [m.name for m in MODELS])
    args.rounds = args.rounds or (2 if quick else 3)
    args.peer_concurrency = args.peer_concurrency or args.concurrency or [1, 16]
    args.concurrency = args.concurrency or ([1, 16] if quick else [1, 4, 16, 64])
    args.batches = args.batches or ([1, 8, 16, 32] if gpu else [1, 4] if quick else [1, 4, 8])
    args.seconds = args.seconds or (10.0 if quick else 8.0)
    args.skip = set(args.skip or []) | (set(QUICK_SKIPS) if quick else set())
    args.all_cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    args.server_cpus, args.client_cpus = split_cores(args.server_cpus, args.client_cpus)
    return args


def header(args: argparse.Namespace, started: datetime.datetime) -> dict:
    """The results before anything is measured: when, how, on what, with which settings."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "machine": machine(args.server_cpus, args.client_cpus, has_gpu()),
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "per_client_warmup": rounds.PER_CLIENT_WARMUP,
                     "rounds": args.rounds, "concurrency": args.concurrency, "peer_concurrency": args.peer_concurrency,
                     "batches": args.batches, "skipped": sorted(args.skip)},
        "models": {n: {"label": BY_NAME[n].label, "route": BY_NAME[n].route} for n in args.names},
    }  # fmt: skip


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` or a kill still stops every server
    args = settle(parse_args(), has_gpu())
    os.sched_setaffinity(0, cpu_set(args.client_cpus))
    started = datetime.datetime.now(datetime.timezone.utc)
    log(f"server cores {args.server_cpus}, load-generator cores {args.client_cpus}; models {args.names}; "
        f"{args.rounds} rounds; concurrency {args.concurrency}, peers {args.peer_concurrency}; "
        f"skipping {sorted(args.skip)}")
    results = header(args, started)
    with timed(results, "setup"):
        env, paths = prepare(args.work, args.names)
    with contextlib.ExitStack() as stack:
        with timed(results, "start YOLO-Toys"):
            log_file = args.work / "logs" / "served.log"
            url = stack.enter_context(serving(SERVED, env, args.server_cpus, "/readyz", log_file))
        for name in args.names:
            with timed(results, f"rounds {name}"):
                results["models"][name].update(model_rounds(name, paths[name], url, env, args))
        served_phases(url, args.names, args, results)
    if "both-cores" not in args.skip:
        with timed(results, "both-cores"):
            first = next((n for n in args.names if openvino_xml(paths[n])), args.names[0])
            results["both_cores"] = both_cores(first, paths[first], env, args)
    finish(results, started, args)


def finish(results: dict, started: datetime.datetime, args: argparse.Namespace) -> None:
    results["seconds_total"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds())
    phases_s = ", ".join(f"{k} {s} s" for k, s in results["phases_s"].items())
    log(f"took {results['seconds_total'] / 60:.1f} min: {phases_s}")
    if args.quick:
        print(report.quick_summary(results))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, args.out)
    log(f"wrote {args.out / 'benchmarks.md'}")
    print(report.targets_text(results))


if __name__ == "__main__":
    main()
