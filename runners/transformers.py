"""The Hugging Face transformers family: one handler per task, each with the `Auto*` class that loads
its models, the task it serves, and its preprocess / forward / postprocess steps.

A batch is split per model and options (the caller's labels, prompts or question included) and per
image shape (processors pad or refuse mixed sizes, and padding would make a result depend on its
batch-mates); each chunk goes through processor, model and post-processing together.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from runners.family import Family, Inference, LoadedModel, SourceUnavailable, choose_device
from runners.limits import aspect, central_part, central_size, too_elongated
from runners.postprocess import LabelOf, detections, keep, label_lookup, polygons, probability, top_k
from yolo_toys.errors import ServiceError
from yolo_toys.imaging import DecodedImage
from yolo_toys.schemas import (
    Box,
    CaptionResult,
    ClassifyResult,
    DepthResult,
    DetectResult,
    ImageSize,
    InferenceJob,
    PredictOptions,
    SegmentInstance,
    SegmentResult,
    Task,
    TaskResult,
    Timings,
    VqaResult,
    ZeroShotClassifyResult,
)
from yolo_toys.settings import settings

if TYPE_CHECKING:
    from models.catalog import ModelEntry

log = logging.getLogger("yolo_toys.transformers")


@dataclass(kw_only=True)
class LoadedHF(LoadedModel):
    model: Any
    processor: Any
    dtype: Any
    handler: TaskHandler


# ---- one handler per task ------------------------------------------------------------------------------


class TaskHandler:
    """A transformers task: which `Auto*` class loads its models, which task it serves, and its steps."""

    hf_task: ClassVar[str]  # the catalog's `hf_task`
    serves: ClassVar[Task]
    auto_class: ClassVar[str]  # transformers 5.x name
    labelled: ClassVar[bool] = False  # the model names its classes (config.id2label)
    open_vocabulary: ClassVar[bool] = False  # the request's `prompts` name what to find

    def fit(self, m: LoadedHF, image: DecodedImage, options: PredictOptions) -> DecodedImage:
        """The image at a size the processor resizes at a bounded cost (see "bounded cost" below)."""
        return fit_to_processor(m, image)

    def preprocess(self, m: LoadedHF, images: list[Image.Image], options: PredictOptions) -> Any:
        return self.process(m, images)

    @staticmethod
    def process(m: LoadedHF, images: list[Image.Image], **text: Any) -> Any:
        """The model's processor on the images (and text). Channels last, said outright: a processor
        guessing the layout of a 1x1 image takes its width for channels (IndexError in Depth Anything)."""
        if "text" in text:
            _check_text_length(m, text["text"])
        return m.processor(images=images, return_tensors="pt", input_data_format="channels_last", **text)

    def forward(self, m: LoadedHF, inputs: dict[str, Any], options: PredictOptions) -> Any:
        return m.model(**inputs)

    def postprocess(self, m: LoadedHF, outputs: Any, sizes: list[tuple[int, int]], options: PredictOptions) -> list[Any]:
        """One raw output per image; `sizes` are the images' (height, width)."""
        raise NotImplementedError

    def result(self, m: LoadedHF, output: Any, job: InferenceJob, common: dict[str, Any]) -> TaskResult:
        raise NotImplementedError


def _check_text_length(m: LoadedHF, text: str | list) -> None:
    """Refuse text longer than the model reads (CLIP: 77 tokens): past it the model fails, and cutting
    the text would answer another question."""
    tokenizer = getattr(m.processor, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not isinstance(limit, int) or limit > 1_000_000:  # "no limit" is 1e30 in transformers
        return
    texts = [t for item in ([text] if isinstance(text, str) else text) for t in ([item] if isinstance(item, str) else item)]
    longest = max((len(ids) for ids in tokenizer(texts)["input_ids"]), default=0)
    if longest > limit:
        raise ServiceError(422, "text too long", f"{longest} tokens; {m.entry.name} reads at most {limit}")


class ObjectDetection(TaskHandler):
    hf_task, serves, auto_class, labelled = "object-detection", Task.detect, "AutoModelForObjectDetection", True

    def postprocess(self, m: LoadedHF, outputs: Any, sizes: list[tuple[int, int]], options: PredictOptions) -> list[Any]:
        post = m.processor.post_process_object_detection(outputs, threshold=options.conf, target_sizes=sizes)
        label_of = label_lookup(m.labels)
        return [keep(detections(p["boxes"], p["scores"], p["labels"], label_of), options) for p in post]

    def result(self, m: LoadedHF, output: Any, job: InferenceJob, common: dict[str, Any]) -> TaskResult:
        return DetectResult(detections=output, **common)


def _prompt_label(prompts: tuple[str, ...]) -> LabelOf:
    return lambda i: prompts[i] if 0 <= i < len(prompts) else "(unmatched phrase)"


class ZeroShotObjectDetection(ObjectDetection):
    hf_task, auto_class = "zero-shot-object-detection", "AutoModelForZeroShotObjectDetection"
    labelled, open_vocabulary = False, True

    def preprocess(self, m: LoadedHF, images: list[Image.Image], options: PredictOptions) -> Any:
        return self.process(m, images, text=[list(options.prompts or ())] * len(images), padding=True)

    def postprocess(self, m: LoadedHF, outputs: Any, sizes: list[tuple[int, int]], options: PredictOptions) -> list[Any]:
        prompts = options.prompts or ()
        post = m.processor.post_process_grounded_object_detection(outputs, threshold=options.conf, target_sizes=sizes)
        return [keep(detections(p["boxes"], p["scores"], _prompt_ids(p["labels"], prompts), _prompt_label(prompts)),
                     options) for p in post]  # fmt: skip


def _prompt_ids(labels: Any, prompts: tuple[str, ...]) -> np.ndarray:
    """OWL-ViT answers prompt indices; Grounding DINO answers the matched phrase (-1 if unmatched)."""
    if hasattr(labels, "tolist"):
        return np.asarray(labels.tolist(), dtype=int)
    return np.asarray([prompts.index(t) if t in prompts else -1 for t in labels], dtype=int)


class ImageClassification(TaskHandler):
    hf_task, serves, auto_class, labelled = "image-classification", Task.classify, "AutoModelForImageClassification", True

    def postprocess(self, m: LoadedHF, outputs: Any, sizes: list[tuple[int, int]], options: PredictOptions) -> list[Any]:
        return list(outputs.logits.float().softmax(-1).cpu().numpy())

    def result(self, m: LoadedHF, output: Any, job: InferenceJob, common: dict[str, Any]) -> TaskResult:
        return ClassifyResult(top_k=top_k(output, job.options.top_k, label_lookup(m.labels)), **common)


class ZeroShotImageClassification(TaskHandler):
    hf_task, serves = "zero-shot-image-classification", Task.zero_shot_classify
    auto_class = "AutoModelForZeroShotImageClassification"

    def preprocess(self, m: LoadedHF, images: list[Image.Image], options: PredictOptions) -> Any:
        return self.process(m, images, text=list(options.prompts or ()), padding=True)

    def postprocess(self, m: LoadedHF, outputs: Any, sizes: list[tuple[int, int]], options: PredictOptions) -> list[Any]:
        logits = outputs.logits_per_image.float()
        # SigLIP scores each label on its own (sigmoid); CLIP spreads one unit over the labels.
        sigmoid = m.model.config.model_type.startswith("siglip")
        return list((logits.sigmoid() if sigmoid else logits.softmax(-1)).cpu().numpy())

    def result(self, m: LoadedHF, output: Any, job: InferenceJob, common: dict[str, Any]) -> TaskResult:
        labels = _prompt_label(job.options.prompts or ())
        return ZeroShotClassifyResult(top_k=top_k(output, job.options.top_k, labels), **common)


class Captioning(TaskHandler):
    hf_task, serves, auto_class = "image-captioning", Task.caption, "AutoModelForImageTextToText"

    def preprocess(self, m: LoadedHF, images: list[Image.Image], options: PredictOptions) -> Any:
        if not options.text:
            return super().preprocess(m, images, options)
        return self.process(m, images, text=[options.text] * len(images), padding=True)

    def forward(self, m: LoadedHF, inputs: dict[str, Any], options: PredictOptions) -> Any:
        return m.model.generate(**inputs, max_new_tokens=_token_room(m, inputs, options.max_new_tokens))

    def postprocess(self, m: LoadedHF, outputs: Any, sizes: list[tuple[int, int]], options: PredictOptions) -> list[Any]:
        return [text.strip() for text in m.processor.batch_decode(outputs, skip_special_tokens=True)]

    def result(self, m: LoadedHF, output: Any, job: InferenceJob, common: dict[str, Any]) -> TaskResult:
        return CaptionResult(text=output, prefix=job.options.text, **common)


def _token_room(m: LoadedHF, inputs: dict[str, Any], wanted: int) -> int:
    """`max_new_tokens` is an upper bound: at most what the text decoder's positions leave after the
    prompt (a small decoder has few; past them generation fails with an IndexError)."""
    config = getattr(m.model.config, "text_config", None) or m.model.config
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return wanted
    prompt = inputs["input_ids"].shape[-1] if "input_ids" in inputs else 1
    return max(1, min(wanted, limit - prompt - 1))


class VisualQuestionAnswering(Captioning):
    hf_task, serves, auto_class = "visual-question-answering", Task.vqa, "AutoModelForVisualQuestionAnswering"

    def result(self, m: LoadedHF, output: Any, job: InferenceJob, common: dict[str, Any]) -> TaskResult:
        return VqaResult(question=job.options.text or "", answer=output, **common)


def _levels(depth: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """(depth - lo) / scale rounded, as 16-bit levels; in place, as the map is the image's size."""
    if scale == 0:
        return np.zeros(depth.shape, np.uint16)
    levels = np.subtract(depth, lo, dtype=np.float32)
    levels /= scale
    return np.rint(levels, out=levels).astype(np.uint16)


def _depth_png(depth: np.ndarray) -> tuple[str, float, float, float]:
    """Depth as a 16-bit PNG of levels between its min and max: (base64, min, max, scale).

    Compression level 1: a 40 MP map encodes in 2 s instead of 8 s (level 6), for a 10% larger PNG."""
    lo, hi = float(depth.min()), float(depth.max())
    scale = (hi - lo) / 65535.0 if hi > lo else 0.0
    buf = io.BytesIO()
    Image.fromarray(_levels(depth, lo, scale)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii"), lo, hi, scale


class DepthEstimation(TaskHandler):
    hf_task, serves, auto_class = "depth-estimation", Task.depth, "AutoModelForDepthEstimation"

    def postprocess(self, m: LoadedHF, outputs: Any, sizes: list[tuple[int, int]], options: PredictOptions) -> list[Any]:
        post = m.processor.post_process_depth_estimation(outputs, target_sizes=sizes)
        # reshaped: the processor squeezes the map of a 1x1 image to a scalar
        return [_depth_png(p["predicted_depth"].float().cpu().numpy().reshape(size)) for p, size in zip(post, sizes, strict=True)]

    def result(self, m: LoadedHF, output: Any, job: InferenceJob, common: dict[str, Any]) -> TaskResult:
        png, lo, hi, scale = output
        return DepthResult(depth_png=png, min=lo, max=hi, scale=scale, **common)


def _class_instance(seg: np.ndarray, prob: np.ndarray, low: np.ndarray, class_id: int, label_of: LabelOf,
                    scale: tuple[float, float]) -> SegmentInstance:  # fmt: skip
    """One class present in a semantic map: its box, outlines, and its mean probability where it wins.
    `scale` (x, y) maps the map's pixels to the image's."""
    mask = seg == class_id
    xs, ys = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    confident = prob[class_id][low == class_id]
    score = float(confident.mean()) if confident.size else float(prob[class_id].max())
    sx, sy = scale
    return SegmentInstance(
        box=Box(x1=float(xs[0]) * sx, y1=float(ys[0]) * sy, x2=float(xs[-1] + 1) * sx, y2=float(ys[-1] + 1) * sy),
        score=probability(score), class_id=class_id, label=label_of(class_id),
        polygons=[[(x * sx, y * sy) for x, y in poly] for poly in polygons(mask)],
    )  # fmt: skip


CLASS_MAP_PIXELS = 1 << 22  # 4.2 MP: far finer than any model's own map (SegFormer: 128 x 128)


def class_map_size(size: tuple[int, int], classes: int) -> tuple[int, int]:
    """The resolution a class map is made at: the image's, or lower where the upsampled scores (classes
    x pixels floats; 150 classes at 40 MP would be 24 GB) would be over the limit, or the map over
    CLASS_MAP_PIXELS (the outlines of each class are traced over the whole map)."""
    height, width = size
    pixels = min(settings().max_class_scores / max(1, classes), CLASS_MAP_PIXELS)
    scale = min(1.0, math.sqrt(pixels / (height * width)))
    map_h, map_w = max(1, int(height * scale)), max(1, int(width * scale))
    return min(map_h, max(1, int(pixels // map_w))), min(map_w, max(1, int(pixels // map_h)))  # a side of 1 px


class SemanticSegmentation(TaskHandler):
    hf_task, serves, auto_class, labelled = "semantic-segmentation", Task.segment, "AutoModelForSemanticSegmentation", True

    def postprocess(self, m: LoadedHF, outputs: Any, sizes: list[tuple[int, int]], options: PredictOptions) -> list[Any]:
        maps = [class_map_size(size, outputs.logits.shape[1]) for size in sizes]
        post = m.processor.post_process_semantic_segmentation(outputs, target_sizes=maps)
        probs = outputs.logits.float().softmax(1).cpu().numpy()
        label_of = label_lookup(m.labels)
        results = []
        for seg, prob, (height, width), (map_h, map_w) in zip(post, probs, sizes, maps, strict=True):
            seg, low, scale = seg.cpu().numpy(), prob.argmax(0), (width / map_w, height / map_h)
            present = np.flatnonzero(np.bincount(seg.ravel(), minlength=prob.shape[0])).tolist()
            instances = [_class_instance(seg, prob, low, c, label_of, scale) for c in present]
            results.append(keep(instances, options))
        return results

    def result(self, m: LoadedHF, output: Any, job: InferenceJob, common: dict[str, Any]) -> TaskResult:
        return SegmentResult(instances=output, **common)


HANDLERS: dict[str, TaskHandler] = {
    h.hf_task: h
    for h in (ObjectDetection(), ZeroShotObjectDetection(), ImageClassification(), ZeroShotImageClassification(),
              Captioning(), VisualQuestionAnswering(), DepthEstimation(), SemanticSegmentation())
}  # fmt: skip


# ---- bounded cost: what an image may make the processor and the model allocate -------------------------
#
# Read from the image processor's config, with its own size functions (transformers 5): a processor that
# resizes to a fixed size or within a longest edge (ViT, BLIP, OWL-ViT, SegFormer, DETR) is bounded; one
# that resizes the short side and centre-crops (CLIP) only looks at the central part; one that keeps the
# aspect ratio and scales as little as possible (DPT, Depth Anything) makes a 518 x 5,180 input of a
# 2,000 x 20,000 image (13,690 ViT tokens); one that resizes the short side and keeps the rest (no crop)
# has no bound but the image's aspect ratio.


def _image_processor(m: LoadedHF) -> Any:
    return getattr(m.processor, "image_processor", m.processor)


def _size(ip: Any) -> Any:
    from transformers.image_utils import SizeDict

    return SizeDict(**dict(ip.size or {}))


def resized_size(ip: Any, height: int, width: int) -> tuple[int, int] | None:
    """(height, width) the image processor resizes an image of this size to; None if its rule is unknown."""
    from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
    from transformers.image_utils import ChannelDimension, get_image_size_for_max_height_width

    if not getattr(ip, "do_resize", True):
        return height, width
    size, shape = _size(ip), np.empty((0, height, width), np.uint8)  # a shape, no pixels
    if hasattr(ip, "keep_aspect_ratio") and size.height and size.width:  # DPT's resize
        from transformers.models.dpt.image_processing_dpt import get_resize_output_image_size as dpt_size

        out = dpt_size(shape, (size.height, size.width), bool(ip.keep_aspect_ratio), getattr(ip, "ensure_multiple_of", 1) or 1)
        return out.height, out.width
    if size.shortest_edge and size.longest_edge:
        return get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
    if size.shortest_edge:
        return get_resize_output_image_size(shape, size.shortest_edge, default_to_square=False,
                                            input_data_format=ChannelDimension.FIRST)  # fmt: skip
    if size.max_height and size.max_width:
        return get_image_size_for_max_height_width((height, width), size.max_height, size.max_width)
    return (size.height, size.width) if size.height and size.width else None


def _centre_crops(ip: Any) -> bool:
    size = _size(ip)
    return bool(size.shortest_edge and not size.longest_edge and getattr(ip, "do_center_crop", False))


def _smaller(height: int, width: int, scale: float, to_int: Callable[[float], int] = round) -> tuple[int, int]:
    return (height, width) if scale >= 1 else (max(1, to_int(height * scale)), max(1, to_int(width * scale)))


def fitted_size(ip: Any, height: int, width: int, max_aspect: float) -> tuple[int, int]:
    """The size `fit_to_processor` gives an image: its central part for a centre-cropping processor; a copy
    within the processor's size for an aspect-keeping one whose input would be over `max_aspect` times
    its nominal area (the image's aspect ratio, for an image larger than that size); and a copy small
    enough for the resize itself. A resize is two passes, one per axis: a 1 x 40,000,000 image resized
    to 224 x 224 width first holds 40,000,000 x 224 pixels between them (27 GB)."""
    if _centre_crops(ip):
        height, width = central_size(height, width, max_aspect)
    size, out = _size(ip), resized_size(ip, height, width)
    nominal = (size.height or 0) * (size.width or 0)
    if getattr(ip, "keep_aspect_ratio", False) and out and nominal and out[0] * out[1] > max_aspect * nominal:
        height, width = _smaller(height, width, min(size.height / height, size.width / width))
        out = resized_size(ip, height, width)
    if not out or min(out) < 1:
        return height, width
    between = max(height * out[1], out[0] * width)  # the pixels between the passes, in either order
    return _smaller(height, width, settings().max_pixels / between, math.floor)


def _usable(ip: Any, height: int, width: int, max_aspect: float) -> bool:
    """Whether the processor gives the fitted image a model input of at least a pixel a side."""
    out = resized_size(ip, *fitted_size(ip, height, width, max_aspect))
    return out is None or min(out) >= 1


def _thin_limit(ip: Any, long: int, max_aspect: float) -> float:
    """The most elongated image with this long side that the processor still resizes to a usable input."""
    lo, hi = 1, long  # the smallest short side that works lies in (lo, hi]; a square always works
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _usable(ip, long, mid, max_aspect) else (mid, hi)
    return long / hi


def fit_to_processor(m: LoadedHF, image: DecodedImage) -> DecodedImage:
    """The image as the processor can take it at a bounded cost, or a 422 naming the limit."""
    ip, max_aspect = _image_processor(m), settings().max_input_aspect
    height, width = image.shape
    size = _size(ip)
    unbounded = size.shortest_edge and not size.longest_edge and not _centre_crops(ip)
    if unbounded and aspect(height, width) > max_aspect:  # the long side would be short side x aspect
        raise too_elongated(image, max_aspect, m.entry.name)
    if not _usable(ip, height, width, max_aspect):
        raise too_elongated(image, _thin_limit(ip, max(height, width), max_aspect), m.entry.name)
    fitted = fitted_size(ip, height, width, max_aspect)
    if _centre_crops(ip):
        image = central_part(image, max_aspect)
    return image if image.shape == fitted else image.shrunk(*fitted)


# ---- loading -------------------------------------------------------------------------------------------


def load_pretrained(handler: TaskHandler, where: str, **kwargs: Any) -> tuple[Any, Any]:
    """Model and processor from a hub repo id or a save_pretrained folder."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    local = {"local_files_only": True} if os.path.isdir(where) else {}
    processor = transformers.AutoProcessor.from_pretrained(where, **local)
    return getattr(transformers, handler.auto_class).from_pretrained(where, **local, **kwargs), processor


@lru_cache(maxsize=8)
def hub_reachable(host: str) -> bool:
    """One quick probe: offline, huggingface_hub retries each file for minutes before it gives up."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; a direct probe would say nothing
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


def _dtype(half: bool) -> Any:
    """bf16 on a GPU that has it, else FP16; float32 on the CPU or with `half: off`."""
    import torch

    if not half:
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _to_device(inputs: Any, m: LoadedHF) -> dict[str, Any]:
    return {
        k: (v.to(m.device, dtype=m.dtype) if v.is_floating_point() else v.to(m.device)) if hasattr(v, "to") else v
        for k, v in inputs.items()
    }


# ---- the family ----------------------------------------------------------------------------------------


class TransformersFamily(Family):
    name = "transformers"

    def load(self, entry: ModelEntry, weights: Path) -> LoadedHF:
        handler = HANDLERS[str(entry.hf_task)]
        device, half = choose_device(entry)
        dtype = _dtype(half)
        model, processor = load_pretrained(handler, str(weights), dtype=dtype)
        model = model.to(device).eval()
        labels = {int(k): str(v) for k, v in (model.config.id2label or {}).items()} if handler.labelled else {}
        return LoadedHF(entry=entry, format="transformers", device=device, half=half, labels=labels,
                        open_vocabulary=handler.open_vocabulary, model=model, processor=processor, dtype=dtype,
                        handler=handler)  # fmt: skip

    def fit(self, model: LoadedModel, image: DecodedImage, options: PredictOptions) -> DecodedImage:
        assert isinstance(model, LoadedHF)
        return model.handler.fit(model, image, options)

    def group_key(self, model: LoadedModel, image: DecodedImage) -> Hashable:
        return image.shape

    def infer(self, model: LoadedModel, images: list[DecodedImage], options: PredictOptions) -> Inference:
        import torch

        assert isinstance(model, LoadedHF)
        pils = [Image.fromarray(image.rgb) for image in images]
        stamps = [time.perf_counter()]
        try:
            inputs = _to_device(model.handler.preprocess(model, pils, options), model)
        except ValueError as exc:  # the processor refuses this input (what `fit` could not foresee)
            height, width = images[0].original.shape
            log.info("%s refused a %dx%d image: %s", model.entry.name, width, height, exc)
            raise ServiceError(422, "image not supported", f"{model.entry.name} cannot take a {width}x{height} image") from None
        stamps.append(time.perf_counter())
        with torch.inference_mode():
            outputs = model.handler.forward(model, inputs, options)
            if model.device != "cpu":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            raw = model.handler.postprocess(model, outputs, [image.original.shape for image in images], options)
        stamps.append(time.perf_counter())
        return Inference(raw, *((b - a) * 1000 for a, b in zip(stamps, stamps[1:], strict=False)))

    def to_result(self, model: LoadedModel, output: Any, image: DecodedImage, job: InferenceJob,
                  timings: Timings) -> TaskResult:  # fmt: skip
        assert isinstance(model, LoadedHF)
        common = {"model": model.entry.name, "image": ImageSize(width=image.width, height=image.height), "timings": timings}
        return model.handler.result(model, output, job, common)

    # ---- import ------------------------------------------------------------------------------------

    def check_entry(self, entry: ModelEntry) -> None:
        handler = HANDLERS.get(str(entry.hf_task))
        if entry.hf_task is None or handler is None:
            raise ValueError(f"the transformers family needs `hf_task`, one of {sorted(HANDLERS)}")
        if handler.serves != entry.task:
            raise ValueError(f"hf_task {entry.hf_task} serves task {handler.serves.value}")

    def download(self, entry: ModelEntry, name: str, workdir: Path) -> Path:
        """The hub checkpoint, stored as a save_pretrained folder."""
        if not hub_reachable("huggingface.co"):
            raise SourceUnavailable("the Hugging Face hub is not reachable (offline)")
        folder = workdir / entry.name
        try:
            model, processor = load_pretrained(HANDLERS[str(entry.hf_task)], name)
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
        except Exception as exc:  # offline, unknown repo, gated, ...
            raise SourceUnavailable(f"hub download of {name} failed: {exc}".splitlines()[0]) from None
        return folder

    def inspect(self, entry: ModelEntry, weights: Path) -> dict[str, Any]:
        handler = HANDLERS[str(entry.hf_task)]
        try:
            model, _ = load_pretrained(handler, str(weights))
        except Exception as exc:
            raise SourceUnavailable(f"not loadable as {entry.hf_task}: {exc}".splitlines()[0]) from None
        if not handler.labelled:
            return {"architecture": type(model).__name__}
        return {"architecture": type(model).__name__,
                "class_names": {int(k): str(v) for k, v in (model.config.id2label or {}).items()}}  # fmt: skip


FAMILY = TransformersFamily()
