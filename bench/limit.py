"""The limits a served model is measured against.

The in-process limit: the model called directly, from encoded image bytes to its result objects.
Decode (OpenCV for Ultralytics, PIL for transformers, as their docs do), preprocess, inference and
postprocess, in one Python process with nothing else: what serving can at best approach on the same
cores. Run as `python -m bench.limit MODEL PATH --batches 1 4 8 --seconds 10` (prints JSON).

The hardware's limit for an OpenVINO export: OpenVINO's own `benchmark_app` (installed with the
`openvino` wheel), inference only, on random inputs: `openvino_limit`. For a PyTorch model (an
Ultralytics `.pt`, a transformers folder) its counterpart: the bare forward pass, `model.model(tensor)`
on random tensors of the shapes the pipeline gives the network (Ultralytics letterboxes a photo alone
to its minimal rectangle, a mixed batch to 640 x 640; ViT takes 224 x 224), with as many torch threads
as the process has cores, at each batch size: `--forward` adds these points (`ForwardPoint`, lines
tagged `forward`) after the pipeline's.
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


class ForwardPoint(BaseModel):
    """The bare forward pass of a PyTorch model on a random tensor: inference only, like `benchmark_app`."""

    batch: int
    threads: int  # torch intra-op threads: the cores the process runs on
    shapes: list[list[int]]  # the input tensors, in turn
    throughput: float  # images per second
    median_ms: float  # per forward call


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


Inputs = Callable[[int], list[object]]  # batch size -> the input tensors the pipeline would give the network


def ultralytics_forward(path: str) -> tuple[Callable[[object], object], Inputs]:
    """The network inside an Ultralytics checkpoint, fused as its predictor runs it, and the shapes the
    predictor letterboxes the photos to: each its own minimal rectangle alone, 640 x 640 in a mixed batch."""
    import cv2
    import torch
    from ultralytics import YOLO
    from ultralytics.data.augment import LetterBox

    network = YOLO(path, task="detect").model.eval()
    network = network.fuse(verbose=False) if hasattr(network, "fuse") else network
    alone = [LetterBox((640, 640), auto=True, stride=32)(image=cv2.imdecode(np.frombuffer(b, np.uint8), 1)).shape[:2]
             for b in photos()]  # fmt: skip

    def inputs(batch: int) -> list[object]:
        shapes = alone if batch == 1 else [(640, 640)]
        return [torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(0)) for h, w in shapes]

    return network, inputs


def transformers_forward(path: str) -> tuple[Callable[[object], object], Inputs]:
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(path).eval()
    size = int(model.config.image_size)
    return lambda tensor: model(pixel_values=tensor), lambda batch: [torch.rand(batch, 3, size, size)]


def forward_points(family: str, path: str, batches: list[int], seconds: float) -> list[ForwardPoint]:
    """`model.model(tensor)` (Ultralytics) or `model(pixel_values=tensor)` (transformers) at each batch size,
    one call after the other for `seconds`, on random tensors of the shapes the pipeline gives the network."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    network, inputs = (ultralytics_forward if family == "ultralytics" else transformers_forward)(path)
    points = []
    for batch in batches:
        tensors = inputs(batch)
        times = _timed(lambda i, ts=tensors: network(ts[i % len(ts)]), seconds)
        points.append(ForwardPoint(batch=batch, threads=torch.get_num_threads(),
                                   shapes=[list(t.shape) for t in tensors], throughput=len(times) * batch / sum(times),
                                   median_ms=float(np.median(times) * 1000)))  # fmt: skip
    return points


def _timed(call: Callable[[int], object], seconds: float) -> list[float]:
    """Seconds of each call (given its index), after two untimed ones, until `seconds` have passed."""
    import torch

    with torch.inference_mode():
        for i in range(2):
            call(i)
        times: list[float] = []
        began = time.perf_counter()
        while time.perf_counter() - began < seconds:
            t = time.perf_counter()
            call(len(times))
            times.append(time.perf_counter() - t)
    return times


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
    parser.add_argument("--forward", action="store_true", help="then the bare forward pass at each batch size")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    build = ultralytics_pipeline if args.family == "ultralytics" else transformers_pipeline
    run = build(args.path)
    data = photos()
    lines = [p.model_dump_json() for p in (measure(run, data, b, args.seconds) for b in args.batches)]
    if args.forward:  # tagged: the caller tells them from the pipeline's points
        lines += ["forward " + p.model_dump_json() for p in forward_points(args.family, args.path, args.batches,
                                                                           args.seconds / 2)]  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
