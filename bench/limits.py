"""What each task's worst-case images cost a served runner: `make bench-limits` (~15 minutes).

    python -m bench.limits                 # builds the models, serves them, writes docs/limits.{md,json}
    python -m bench.limits --cases depth   # only the cases of some tasks; prints, writes nothing

Every task route gets, one request at a time, the images the limits allow at their extremes (the
largest square, the most elongated images within the pixel limit, one pixel, issue 10's thin ones:
bench/hostile.py) and its most expensive options. Each answer's status and time is recorded with
the peak memory of the runner and front processes while it was served: the kernel's high-water mark
(VmHWM), reset before each request through /proc/PID/clear_refs. Then a full batch of largest squares
at once. The models are the default catalog's Ultralytics exports and real-size transformers
architectures with random weights (bench/realsize.py): the cost of an image does not depend on the
weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

from bench.hostile import SHAPES, png
from bench.realsize import REAL_SIZE, build
from bench.servers import serving, workers
from models.catalog import DEFAULT_CATALOG, weights_dir
from yolo_toys.settings import PROJECT_ROOT as ROOT
from yolo_toys.settings import Settings

BIN = Path(sys.executable).parent
MANY = [f"a photo of thing number {i}" for i in range(64)]  # the most labels or prompts a request may give
SQUARE = "6324x6324"


@dataclass(frozen=True)
class Case:
    task: str
    route: str
    fields: dict
    shapes: tuple[str, ...] = tuple(SHAPES)
    note: str = ""


CASES = [
    Case("detect", "/detect", {"model": "yolo11n"}),
    Case("detect", "/detect", {"model": "yolov8n-pt", "imgsz": 1280, "conf": 0, "max_det": 1000}, (SQUARE, "1x1")),
    Case("detect", "/detect", {"model": "detr-r50"}),
    Case("detect", "/detect", {"model": "owlvit-b32", "prompts": MANY}),
    Case("segment", "/segment", {"model": "yolo11n-seg"}),
    Case("segment", "/segment", {"model": "yolo11n-seg", "conf": 0, "max_det": 300}, (SQUARE,), "at the mask limit"),
    Case("segment", "/segment", {"model": "yolo11n-seg", "conf": 0, "imgsz": 1280, "max_det": 75}, (SQUARE,),
         "at the mask limit"),
    Case("segment", "/segment", {"model": "segformer-b0", "conf": 0}),
    Case("pose", "/pose", {"model": "yolov8n-pose"}),
    Case("pose", "/pose", {"model": "yolov8n-pose", "conf": 0, "max_det": 1000}, (SQUARE,)),
    Case("obb", "/obb", {"model": "yolov8n-obb"}),
    Case("obb", "/obb", {"model": "yolov8n-obb", "conf": 0, "max_det": 1000}, (SQUARE,)),
    Case("obb", "/obb", {"model": "yolov8n-obb", "conf": 0, "max_det": 1000, "imgsz": 1280}, (SQUARE,)),
    Case("classify", "/classify", {"model": "yolo11n-cls"}),
    Case("classify", "/classify", {"model": "vit-b16", "top_k": 100}),
    Case("zero_shot_classify", "/zero_shot_classify", {"model": "clip-b32", "labels": MANY}),
    Case("caption", "/caption", {"model": "blip-caption"}),
    Case("caption", "/caption", {"model": "blip-caption", "max_new_tokens": 128}, (SQUARE,)),
    Case("vqa", "/vqa", {"model": "blip-vqa", "question": "what is in the picture?"}),
    Case("vqa", "/vqa", {"model": "blip-vqa", "question": "what is in the picture?", "max_new_tokens": 128}, (SQUARE,)),
    Case("depth", "/depth", {"model": "depth-anything-s"}),
    Case("annotate", "/annotate", {"task": "depth", "model": "depth-anything-s"}, (SQUARE, "2000x20000")),
    Case("annotate", "/annotate", {"task": "segment", "model": "yolo11n-seg", "conf": 0}, (SQUARE, "1x40000000")),
    Case("annotate", "/annotate", {"task": "classify", "model": "yolo11n-cls"}, (SQUARE, "1x40000000")),
]
BATCHES = [Case("detect", "/detect", {"model": "yolo11n"}, (SQUARE,)), Case("depth", "/depth", {"model": "depth-anything-s"}, (SQUARE,))]

ULTRALYTICS = {  # name: (task, weights under the shared folder, or a random-weight YAML built here)
    "yolo11n": ("detect", "yolo11n_int8_openvino_model"),
    "yolov8n-pt": ("detect", "yolov8n.yaml"),
    "yolo11n-seg": ("segment", "yolo11n-seg_int8_openvino_model"),
    "yolov8n-pose": ("pose", "yolov8n-pose_int8_openvino_model"),
    "yolo11n-cls": ("classify", "yolo11n-cls_saved_model/yolo11n-cls_int8.tflite"),
    "yolov8n-obb": ("obb", "yolov8n-obb.yaml"),
}


# ---- models, catalog, store --------------------------------------------------------------------------


def _ultralytics_weights(work: Path) -> dict[str, Path]:
    import torch
    from ultralytics import YOLO

    shared = weights_dir()
    if shared is None:
        raise SystemExit("no pretrained weights: put ../shared/weights beside the project or set YOLO_TOYS_WEIGHTS")
    paths = {}
    for name, (_task, source) in ULTRALYTICS.items():
        paths[name] = work / f"{name}.pt" if source.endswith(".yaml") else shared / source
        if source.endswith(".yaml") and not paths[name].exists():
            torch.manual_seed(0)
            YOLO(source).save(str(paths[name]))
    return paths


def prepare(work: Path) -> dict[str, str]:
    """Build the models, write the catalog (the shipped runner settings), import it into a private store."""
    work.mkdir(parents=True, exist_ok=True)
    models = [{"name": n, "family": "ultralytics", "task": task, "description": source,
               "sources": [{"local": str(path)}]}
              for (n, (task, source)), path in zip(ULTRALYTICS.items(), _ultralytics_weights(work).values(), strict=True)]  # fmt: skip
    for name, (hf_task, task, label) in REAL_SIZE.items():
        folder = build(name, work / "realsize")
        models.append({"name": name, "family": "transformers", "task": task, "hf_task": hf_task,
                       "description": label, "sources": [{"local": str(folder)}]})  # fmt: skip
    catalog = {"runners": yaml.safe_load(DEFAULT_CATALOG.read_text())["runners"], "models": models}
    (work / "catalog.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml"), "YOLO_TOYS_CATALOG": str(work / "catalog.yaml"),
           "YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "True", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    subprocess.run([sys.executable, "-m", "models", "import"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return env


# ---- the server's processes and their peak memory ----------------------------------------------------


def status_mb(process: psutil.Process, field_name: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of a process, in MB."""
    line = next(x for x in Path(f"/proc/{process.pid}/status").read_text().splitlines() if x.startswith(field_name))
    return int(line.split()[1]) / 1024


def reset_peaks(processes: dict[str, psutil.Process]) -> None:
    for p in processes.values():
        Path(f"/proc/{p.pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS


# ---- measuring -----------------------------------------------------------------------------------------


@dataclass
class Row:
    task: str
    route: str
    model: str
    options: str
    shape: str
    status: int
    seconds: float
    runner: str
    runner_idle_mb: float
    runner_peak_mb: float
    front_peak_mb: float
    detail: str = ""
    concurrent: int = 1
    statuses: dict = field(default_factory=dict)
    load: float = 0.0  # the 1-minute load average after the request: > the cores' count means others were busy


def _form(fields: dict) -> dict[str, str]:
    return {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in fields.items()}


def _options(case: Case) -> str:
    text = ", ".join(f"{k} {len(v) if isinstance(v, list) else v}" for k, v in case.fields.items() if k not in ("model", "task"))
    return "; ".join(filter(None, [text, case.note])) or "defaults"


def _post(url: str, case: Case, shape: str) -> tuple[int, str, float]:
    width, height = SHAPES[shape]
    started = time.perf_counter()
    resp = httpx.post(url + case.route, data=_form(case.fields), files={"image": ("x.png", png(width, height), "image/png")},
                      timeout=600)  # fmt: skip
    seconds = time.perf_counter() - started
    detail = resp.json().get("detail", "") if resp.status_code != 200 else ""
    return resp.status_code, str(detail)[:160], seconds


def measure(url: str, case: Case, shape: str, runner_of: dict[str, str], concurrent: int = 1) -> Row:
    """`concurrent` requests of one shape at once; the runner's and the front's peak memory meanwhile."""
    procs = workers(url)
    runner = runner_of[case.fields.get("model", "")]
    idle = status_mb(procs[runner], "VmRSS")
    reset_peaks(procs)
    with ThreadPoolExecutor(concurrent) as pool:
        answers = list(pool.map(lambda _: _post(url, case, shape), range(concurrent)))
    statuses: dict[str, int] = {}
    for status, _, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    status, detail, _ = max(answers, key=lambda a: a[2])
    return Row(case.task, case.route, case.fields.get("model", ""), _options(case), shape, status,
               round(max(a[2] for a in answers), 2), runner, round(idle), round(status_mb(procs[runner], "VmHWM")),
               round(status_mb(procs["yolo_toys"], "VmHWM")), detail, concurrent, statuses,
               round(os.getloadavg()[0], 1))  # fmt: skip


def log(message: str) -> None:
    print(f"[bench.limits {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(url: str, cases: list[Case], batch: int) -> list[Row]:
    runner_of = {name: "ultralytics" for name in ULTRALYTICS} | {name: "transformers" for name in REAL_SIZE}
    rows = []
    for case in cases:
        for shape in case.shapes:
            row = measure(url, case, shape, runner_of)
            log(f"{case.route} {row.model} [{row.options}] {shape}: {row.status} in {row.seconds:.2f} s, "
                f"{row.runner} peak {row.runner_peak_mb:.0f} MB (idle {row.runner_idle_mb:.0f}), front {row.front_peak_mb:.0f} MB")  # fmt: skip
            rows.append(row)
    for case in [c for c in BATCHES if any(c.task == x.task for x in cases)]:
        row = measure(url, case, SQUARE, runner_of, concurrent=batch)
        log(f"{case.route} {row.model} x{batch} {SQUARE}: {row.statuses} in {row.seconds:.2f} s, peak {row.runner_peak_mb:.0f} MB")
        rows.append(row)
    return rows


# ---- the report ----------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")  # fmt: skip
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")))
    versions = subprocess.run(
        [sys.executable, "-c", "import bentoml, torch, ultralytics, transformers as t; "
         "print(bentoml.__version__, torch.__version__, ultralytics.__version__, t.__version__)"],
        capture_output=True, text=True).stdout.split()  # fmt: skip
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 2**20, 1),
            "versions": dict(zip(["bentoml", "torch", "ultralytics", "transformers"], versions, strict=False))}  # fmt: skip


def limits() -> dict[str, float]:
    """The limits this run served with (the environment's, as the service reads them)."""
    current = Settings.from_env()
    names = ("max_upload_bytes", "max_pixels", "max_input_aspect", "max_imgsz", "max_mask_pixels", "max_class_scores",
             "max_rotated_nms")  # fmt: skip
    return {name: getattr(current, name) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", help="only these tasks (e.g. depth classify); prints, writes nothing")
    parser.add_argument("--batch", type=int, default=8, help="concurrent largest squares for the batch rows")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".work" / "limits")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.cases or c.task in args.cases]
    started = datetime.datetime.now(datetime.timezone.utc)
    log(f"preparing models in {args.work}")
    env = prepare(args.work)
    command = [str(BIN / "bentoml"), "serve", "service:YoloToys", "--host", "127.0.0.1", "--port", "{port}"]
    with serving(command, env, None, "/readyz", args.work / "serve.log", timeout=900) as url:
        idle = {name: round(status_mb(p, "VmRSS")) for name, p in workers(url).items()}
        log(f"serving at {url}; idle RSS {idle} MB")
        rows = run(url, cases, args.batch)
    results = {"date": started.isoformat(timespec="seconds"), "command": "python -m bench.limits " + " ".join(sys.argv[1:]),
               "machine": machine(), "limits": limits(), "idle_mb": idle, "rows": [asdict(r) for r in rows],
               "seconds_total": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds())}  # fmt: skip
    if args.cases:
        return
    from bench.limits_report import write

    (args.out / "limits.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    write(results, args.out / "limits.md")
    log(f"wrote {args.out / 'limits.md'} in {results['seconds_total']} s")


if __name__ == "__main__":
    main()
