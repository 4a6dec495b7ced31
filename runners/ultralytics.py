"""The Ultralytics family: detect, segment, pose, classify and obb, in any format Ultralytics loads.

Ultralytics letterboxes, infers, runs NMS and scales back in one `predict` call over the chunk;
this module groups images so that a batched result equals the same model called alone (the
letterbox of a dynamic model follows the image shape), and turns `Results` into the shared schemas.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runners.family import Family, Inference, LoadedModel, SourceUnavailable, choose_device
from runners.postprocess import detections, label_lookup, polygons, top_k
from yolo_toys.imaging import DecodedImage
from yolo_toys.schemas import (
    ClassifyResult,
    DetectResult,
    ImageSize,
    InferenceJob,
    Keypoint,
    ObbResult,
    OrientedDetection,
    PoseInstance,
    PoseResult,
    PredictOptions,
    RotatedBox,
    SegmentInstance,
    SegmentResult,
    Task,
    TaskResult,
    Timings,
)

if TYPE_CHECKING:
    from models.catalog import ModelEntry

COCO_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
GPU_FORMATS = {"pytorch", "torchscript", "onnx", "tensorrt"}
_SUFFIX_FORMATS = {".pt": "pytorch", ".onnx": "onnx", ".tflite": "tflite", ".engine": "tensorrt",
                   ".torchscript": "torchscript", ".mlpackage": "coreml"}  # fmt: skip


def weights_format(path: Path) -> str:
    if path.name.endswith("_openvino_model"):
        return "openvino"
    return _SUFFIX_FORMATS.get(path.suffix, path.suffix.lstrip(".") or "unknown")


@dataclass(kw_only=True)
class LoadedYolo(LoadedModel):
    yolo: Any
    rect_letterbox: bool  # the letterbox follows the image shape: batch only equal shapes


def _load_yolo(weights: Path, task: Task) -> Any:
    from ultralytics import YOLO

    yolo = YOLO(str(weights))  # no task=: Ultralytics would echo it instead of reading the weights
    if yolo.task != task.value:
        raise SourceUnavailable(f"the weights are for task {yolo.task}, the catalog says {task.value}")
    return yolo


# ---- raw Results into the shared schemas -----------------------------------------------------------


def _boxes(r: Any, model: LoadedModel) -> list:
    if r.boxes is None:
        return []
    b = r.boxes
    return detections(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy().astype(int), label_lookup(model.labels))


def _segment(r: Any, model: LoadedModel, common: dict) -> SegmentResult:
    """Each instance with one outline per part of its mask, in original-image pixels."""
    from ultralytics.utils.ops import scale_coords

    dets = _boxes(r, model)
    masks = r.masks.data.byte().cpu().numpy() if r.masks is not None else [None] * len(dets)
    instances = []
    for det, mask in zip(dets, masks, strict=True):
        outlines = [] if mask is None else [
            scale_coords(mask.shape, np.asarray(poly, np.float32), r.orig_shape, normalize=False) for poly in polygons(mask)
        ]  # fmt: skip
        instances.append(SegmentInstance(**det.model_dump(), polygons=[[(float(x), float(y)) for x, y in o] for o in outlines]))
    return SegmentResult(instances=instances, **common)


def _pose(r: Any, model: LoadedModel, common: dict) -> PoseResult:
    dets = _boxes(r, model)
    kpts = r.keypoints.data.cpu().numpy() if r.keypoints is not None else np.zeros((len(dets), 0, 3))
    names = COCO_KEYPOINTS if kpts.shape[1] == len(COCO_KEYPOINTS) else [f"kp{i}" for i in range(kpts.shape[1])]
    instances = [
        PoseInstance(**d.model_dump(), keypoints=[
            Keypoint(name=n, x=float(p[0]), y=float(p[1]), score=float(p[2]) if len(p) > 2 else 1.0)
            for n, p in zip(names, points, strict=True)
        ])
        for d, points in zip(dets, kpts, strict=True)
    ]  # fmt: skip
    return PoseResult(instances=instances, **common)


def _obb(r: Any, model: LoadedModel, common: dict) -> ObbResult:
    if r.obb is None:
        return ObbResult(detections=[], **common)
    o, label_of = r.obb, label_lookup(model.labels)
    rows = zip(o.xywhr.cpu().numpy().tolist(), o.xyxyxyxy.cpu().numpy().tolist(), o.conf.cpu().numpy().tolist(),
               o.cls.cpu().numpy().astype(int).tolist(), strict=True)  # fmt: skip
    return ObbResult(detections=[
        OrientedDetection(rbox=RotatedBox(cx=cx, cy=cy, width=w, height=h, angle=math.degrees(rad),
                                          corners=[(float(x), float(y)) for x, y in corners]),
                          score=s, class_id=c, label=label_of(c))
        for (cx, cy, w, h, rad), corners, s, c in rows
    ], **common)  # fmt: skip


def to_result(r: Any, model: LoadedModel, job: InferenceJob, timings: Timings) -> TaskResult:
    height, width = r.orig_shape
    common = {"model": model.entry.name, "image": ImageSize(width=width, height=height), "timings": timings}
    task = model.entry.task
    if task == Task.detect:
        return DetectResult(detections=_boxes(r, model), **common)
    if task == Task.classify:
        probs = r.probs.data.cpu().numpy().astype(float)
        return ClassifyResult(top_k=top_k(probs, job.options.top_k, label_lookup(model.labels)), **common)
    converters = {Task.segment: _segment, Task.pose: _pose, Task.obb: _obb}
    if task not in converters:
        raise ValueError(f"unsupported task {task}")
    return converters[task](r, model, common)


# ---- the family ---------------------------------------------------------------------------------------


class UltralyticsFamily(Family):
    name = "ultralytics"

    def load(self, entry: ModelEntry, weights: Path) -> LoadedYolo:
        fmt = weights_format(weights)
        yolo = _load_yolo(weights, entry.task)
        device, half = choose_device(entry, runs_on_gpu=fmt in GPU_FORMATS)
        warmup = np.zeros((64, 64, 3), dtype=np.uint8)
        yolo.predict(warmup, device=device, quantize=16 if half else None, verbose=False)
        backend = yolo.predictor.model
        dynamic = backend.format == "pt" or bool(getattr(backend, "dynamic", False))
        yolo.predict([warmup, warmup], device=device, quantize=16 if half else None, verbose=False)
        return LoadedYolo(
            entry=entry, yolo=yolo, format=fmt, device=device, half=half,
            labels={int(k): str(v) for k, v in yolo.names.items()}, imgsz=int(max(yolo.predictor.imgsz)),
            fixed_imgsz=not dynamic, rect_letterbox=dynamic and backend.format != "imx",
        )  # fmt: skip

    def group_key(self, model: LoadedModel, image: DecodedImage) -> Hashable:
        assert isinstance(model, LoadedYolo)
        return image.shape if model.rect_letterbox else None

    def infer(self, model: LoadedModel, images: list[DecodedImage], options: PredictOptions) -> Inference:
        assert isinstance(model, LoadedYolo)
        results = model.yolo.predict(
            [image.bgr for image in images], conf=options.conf, iou=options.iou, imgsz=options.imgsz or model.imgsz,
            max_det=options.max_det, classes=list(options.classes) if options.classes is not None else None,
            device=model.device, quantize=16 if model.half else None, verbose=False,
        )  # fmt: skip
        speed, n = results[0].speed, len(images)  # Ultralytics gives each image the call's stages / n
        return Inference(results, *((speed.get(s) or 0.0) * n for s in ("preprocess", "inference", "postprocess")))

    def to_result(self, model: LoadedModel, output: Any, image: DecodedImage, job: InferenceJob,
                  timings: Timings) -> TaskResult:  # fmt: skip
        return to_result(output, model, job, timings)

    # ---- import ------------------------------------------------------------------------------------

    def check_entry(self, entry: ModelEntry) -> None:
        if entry.task not in (Task.detect, Task.segment, Task.pose, Task.classify, Task.obb):
            raise ValueError(f"Ultralytics models do not serve {entry.task.value}")

    def download(self, entry: ModelEntry, name: str, workdir: Path) -> Path:
        from ultralytics.utils.downloads import attempt_download_asset

        try:
            local = Path(attempt_download_asset(workdir / name))
        except Exception as exc:  # no internet, unknown asset, ...
            raise SourceUnavailable(f"download of {name} failed: {exc}".splitlines()[0]) from None
        if not local.is_file():
            raise SourceUnavailable(f"download of {name} produced no file")
        return local

    def prepare(self, entry: ModelEntry, weights: Path, workdir: Path) -> Path:
        """`export: engine`: a TensorRT FP16 engine with a dynamic batch up to the runner's GPU batch cap.

        An engine only runs with the GPU model and TensorRT version it was built with: import it on
        the serving machine. Ultralytics installs `tensorrt` on first use (needs internet).
        """
        if entry.export is None:
            return weights
        import torch

        from models.catalog import load_catalog

        if not torch.cuda.is_available():
            raise SourceUnavailable("TensorRT export needs a CUDA GPU; none is visible here")
        batch = load_catalog().batching(entry, on_gpu=True).max_batch_size
        work = workdir / f"{entry.name}-export"
        work.mkdir()
        copied = Path(shutil.copy2(weights, work))
        try:
            return Path(_load_yolo(copied, entry.task).export(format="engine", quantize=16, dynamic=True, batch=batch, device=0))
        except Exception as exc:
            raise SourceUnavailable(f"TensorRT export failed: {exc}".splitlines()[0]) from None

    def inspect(self, entry: ModelEntry, weights: Path) -> dict[str, Any]:
        yolo = _load_yolo(weights, entry.task)
        return {"class_names": {int(k): str(v) for k, v in yolo.names.items()}}


FAMILY = UltralyticsFamily()
