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
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runners import exported
from runners.exported import ExportedModel, top_candidates
from runners.family import Family, Inference, LoadedModel, SourceUnavailable, choose_device
from runners.limits import central_part
from runners.postprocess import detections, label_lookup, polygons, top_k
from yolo_toys.errors import ServiceError
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
from yolo_toys.settings import settings

if TYPE_CHECKING:
    from models.catalog import ModelEntry

FAMILY_NAME = "ultralytics"
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
    yolo: Any = None  # Ultralytics' model, for what the lean path does not serve
    exported: ExportedModel | None = None  # the lean path (runners/exported.py)
    rect_letterbox: bool  # the letterbox follows the image shape: batch only equal shapes
    predictor: type | None = None  # Ultralytics' own for the task, unless bounded here (OBB)

    def describe(self) -> str:
        return super().describe() + (", lean path" if self.exported is not None else "")


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


def to_result(r: Any, model: LoadedModel, job: InferenceJob, timings: Timings, size: tuple[int, int] | None = None) -> TaskResult:
    """`size`: the upload's (height, width) when the model saw a part of it (classify); else the result's."""
    height, width = size or r.orig_shape
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


# ---- bounded cost: what a request may make the model allocate ------------------------------------------


def _imgsz(model: LoadedYolo, options: PredictOptions) -> int:
    """The request's inference size; a larger one than the limit (or the model's own) is refused.

    A dynamic model's activations grow with imgsz squared: yolo11n-seg (OpenVINO) at 4096 needs more
    than 23 GB.
    """
    limit = max(settings().max_imgsz, model.imgsz or 0)
    if options.imgsz is not None and options.imgsz > limit:
        raise ServiceError(422, "imgsz not supported", f"imgsz {options.imgsz} is over the limit {limit} for {model.entry.name}")
    return options.imgsz or model.imgsz or 640


def _check_masks(model: LoadedYolo, imgsz: int, options: PredictOptions) -> None:
    """Instance masks are made at the letterboxed size, one per detection: max_det x imgsz² bytes, four
    times over while they are upsampled (1000 masks at 640 cost 2 GB and 7 s)."""
    side = math.ceil(imgsz / 32) * 32  # Ultralytics rounds imgsz up to the stride
    pixels, limit = options.max_det * side * side, settings().max_mask_pixels
    if pixels > limit:
        raise ServiceError(422, "too many mask pixels",
                           f"max_det {options.max_det} x {side}x{side} masks = {pixels:,} mask pixels is over the limit "
                           f"{limit:,} for {model.entry.name}; lower max_det or imgsz")  # fmt: skip


@cache
def _bounded_obb_predictor() -> type:
    """One class for the process: Ultralytics rebuilds its predictor whenever it is given another class."""
    from ultralytics.models.yolo.obb import OBBPredictor

    class BoundedOBBPredictor(OBBPredictor):
        def postprocess(self, preds: Any, img: Any, orig_imgs: Any, **kwargs: Any) -> Any:
            if not getattr(self.model, "end2end", False):
                preds = top_candidates(preds, settings().max_rotated_nms)
            return super().postprocess(preds, img, orig_imgs, **kwargs)

    return BoundedOBBPredictor


def _load_exported(entry: ModelEntry, weights: Path, fmt: str) -> LoadedYolo | None:
    """An OpenVINO or ONNX export on the lean path (runners/exported.py); None: it goes through `predict`.

    Not on it: exports without Ultralytics metadata, NMS inside the graph, a batch other than 1, and dynamic INT8 OpenVINO
    models on CPUs with AMX, which OpenVINO crashes on (Ultralytics recompiles those per input shape).
    """
    if fmt not in exported.FORMATS or not settings().lean_path:
        return None
    path = next(weights.glob("*.xml")) if weights.is_dir() else weights
    meta = exported.read_metadata(path)
    if meta is None or meta.end2end or meta.batch != 1 or (fmt == "openvino" and exported.amx_dynamic_int8(path)):
        return None
    if meta.task != entry.task:
        raise SourceUnavailable(f"the weights are for task {meta.task.value}, the catalog says {entry.task.value}")
    from models.catalog import load_catalog

    model = ExportedModel(path, fmt, meta, load_catalog().runner(FAMILY_NAME).cpu_threads())
    model.infer([DecodedImage(np.zeros((64, 64, 3), np.uint8), "BGR", "warm-up")], PredictOptions())
    dynamic = model.runtime.dynamic
    return LoadedYolo(entry=entry, exported=model, format=fmt, labels=meta.names, imgsz=model.imgsz,
                      fixed_imgsz=not dynamic, rect_letterbox=dynamic)  # fmt: skip


# ---- the family ---------------------------------------------------------------------------------------


class UltralyticsFamily(Family):
    name = FAMILY_NAME

    def load(self, entry: ModelEntry, weights: Path) -> LoadedYolo:
        fmt = weights_format(weights)
        device, half = choose_device(entry, runs_on_gpu=fmt in GPU_FORMATS)
        if device == "cpu" and (lean := _load_exported(entry, weights, fmt)) is not None:
            return lean
        yolo = _load_yolo(weights, entry.task)
        predictor = _bounded_obb_predictor() if entry.task == Task.obb else None
        warmup = np.zeros((64, 64, 3), dtype=np.uint8)
        yolo.predict(warmup, device=device, quantize=16 if half else None, verbose=False, predictor=predictor)
        backend = yolo.predictor.model
        dynamic = backend.format == "pt" or bool(getattr(backend, "dynamic", False))
        yolo.predict([warmup, warmup], device=device, quantize=16 if half else None, verbose=False, predictor=predictor)
        return LoadedYolo(
            entry=entry, yolo=yolo, format=fmt, device=device, half=half,
            labels={int(k): str(v) for k, v in yolo.names.items()}, imgsz=int(max(yolo.predictor.imgsz)),
            fixed_imgsz=not dynamic, rect_letterbox=dynamic and backend.format != "imx", predictor=predictor,
        )  # fmt: skip

    def fit(self, model: LoadedModel, image: DecodedImage, options: PredictOptions) -> DecodedImage:
        """Letterboxing bounds every task's input by imgsz (itself bounded); classify resizes the short
        side and centre-crops, so it gets the image's central part; segment's masks are bounded."""
        assert isinstance(model, LoadedYolo)
        imgsz = _imgsz(model, options)
        if model.entry.task == Task.classify:
            return central_part(image, settings().max_input_aspect)
        if model.entry.task == Task.segment:
            _check_masks(model, imgsz, options)
        return image

    def group_key(self, model: LoadedModel, image: DecodedImage) -> Hashable:
        assert isinstance(model, LoadedYolo)
        return image.shape if model.rect_letterbox else None

    def infer(self, model: LoadedModel, images: list[DecodedImage], options: PredictOptions) -> Inference:
        assert isinstance(model, LoadedYolo)
        if model.exported is not None:
            return model.exported.infer(images, options)
        results = model.yolo.predict(
            [image.bgr for image in images], conf=options.conf, iou=options.iou, imgsz=options.imgsz or model.imgsz,
            max_det=options.max_det, classes=list(options.classes) if options.classes is not None else None,
            device=model.device, quantize=16 if model.half else None, verbose=False, predictor=model.predictor,
        )  # fmt: skip
        speed, n = results[0].speed, len(images)  # Ultralytics gives each image the call's stages / n
        return Inference(results, *((speed.get(s) or 0.0) * n for s in ("preprocess", "inference", "postprocess")))

    def to_result(self, model: LoadedModel, output: Any, image: DecodedImage, job: InferenceJob,
                  timings: Timings) -> TaskResult:  # fmt: skip
        return to_result(output, model, job, timings, image.shape)

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
