"""The Ultralytics family: detect, segment, pose, classify and obb, any format Ultralytics loads.

One BentoML service holds every Ultralytics model of the catalog. Requests from all clients meet
in one adaptive batch; the batch is split per model and options (and per image shape where the
letterbox depends on it) so that a served result equals the same model called in-process.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from prometheus_client import Histogram

import drawing
from models.catalog import ModelEntry, load_catalog
from models.store import stored
from runners.batch import BATCH_BUCKETS, Member, Outcomes, load_all, run_batch, service_config
from runners.batcher import Batcher
from schemas import (
    Box,
    Classification,
    ClassifyResult,
    Detection,
    DetectResult,
    ImageSize,
    InferenceJob,
    Keypoint,
    ModelInfo,
    ObbResult,
    OrientedDetection,
    Outcome,
    PoseInstance,
    PoseResult,
    RotatedBox,
    SegmentInstance,
    SegmentResult,
    Task,
    Timings,
)

log = logging.getLogger("yolo_toys.ultralytics")

CATALOG = load_catalog()
SETTINGS = CATALOG.runner("ultralytics")

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip

MODEL_BATCH = Histogram(
    "yolo_toys_model_batch_size",
    "Images per inference call, per model (after the adaptive batch is split per model).",
    ["model"],
    buckets=BATCH_BUCKETS,
)


def weights_format(path: Path) -> str:
    name = path.name
    if name.endswith("_openvino_model"):
        return "openvino"
    return {".pt": "pytorch", ".onnx": "onnx", ".tflite": "tflite", ".engine": "tensorrt",
            ".torchscript": "torchscript", ".mlpackage": "coreml"}.get(path.suffix, path.suffix.lstrip(".") or "unknown")  # fmt: skip


def pick_device(entry: ModelEntry, fmt: str) -> tuple[str, bool]:
    """CUDA with FP16 when a GPU is visible and the format runs on it; CPU otherwise."""
    import torch

    gpu_formats = {"pytorch", "torchscript", "onnx", "tensorrt"}
    use_cuda = entry.device != "cpu" and fmt in gpu_formats and torch.cuda.is_available()
    if entry.device == "cuda" and not use_cuda:
        log.warning("%s asks for cuda but none is usable here; running on CPU", entry.name)
    half = use_cuda and entry.half != "off"
    return ("cuda:0" if use_cuda else "cpu"), half


@dataclass
class LoadedModel:
    entry: ModelEntry
    yolo: Any
    names: dict[int, str]
    source: str
    format: str
    device: str
    half: bool
    imgsz: int
    fixed_imgsz: bool
    rect_letterbox: bool  # the letterbox follows the image shape: batch only equal shapes
    lock: threading.Lock = field(default_factory=threading.Lock)


def load(entry: ModelEntry) -> LoadedModel:
    from ultralytics import YOLO

    model = stored(entry.name)
    if model is None:
        raise FileNotFoundError(f"not in the model store; run `python -m models import {entry.name}`")
    weights = Path(model.path) / model.info.metadata["entry"]
    fmt = weights_format(weights)
    yolo = YOLO(str(weights))  # no task=: Ultralytics would echo it instead of reading the weights
    if yolo.task != entry.task.value:
        raise ValueError(f"the weights are for task {yolo.task}, the catalog says {entry.task.value}")
    device, half = pick_device(entry, fmt)
    warmup = np.zeros((64, 64, 3), dtype=np.uint8)
    yolo.predict(warmup, device=device, quantize=16 if half else None, verbose=False)
    predictor = yolo.predictor
    imgsz = int(max(predictor.imgsz))
    backend = predictor.model
    dynamic = backend.format == "pt" or bool(getattr(backend, "dynamic", False))
    rect = backend.format == "pt" or (bool(getattr(backend, "dynamic", False)) and backend.format != "imx")
    yolo.predict([warmup, warmup], device=device, quantize=16 if half else None, verbose=False)
    return LoadedModel(
        entry=entry,
        yolo=yolo,
        names={int(k): str(v) for k, v in yolo.names.items()},
        source=str(model.info.metadata.get("source", "")),
        format=fmt,
        device=device,
        half=half,
        imgsz=imgsz,
        fixed_imgsz=not dynamic,
        rect_letterbox=rect,
    )


# ---- postprocessing into the shared schemas ----------------------------------------------------


def _detections(r: Any, names: dict[int, str]) -> list[Detection]:
    if r.boxes is None:
        return []
    xyxy = r.boxes.xyxy.cpu().numpy().tolist()
    conf = r.boxes.conf.cpu().numpy().tolist()
    cls = r.boxes.cls.cpu().numpy().astype(int).tolist()
    return [
        Detection(box=Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]), score=s, class_id=c, label=names.get(c, str(c)))
        for b, s, c in zip(xyxy, conf, cls, strict=True)
    ]


def to_result(r: Any, loaded: LoadedModel, job: InferenceJob, timings: Timings) -> Any:
    names = loaded.names
    height, width = r.orig_shape
    common = {"model": loaded.entry.name, "image": ImageSize(width=width, height=height), "timings": timings}
    task = loaded.entry.task
    if task == Task.detect:
        return DetectResult(detections=_detections(r, names), **common)
    if task == Task.segment:
        dets = _detections(r, names)
        polygons = r.masks.xy if r.masks is not None else [np.zeros((0, 2))] * len(dets)
        instances = [
            SegmentInstance(**d.model_dump(), polygons=[[(float(x), float(y)) for x, y in poly]] if len(poly) else [])
            for d, poly in zip(dets, polygons, strict=True)
        ]
        return SegmentResult(instances=instances, **common)
    if task == Task.pose:
        dets = _detections(r, names)
        kpts = r.keypoints.data.cpu().numpy() if r.keypoints is not None else np.zeros((len(dets), 0, 3))
        kp_names = COCO_KEYPOINTS if kpts.shape[1] == len(COCO_KEYPOINTS) else [f"kp{i}" for i in range(kpts.shape[1])]
        instances = []
        for d, points in zip(dets, kpts, strict=True):
            keypoints = [
                Keypoint(name=n, x=float(p[0]), y=float(p[1]), score=float(p[2]) if len(p) > 2 else 1.0)
                for n, p in zip(kp_names, points, strict=True)
            ]
            instances.append(PoseInstance(**d.model_dump(), keypoints=keypoints))
        return PoseResult(instances=instances, **common)
    if task == Task.classify:
        probs = r.probs.data.cpu().numpy().astype(float)
        k = min(job.options.top_k, probs.shape[0])
        top = np.argsort(-probs, kind="stable")[:k]
        return ClassifyResult(
            top_k=[Classification(class_id=int(i), label=names.get(int(i), str(i)), score=float(probs[i])) for i in top],
            **common,
        )
    if task == Task.obb:
        detections = []
        if r.obb is not None:
            xywhr = r.obb.xywhr.cpu().numpy().tolist()
            corners = r.obb.xyxyxyxy.cpu().numpy().tolist()
            conf = r.obb.conf.cpu().numpy().tolist()
            cls = r.obb.cls.cpu().numpy().astype(int).tolist()
            for (cx, cy, w, h, rad), pts, s, c in zip(xywhr, corners, conf, cls, strict=True):
                rbox = RotatedBox(cx=cx, cy=cy, width=w, height=h, angle=math.degrees(rad),
                                  corners=[(float(x), float(y)) for x, y in pts])
                detections.append(OrientedDetection(rbox=rbox, score=s, class_id=c, label=names.get(c, str(c))))
        return ObbResult(detections=detections, **common)
    raise ValueError(f"unsupported task {task}")


# ---- the service -------------------------------------------------------------------------------


@bentoml.service(name="ultralytics", **service_config(SETTINGS))
class UltralyticsRunner:
    def __init__(self) -> None:
        self.models, self.missing = load_all(
            "ultralytics", CATALOG.family("ultralytics"), load,
            lambda m: f"{m.entry.task.value}, {m.format}, {m.device}{' fp16' if m.half else ''}, imgsz {m.imgsz}",
        )  # fmt: skip
        self.on_gpu = any(str(m.device).startswith("cuda") for m in self.models.values())
        self.batcher = Batcher("ultralytics", self.run, SETTINGS.batch_cap(self.on_gpu), SETTINGS.max_latency_ms)

    @bentoml.api
    def status(self) -> list[ModelInfo]:
        """What this runner serves and why the rest of its catalog is not loaded."""
        infos = []
        for entry in CATALOG.family("ultralytics"):
            m = self.models.get(entry.name)
            infos.append(ModelInfo(
                name=entry.name, family=entry.family, task=entry.task, default=entry.default,
                loaded=m is not None, reason=self.missing.get(entry.name),
                source=m.source if m else None, format=m.format if m else None,
                device=m.device if m else None, half=m.half if m else False,
                imgsz=m.imgsz if m else None, fixed_imgsz=m.fixed_imgsz if m else False,
                labels=m.names if m else {}, batching=CATALOG.batching(entry, self.on_gpu),
            ))  # fmt: skip
        return infos

    @bentoml.api
    async def predict(self, jobs: list[InferenceJob]) -> Outcomes:
        """Queue the jobs for the next batch (runners/batcher.py) and answer when they are done."""
        return await self.batcher.submit(jobs)

    def run(self, jobs: list[InferenceJob]) -> list[Outcome]:
        """One batch, on the inference thread."""
        return run_batch(
            jobs, self.models, self.missing, cap=lambda entry: CATALOG.batching(entry, self.on_gpu).max_batch_size,
            infer=self._infer,
            shape_key=lambda loaded, image: image.shape if loaded.rect_letterbox else None,
        )  # fmt: skip

    def _infer(
        self, loaded: LoadedModel, jobs: list[InferenceJob], chunk: list[Member], outcomes: list[Outcome | None],
    ) -> None:
        """One inference call for images that share a model and options; fills their outcomes."""
        opts = jobs[chunk[0][0]].options
        images = [image.bgr for _, image, _ in chunk]
        with loaded.lock:
            results = loaded.yolo.predict(
                images,
                conf=opts.conf,
                iou=opts.iou,
                imgsz=opts.imgsz or loaded.imgsz,
                max_det=opts.max_det,
                classes=list(opts.classes) if opts.classes is not None else None,
                device=loaded.device,
                quantize=16 if loaded.half else None,
                verbose=False,
            )
        MODEL_BATCH.labels(model=loaded.entry.name).observe(len(images))
        for (i, image, decode_ms), r in zip(chunk, results, strict=True):
            job = jobs[i]
            started = time.perf_counter()
            timings = Timings(
                decode_ms=decode_ms,
                preprocess_ms=r.speed.get("preprocess") or 0.0,
                inference_ms=r.speed.get("inference") or 0.0,
                postprocess_ms=r.speed.get("postprocess") or 0.0,
                batch_size=len(images),
            )
            result = to_result(r, loaded, job, timings)
            result.timings.postprocess_ms += (time.perf_counter() - started) * 1000
            jpeg = drawing.render(image.rgb, result) if job.annotate else None
            outcomes[i] = Outcome(result=result, annotated_jpeg=jpeg)


# `bentoml build` packages the models the service references; reference those in the store now.
UltralyticsRunner.models.extend(
    bentoml.models.BentoModel(model.tag) for entry in CATALOG.family("ultralytics") if (model := stored(entry.name))
)
