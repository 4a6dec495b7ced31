"""Exported Ultralytics models (OpenVINO, ONNX) on the CPU without Ultralytics' predictor.

`predict` builds a predictor, a data loader and profilers around every call and converts the batch
to float in Python; here a chunk is letterboxed once into one uint8 array, OpenVINO converts it in
its own graph, and the raw outputs go through Ultralytics' own NMS and mask functions into its
`Results`, so runners/ultralytics.py turns them into the schemas unchanged and the answers equal
`predict`'s (tests/test_exported.py checks every task).

Measured on one AMD EPYC core, yolov8n INT8 OpenVINO, bus.jpg: `predict` 24.7 ms per image; here
letterbox 0.6 ms + inference 19.7 ms (the uint8 -> float conversion inside the graph; 3.6 ms more in
numpy) + NMS 0.3 ms. An OpenVINO model with a static batch of 1 runs a chunk as one asynchronous
infer request per image: on several cores its throughput streams run them side by side.
"""

from __future__ import annotations

import ast
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from runners.family import Inference
from yolo_toys.imaging import DecodedImage
from yolo_toys.schemas import PredictOptions, Task
from yolo_toys.settings import settings

PAD = 114  # Ultralytics' letterbox grey
FORMATS = ("openvino", "onnx")
DYNAMIC_IMGSZ = 640  # Ultralytics' default `imgsz`, which `predict` uses for a dynamic export whatever it was exported at


# ---- what the export says of itself -------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    task: Task
    names: dict[int, str]
    imgsz: tuple[int, int]
    stride: int
    end2end: bool
    kpt_shape: tuple[int, int] | None
    batch: int  # the export's batch: the runtimes here run a batch-1 export image by image


def read_metadata(path: Path) -> Metadata | None:
    """The Ultralytics metadata of an export (OpenVINO's metadata.yaml, ONNX's metadata props), without
    loading it; None for an export that has none (a third party's)."""
    from ultralytics.nn.backends.base import BaseBackend

    raw = BaseBackend.read_metadata(path)
    if not raw or "task" not in raw:
        return None
    value = lambda key, default=None: ast.literal_eval(v) if isinstance(v := raw.get(key, default), str) else v  # noqa: E731
    imgsz, args, kpt = value("imgsz", [640, 640]), value("args", {}) or {}, value("kpt_shape")
    return Metadata(task=Task(raw["task"]), names={int(k): str(v) for k, v in value("names", {}).items()},
                    imgsz=(int(imgsz[0]), int(imgsz[-1])), stride=int(raw.get("stride", 32)),
                    end2end=bool(value("end2end", False) or args.get("nms", False)),
                    kpt_shape=tuple(kpt) if kpt else None, batch=int(raw.get("batch", 1)))  # fmt: skip


# ---- letterbox: LetterBox(auto=...) of ultralytics/data/augment.py, for a whole chunk ------------------


def input_shape(image: tuple[int, int], target: tuple[int, int], auto: bool, stride: int) -> tuple[int, int]:
    """The model input (height, width) for an image: `target`, or the image's minimum rectangle when `auto`."""
    if not auto:
        return target
    r = min(target[0] / image[0], target[1] / image[1])
    h, w = max(round(image[0] * r), 1), max(round(image[1] * r), 1)
    return h + (target[0] - h) % stride, w + (target[1] - w) % stride


def letterbox(images: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The images resized into `shape` (height, width), centred on grey, as one (n, h, w, 3) uint8 array."""
    batch = np.full((len(images), *shape, 3), PAD, dtype=np.uint8)
    for out, image in zip(batch, images, strict=True):
        h, w = image.shape[:2]
        r = min(shape[0] / h, shape[1] / w)
        nw, nh = max(round(w * r), 1), max(round(h * r), 1)
        top, left = round((shape[0] - nh) / 2 - 0.1), round((shape[1] - nw) / 2 - 0.1)
        out[top : top + nh, left : left + nw] = image if (w, h) == (nw, nh) else cv2.resize(image, (nw, nh))
    return batch


def classify_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Ultralytics' classify transform for exports: Resize(size) then CenterCrop(size), on PIL as torchvision does."""
    from PIL import Image

    h, w = image.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    resized = Image.fromarray(image)
    if (nw, nh) != (w, h):
        resized = resized.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.asarray(resized.crop((left, top, left + size, top + size)))


# ---- the runtimes ---------------------------------------------------------------------------------------


class Runtime(Protocol):
    dynamic: bool  # the input's height and width follow the image (a `dynamic=True` export)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw outputs, batch first, of an (n, h, w, 3) uint8 BGR batch."""
        ...


class OpenVINORuntime:
    """A compiled OpenVINO model that takes uint8 BGR NHWC and converts it in its graph (bit-identical to
    converting in numpy first, 3.6 ms less per 640x640 image). Given more than one thread it compiles
    with the THROUGHPUT hint and runs a static-batch model's images as parallel infer requests."""

    def __init__(self, xml: Path, threads: int) -> None:
        import openvino as ov
        from openvino.preprocess import ColorFormat, PrePostProcessor

        core = ov.Core()
        model = core.read_model(str(xml))
        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).scale(255.0)
        model = ppp.build()
        shape = model.input().get_partial_shape()
        self.dynamic = shape[1].is_dynamic or shape[2].is_dynamic
        self.batch = None if shape[0].is_dynamic else shape[0].get_length()
        config = {"PERFORMANCE_HINT": "THROUGHPUT" if threads > 1 else "LATENCY", "INFERENCE_NUM_THREADS": threads}
        self.compiled = core.compile_model(model, "CPU", config)
        n = 1 if self.batch is None else self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, n))]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.batch is None or self.batch == len(batch):
            return [np.array(o) for o in self.requests[0].infer({0: batch}).values()]
        parts: list[list[np.ndarray]] = []
        for start in range(0, len(batch), len(self.requests)):  # one image per request, the requests in parallel
            running = self.requests[: len(batch) - start]
            for i, request in enumerate(running):
                request.start_async({0: batch[start + i : start + i + 1]})
            for request in running:
                request.wait()
                parts.append([np.array(t.data) for t in request.output_tensors])
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


class OnnxRuntime:
    """An ONNX Runtime CPU session on `threads` threads; a static-batch model runs image by image."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        shape = self.session.get_inputs()[0].shape
        self.dynamic = not (isinstance(shape[2], int) and isinstance(shape[3], int))
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.name = self.session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(batch[..., ::-1].transpose(0, 3, 1, 2)).astype(np.float32) / 255
        if self.batch is None or self.batch == len(x):
            return self.session.run(None, {self.name: x})
        parts = [self.session.run(None, {self.name: x[i : i + 1]}) for i in range(len(x))]
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def runtime(path: Path, fmt: str, threads: int) -> Runtime:
    return OpenVINORuntime(path, threads) if fmt == "openvino" else OnnxRuntime(path, threads)


def amx_dynamic_int8(xml: Path) -> bool:
    """A dynamic-shape INT8 model on a CPU with AMX: OpenVINO's CPU plugin crashes on it
    (openvinotoolkit/openvino#37577)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or "amx_int8" not in cpuinfo.read_text():
        return False
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return model.input().get_partial_shape().is_dynamic and any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


# ---- outputs into Ultralytics' Results, as its predictors do --------------------------------------------


def _nms(preds: Any, model: ExportedModel, options: PredictOptions) -> list[Any]:
    from ultralytics.utils import nms

    task = model.meta.task
    return nms.non_max_suppression(
        preds, options.conf, options.iou, list(options.classes) if options.classes is not None else None,
        max_det=options.max_det, nc=0 if task == Task.detect else len(model.meta.names),
        end2end=model.meta.end2end, rotated=task == Task.obb,
    )  # fmt: skip


def _boxes_result(pred: Any, shape: tuple[int, int], image: np.ndarray, model: ExportedModel) -> Any:
    from ultralytics.engine.results import Results
    from ultralytics.utils import ops

    task, names = model.meta.task, model.meta.names
    if task == Task.obb:
        rboxes = torch_cat([pred[:, :4], pred[:, -1:]])
        rboxes[:, :4] = ops.scale_boxes(shape, rboxes[:, :4], image.shape, xywh=True)
        return Results(image, path="", names=names, obb=torch_cat([rboxes, pred[:, 4:6]]))
    keypoints = None
    if task == Task.pose:
        keypoints = ops.scale_coords(shape, pred[:, 6:].view(pred.shape[0], *model.meta.kpt_shape), image.shape)
    pred[:, :4] = ops.scale_boxes(shape, pred[:, :4], image.shape)
    return Results(image, path="", names=names, boxes=pred[:, :6], keypoints=keypoints)


def _segment_result(pred: Any, proto: Any, shape: tuple[int, int], image: np.ndarray, model: ExportedModel) -> Any:
    from ultralytics.engine.results import Results
    from ultralytics.utils import ops

    masks = None
    if pred.shape[0]:
        masks = ops.process_mask(proto, pred[:, 6:], pred[:, :4], shape, upsample=True)
        pred[:, :4] = ops.scale_boxes(shape, pred[:, :4], image.shape)
        keep = masks.amax((-2, -1)) > 0
        if not keep.all():
            pred, masks = pred[keep], masks[keep]
    return Results(image, path="", names=model.meta.names, boxes=pred[:, :6], masks=masks)


def top_candidates(preds: Any, k: int) -> Any:
    """The k anchors with the highest class score, in their order: what a rotated NMS keeps at most.

    NMS keeps its `max_nms` best candidates (30,000 in Ultralytics); rotated NMS compares every pair,
    so 8,400 candidates (640 px, conf 0) cost 12 s and 1.6 GB, 30,000 over 20 GB. Equal to
    Ultralytics' own whenever no more than k candidates pass `conf`.
    """
    raw = preds[0] if isinstance(preds, (list, tuple)) else preds
    if raw.ndim != 3 or raw.shape[-1] <= k:
        return preds
    scores = raw[:, 4:-1].amax(1)  # (batch, anchors); the channels are box (4), classes, angle (1)
    keep = scores.topk(k, dim=1).indices.sort(dim=1).values
    return raw.gather(2, keep[:, None, :].expand(-1, raw.shape[1], -1))


def torch_cat(parts: list[Any]) -> Any:
    import torch

    return torch.cat(parts, dim=-1)


# ---- the model ------------------------------------------------------------------------------------------


class ExportedModel:
    """One export served on this path: load, letterbox, infer and decode a chunk of images."""

    def __init__(self, weights: Path, fmt: str, meta: Metadata, threads: int) -> None:
        """`threads`: the CPU threads the runtime may use (the worker's share of the cores: RunnerSettings.cpu_threads)."""
        self.meta, self.runtime = meta, runtime(weights, fmt, threads)
        self.auto = self.runtime.dynamic  # a dynamic export takes each image's minimum rectangle, as `predict` does

    @property
    def imgsz(self) -> int:
        """The default inference size: the export's, or for a dynamic export Ultralytics' default, as `predict` has it."""
        return DYNAMIC_IMGSZ if self.runtime.dynamic else max(self.meta.imgsz)

    def input_shape(self, image: tuple[int, int], imgsz: int | None) -> tuple[int, int]:
        side = math.ceil((imgsz or self.imgsz) / self.meta.stride) * self.meta.stride
        target = (side, side) if self.runtime.dynamic else self.meta.imgsz
        return input_shape(image, target, self.auto, self.meta.stride)

    def infer(self, images: list[DecodedImage], options: PredictOptions) -> Inference:
        """One call for images that share a model input shape (runners/ultralytics.py groups them)."""
        started = time.perf_counter()
        arrays = [image.bgr for image in images]
        if self.meta.task == Task.classify:
            size = (options.imgsz if self.runtime.dynamic else None) or self.imgsz
            batch = np.stack([classify_crop(a, size) for a in arrays])
        else:
            batch = letterbox(arrays, self.input_shape(arrays[0].shape[:2], options.imgsz))
        prepared = time.perf_counter()
        outputs = self.runtime.run(batch)
        inferred = time.perf_counter()
        results = self.decode(outputs, batch.shape[1:3], arrays, options)
        done = time.perf_counter()
        return Inference(results, (prepared - started) * 1000, (inferred - prepared) * 1000, (done - inferred) * 1000)

    def decode(self, outputs: list[np.ndarray], shape: tuple[int, int], images: list[np.ndarray],
               options: PredictOptions) -> list[Any]:  # fmt: skip
        import torch
        from ultralytics.engine.results import Results

        task = self.meta.task
        if task == Task.classify:
            return [Results(a, path="", names=self.meta.names, probs=torch.from_numpy(p)) for a, p in zip(images, outputs[0], strict=True)]
        preds = torch.from_numpy(outputs[0])
        if task == Task.obb:
            preds = top_candidates(preds, settings().max_rotated_nms)
        kept = _nms(preds, self, options)
        if task == Task.segment:
            protos = torch.from_numpy(outputs[1])
            return [_segment_result(p, proto, shape, a, self) for p, proto, a in zip(kept, protos, images, strict=True)]
        return [_boxes_result(p, shape, a, self) for p, a in zip(kept, images, strict=True)]
