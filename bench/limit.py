"""The limits a served model is measured against.

The in-process limit: the model called directly, from encoded image bytes to its result objects.
Decode (OpenCV for Ultralytics, PIL for transformers, as their docs do), preprocess, inference and
postprocess, in one Python process with nothing else: what serving can at best approach on the same
cores. Run as `python -m bench.limit MODEL PATH --batches 1 4 8 --seconds 10` (prints JSON).

The hardware's limit for an OpenVINO export: OpenVINO's own `benchmark_app` (installed with the
`openvino` wheel), inference only, on random inputs: `openvino_limit`.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from bench.photos import photos


class LimitPoint(BaseModel):
    batch: int
    images: int
    seconds: float
    throughput: float  # images per second
    p50_ms: float  # per batch call
    p99_ms: float


class HardwarePoint(BaseModel):
    """`benchmark_app` on some cores with one performance hint: inference only, no decode, no pre/postprocessing."""

    hint: str  # latency: one inference at a time; throughput: as many streams as OpenVINO picks for the cores
    cpus: str
    throughput: float  # inferences per second
    median_ms: float


def openvino_limit(xml: Path, cpus: str, hint: str, seconds: float) -> HardwarePoint:
    """OpenVINO's `benchmark_app` on the export `xml`, pinned to `cpus` with `taskset`."""
    command = ["taskset", "-c", cpus, str(Path(sys.executable).parent / "benchmark_app"), "-m", str(xml), "-d", "CPU",
               "-hint", hint, "-t", str(int(seconds))]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    found = {key: re.search(rf"{key}:\s+([\d.]+)", out) for key in ("Throughput", "Median")}
    if not all(found.values()):
        raise RuntimeError(f"benchmark_app printed no throughput or median: {out[-500:]}")
    return HardwarePoint(hint=hint, cpus=cpus, throughput=float(found["Throughput"][1]),
                         median_ms=float(found["Median"][1]))  # fmt: skip


def ultralytics_pipeline(path: str) -> Callable[[list[bytes]], object]:
    import cv2
    import torch
    from ultralytics import YOLO

    model = YOLO(path, task="detect")
    quantize = 16 if torch.cuda.is_available() and Path(path).suffix == ".pt" else None  # as the runner on a GPU

    def run(batch: list[bytes]) -> object:
        images = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in batch]
        return model.predict(images, quantize=quantize, verbose=False)

    return run


def transformers_pipeline(path: str) -> Callable[[list[bytes]], object]:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForImageClassification.from_pretrained(path).eval()

    def run(batch: list[bytes]) -> object:
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in batch]
        with torch.inference_mode():
            logits = model(**processor(images=images, return_tensors="pt")).logits
            return torch.softmax(logits, -1).topk(5)

    return run


def measure(run: Callable[[list[bytes]], object], data: list[bytes], batch: int, seconds: float) -> LimitPoint:
    batches = [[data[(i + k) % len(data)] for k in range(batch)] for i in range(len(data))]
    for b in batches[:3]:
        run(b)
    times: list[float] = []
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        t = time.perf_counter()
        run(batches[len(times) % len(batches)])
        times.append(time.perf_counter() - t)
    total = time.perf_counter() - began
    ms = np.asarray(times) * 1000
    return LimitPoint(batch=batch, images=len(times) * batch, seconds=total, throughput=len(times) * batch / total,
                      p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("family", choices=["ultralytics", "transformers"])
    parser.add_argument("path")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    build = ultralytics_pipeline if args.family == "ultralytics" else transformers_pipeline
    run = build(args.path)
    data = photos()
    points = [measure(run, data, b, args.seconds) for b in args.batches]
    sys.stdout.write("\n".join(p.model_dump_json() for p in points) + "\n")


if __name__ == "__main__":
    main()
