"""The Hugging Face transformers family: detection (closed and open vocabulary), classification,
zero-shot classification, captioning, visual question answering, depth and semantic segmentation.

One BentoML service holds every transformers model of the catalog, loaded with the `Auto*` class
of its `hf_task`. A batch is split per model and options (the caller's labels, prompts or
question included), then each chunk goes through processor, model and post-processing together.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bentoml
import cv2
import numpy as np
from PIL import Image
from prometheus_client import Histogram

import drawing
from models.catalog import LABELLED_HF_TASKS, ModelEntry, load_catalog
from models.store import load_transformers, stored
from runners.batch import BATCH_BUCKETS, Member, Outcomes, load_all, run_batch, service_config
from runners.batcher import Batcher
from schemas import (
    Box,
    CaptionResult,
    Classification,
    ClassifyResult,
    DepthResult,
    Detection,
    DetectResult,
    ImageSize,
    InferenceJob,
    ModelInfo,
    Outcome,
    SegmentInstance,
    SegmentResult,
    Timings,
    VqaResult,
    ZeroShotClassifyResult,
)

log = logging.getLogger("yolo_toys.transformers")
# Models load from the BentoML model store (save_pretrained folders): nothing to ask the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CATALOG = load_catalog()
SETTINGS = CATALOG.runner("transformers")

MODEL_BATCH = Histogram(
    "yolo_toys_transformers_batch_size",
    "Images per transformers inference call, per model.",
    ["model"],
    buckets=BATCH_BUCKETS,
)


def pick_device(entry: ModelEntry) -> tuple[str, Any]:
    """CUDA with bf16 (FP16 where bf16 is missing) when a GPU is visible; CPU and float32 otherwise."""
    import torch

    use_cuda = entry.device != "cpu" and torch.cuda.is_available()
    if entry.device == "cuda" and not use_cuda:
        log.warning("%s asks for cuda but none is usable here; running on CPU", entry.name)
    if not use_cuda:
        return "cpu", torch.float32
    if entry.half == "off":
        return "cuda:0", torch.float32
    return "cuda:0", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class LoadedHF:
    entry: ModelEntry
    model: Any
    processor: Any
    source: str
    device: str
    dtype: Any
    names: dict[int, str]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def hf_task(self) -> str:
        return str(self.entry.hf_task)


def load(entry: ModelEntry) -> LoadedHF:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    stored_model = stored(entry.name)
    if stored_model is None:
        raise FileNotFoundError(f"not in the model store; run `python -m models import {entry.name}`")
    folder = Path(stored_model.path) / stored_model.info.metadata["entry"]
    device, dtype = pick_device(entry)
    model, processor = load_transformers(entry, str(folder), dtype=dtype)
    model = model.to(device).eval()
    names = {}
    if entry.hf_task in LABELLED_HF_TASKS:
        names = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
    return LoadedHF(entry, model, processor, str(stored_model.info.metadata.get("source", "")), device, dtype, names)


# ---- per hf_task: inputs, forward, results ------------------------------------------------------


def _to_device(inputs: Any, loaded: LoadedHF) -> dict[str, Any]:
    moved = {}
    for key, value in inputs.items():
        if hasattr(value, "to"):
            value = value.to(loaded.device, dtype=loaded.dtype) if value.is_floating_point() else value.to(loaded.device)
        moved[key] = value
    return moved


def _detections(boxes: Any, scores: Any, label_ids: Any, label_of: Callable[[int], str], job: InferenceJob) -> list:
    dets = []
    for box, score, label_id in zip(boxes.tolist(), scores.tolist(), np.asarray(label_ids).tolist(), strict=True):
        if job.options.classes is not None and int(label_id) not in job.options.classes:
            continue
        x1, y1, x2, y2 = box
        dets.append(Detection(box=Box(x1=x1, y1=y1, x2=x2, y2=y2), score=min(max(score, 0.0), 1.0),
                              class_id=int(label_id), label=label_of(int(label_id))))  # fmt: skip
    dets.sort(key=lambda d: -d.score)
    return dets[: job.options.max_det]


def _prompt_ids(labels: Any, prompts: list[str]) -> np.ndarray:
    """OWL-ViT answers prompt indices; Grounding DINO answers the matched phrase (-1 if unmatched)."""
    if hasattr(labels, "tolist"):
        return np.asarray(labels.tolist(), dtype=int)
    return np.asarray([prompts.index(t) if t in prompts else -1 for t in labels], dtype=int)


def _top_k(probs: np.ndarray, k: int, label_of: Callable[[int], str]) -> list[Classification]:
    order = np.argsort(-probs, kind="stable")[: min(k, probs.shape[0])]
    return [Classification(class_id=int(i), label=label_of(int(i)), score=float(probs[i])) for i in order]


def _polygons(mask: np.ndarray) -> list[list[tuple[float, float]]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[(float(x), float(y)) for x, y in c.reshape(-1, 2)] for c in contours if len(c) >= 3]


def _depth_png(depth: np.ndarray) -> tuple[str, float, float, float]:
    lo, hi = float(depth.min()), float(depth.max())
    scale = (hi - lo) / 65535.0 if hi > lo else 0.0
    levels = np.zeros(depth.shape, np.uint16) if scale == 0 else ((depth - lo) / scale).round().astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(levels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii"), lo, hi, scale


def infer_chunk(loaded: LoadedHF, images: list[Image.Image], jobs: list[InferenceJob]) -> tuple[list, dict]:
    """Processor, model and post-processing for images that share a model and options.

    Returns the raw per-image results (to_result makes them schemas) and the milliseconds of each
    stage for the whole chunk.
    """
    import torch

    opts = jobs[0].options
    task = loaded.hf_task
    proc = loaded.processor
    sizes = [(im.height, im.width) for im in images]
    label_of = lambda i: loaded.names.get(i, str(i))  # noqa: E731
    stamps = [time.perf_counter()]

    if task in ("zero-shot-image-classification", "zero-shot-object-detection"):
        prompts = list(opts.prompts or ())
        text = prompts if task == "zero-shot-image-classification" else [prompts] * len(images)
        inputs = proc(text=text, images=images, return_tensors="pt", padding=True)
        label_of = lambda i: prompts[i] if 0 <= i < len(prompts) else "(unmatched phrase)"  # noqa: E731
    elif task in ("image-captioning", "visual-question-answering") and opts.text:
        inputs = proc(images=images, text=[opts.text] * len(images), return_tensors="pt", padding=True)
    else:
        inputs = proc(images=images, return_tensors="pt")
    inputs = _to_device(inputs, loaded)
    stamps.append(time.perf_counter())

    with torch.inference_mode():
        if task in ("image-captioning", "visual-question-answering"):
            outputs = loaded.model.generate(**inputs, max_new_tokens=opts.max_new_tokens)
        else:
            outputs = loaded.model(**inputs)
        if loaded.device != "cpu":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

        if task == "object-detection":
            post = proc.post_process_object_detection(outputs, threshold=opts.conf, target_sizes=sizes)
            results = [_detections(p["boxes"], p["scores"], p["labels"], label_of, job)
                       for p, job in zip(post, jobs, strict=True)]  # fmt: skip
        elif task == "zero-shot-object-detection":
            post = proc.post_process_grounded_object_detection(outputs, threshold=opts.conf, target_sizes=sizes)
            results = [_detections(p["boxes"], p["scores"], _prompt_ids(p["labels"], prompts), label_of, job)
                       for p, job in zip(post, jobs, strict=True)]  # fmt: skip
        elif task == "image-classification":
            probs = outputs.logits.float().softmax(-1).cpu().numpy()
            results = [_top_k(p, job.options.top_k, label_of) for p, job in zip(probs, jobs, strict=True)]
        elif task == "zero-shot-image-classification":
            logits = outputs.logits_per_image.float()
            # SigLIP scores each label on its own (sigmoid); CLIP spreads one unit over the labels.
            sigmoid = loaded.model.config.model_type.startswith("siglip")
            probs = (logits.sigmoid() if sigmoid else logits.softmax(-1)).cpu().numpy()
            results = [_top_k(p, job.options.top_k, label_of) for p, job in zip(probs, jobs, strict=True)]
        elif task in ("image-captioning", "visual-question-answering"):
            texts = proc.batch_decode(outputs, skip_special_tokens=True)
            results = [t.strip() for t in texts]
        elif task == "depth-estimation":
            post = proc.post_process_depth_estimation(outputs, target_sizes=sizes)
            results = [_depth_png(p["predicted_depth"].float().cpu().numpy()) for p in post]
        elif task == "semantic-segmentation":
            post = proc.post_process_semantic_segmentation(outputs, target_sizes=sizes)
            probs = outputs.logits.float().softmax(1).cpu().numpy()
            results = []
            for seg, prob in zip(post, probs, strict=True):
                seg = seg.cpu().numpy()
                low = prob.argmax(0)
                instances = []
                for class_id in np.unique(seg).tolist():
                    mask = seg == class_id
                    ys, xs = np.nonzero(mask)
                    confident = prob[class_id][low == class_id]
                    score = float(confident.mean()) if confident.size else float(prob[class_id].max())
                    instances.append(SegmentInstance(
                        box=Box(x1=float(xs.min()), y1=float(ys.min()), x2=float(xs.max() + 1), y2=float(ys.max() + 1)),
                        score=min(max(score, 0.0), 1.0), class_id=int(class_id), label=label_of(int(class_id)),
                        polygons=_polygons(mask),
                    ))  # fmt: skip
                kept = [i for i in instances if i.score >= opts.conf and (opts.classes is None or i.class_id in opts.classes)]
                kept.sort(key=lambda inst: -inst.score)
                results.append(kept[: opts.max_det])
        else:
            raise ValueError(f"unsupported hf_task {task}")
    stamps.append(time.perf_counter())
    stages = {
        name: (b - a) * 1000
        for name, a, b in zip(("preprocess", "inference", "postprocess"), stamps, stamps[1:], strict=False)
    }
    return results, stages


def to_result(loaded: LoadedHF, job: InferenceJob, raw: Any, image: Image.Image, timings: Timings) -> Any:
    common = {"model": loaded.entry.name, "image": ImageSize(width=image.width, height=image.height), "timings": timings}
    task = loaded.hf_task
    if task in ("object-detection", "zero-shot-object-detection"):
        return DetectResult(detections=raw, **common)
    if task == "image-classification":
        return ClassifyResult(top_k=raw, **common)
    if task == "zero-shot-image-classification":
        return ZeroShotClassifyResult(top_k=raw, **common)
    if task == "image-captioning":
        return CaptionResult(text=raw, prefix=job.options.text, **common)
    if task == "visual-question-answering":
        return VqaResult(question=job.options.text or "", answer=raw, **common)
    if task == "depth-estimation":
        png, lo, hi, scale = raw
        return DepthResult(depth_png=png, min=lo, max=hi, scale=scale, **common)
    if task == "semantic-segmentation":
        return SegmentResult(instances=raw, **common)
    raise ValueError(f"unsupported hf_task {task}")


# ---- the service -------------------------------------------------------------------------------


@bentoml.service(name="transformers", **service_config(SETTINGS))
class TransformersRunner:
    def __init__(self) -> None:
        self.models, self.missing = load_all(
            "transformers", CATALOG.family("transformers"), load,
            lambda m: f"{m.hf_task}, {m.device}, {str(m.dtype).removeprefix('torch.')}",
        )  # fmt: skip
        self.on_gpu = any(str(m.device).startswith("cuda") for m in self.models.values())
        self.batcher = Batcher("transformers", self.run, SETTINGS.batch_cap(self.on_gpu), SETTINGS.max_latency_ms)

    @bentoml.api
    def status(self) -> list[ModelInfo]:
        """What this runner serves and why the rest of its catalog is not loaded."""
        infos = []
        for entry in CATALOG.family("transformers"):
            m = self.models.get(entry.name)
            infos.append(ModelInfo(
                name=entry.name, family=entry.family, task=entry.task, default=entry.default,
                loaded=m is not None, reason=self.missing.get(entry.name),
                source=m.source if m else None, format="transformers" if m else None,
                device=m.device if m else None, half=bool(m and m.dtype is not None and m.device != "cpu"),
                open_vocabulary=entry.hf_task == "zero-shot-object-detection",
                labels=m.names if m else {}, batching=CATALOG.batching(entry, self.on_gpu),
            ))  # fmt: skip
        return infos

    @bentoml.api
    async def predict(self, jobs: list[InferenceJob]) -> Outcomes:
        """Queue the jobs for the next batch (runners/batcher.py) and answer when they are done."""
        return await self.batcher.submit(jobs)

    def run(self, jobs: list[InferenceJob]) -> list[Outcome]:
        """One batch, on the inference thread."""
        # Equal shapes only: processors pad or refuse mixed sizes (Depth Anything keeps the aspect
        # ratio), and padding would make a result depend on its batch-mates.
        return run_batch(
            jobs, self.models, self.missing, cap=lambda entry: CATALOG.batching(entry, self.on_gpu).max_batch_size,
            infer=self._infer, shape_key=lambda loaded, image: image.shape,
        )  # fmt: skip

    def _infer(self, loaded: LoadedHF, jobs: list[InferenceJob], chunk: list[Member], outcomes: list) -> None:
        """One processor/model/post-process pass for images that share a model and options."""
        members = [jobs[i] for i, _, _ in chunk]
        images = [Image.fromarray(image.rgb) for _, image, _ in chunk]
        with loaded.lock:
            raws, stages = infer_chunk(loaded, images, members)
        n = len(chunk)
        MODEL_BATCH.labels(model=loaded.entry.name).observe(n)
        for (i, image, decode_ms), job, raw, pil in zip(chunk, members, raws, images, strict=True):
            timings = Timings(
                decode_ms=decode_ms,
                preprocess_ms=stages["preprocess"] / n,
                inference_ms=stages["inference"] / n,
                postprocess_ms=stages["postprocess"] / n,
                batch_size=n,
            )
            result = to_result(loaded, job, raw, pil, timings)
            jpeg = drawing.render(image.rgb, result) if job.annotate else None
            outcomes[i] = Outcome(result=result, annotated_jpeg=jpeg)


TransformersRunner.models.extend(
    bentoml.models.BentoModel(model.tag) for entry in CATALOG.family("transformers") if (model := stored(entry.name))
)
