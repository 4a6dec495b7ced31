"""The in-process limit: the model called directly, from encoded image bytes to its result objects.

Decode (OpenCV for Ultralytics, PIL for transformers, as their docs do), preprocess, inference and
postprocess, in one Python process with nothing else: what serving can at best approach on the same
cores. Run as `python -m bench.limit MODEL PATH --batches 1 4 8 --seconds 10` (prints JSON).
"""

from __future__ import annotations

import argparse
import io
import os
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
