"""The tasks the service serves: each route's request fields, the checks a model must pass for a
request, and which tasks can stream.

The request models are the routes' multipart forms (`input_spec` of the `@bentoml.api` methods in
service.py), built from the option types of yolo_toys/schemas.py, so that a default is written once.
`resolve` is the front's choice and check of the model for a request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from bentoml import IODescriptor
from pydantic import BaseModel, Field

from yolo_toys.errors import ServiceError
from yolo_toys.imaging import ImageUpload
from yolo_toys.schemas import (
    Blank,
    CaptionResult,
    Classes,
    ClassifyResult,
    Conf,
    DepthResult,
    DetectResult,
    ImgSz,
    Iou,
    Labels,
    MaxDet,
    MaxNewTokens,
    ModelDetail,
    ModelName,
    ObbResult,
    PoseResult,
    PredictOptions,
    Prefix,
    Prompts,
    Question,
    SegmentResult,
    Task,
    TaskChoice,
    TopK,
    VqaResult,
    ZeroShotClassifyResult,
)

Tracking = Annotated[
    Literal["bytetrack", "botsort"], Field("bytetrack", description="The tracker that assigns `track_id`s.")
]
Stride = Annotated[int, Field(1, ge=1, le=1000, description="Process every n-th frame.")]
MaxFrames = Annotated[
    Annotated[int, Field(ge=1, le=1_000_000)] | None, Blank, Field(None, description="Stop after this many frames.")
]


# ---- the routes' forms ---------------------------------------------------------------------------


def _options(request: BaseModel) -> PredictOptions:
    """A request's options: its fields that `PredictOptions` names."""
    mine = type(request).model_fields
    return PredictOptions(**{k: getattr(request, k) for k in PredictOptions.model_fields if k in mine})


class ImageRequest(IODescriptor):
    """The fields of every image route: the image, and the model (the task's default if omitted).

    An `IODescriptor` (BentoML's pydantic base of request forms) so that the image field becomes a
    file upload and the route multipart.
    """

    image: ImageUpload
    model: ModelName

    def options(self) -> PredictOptions:
        """The request's options under `PredictOptions`' names (routes with other names override this)."""
        return _options(self)


class BoxRequest(ImageRequest):
    conf: Conf
    iou: Iou
    imgsz: ImgSz
    max_det: MaxDet


PoseRequest = BoxRequest


class SegmentRequest(BoxRequest):
    classes: Classes


ObbRequest = SegmentRequest


class DetectRequest(SegmentRequest):
    prompts: Prompts


DepthRequest = ImageRequest


class ClassifyRequest(ImageRequest):
    imgsz: ImgSz
    top_k: TopK


class ZeroShotClassifyRequest(ImageRequest):
    labels: Labels
    top_k: TopK

    def options(self) -> PredictOptions:
        return PredictOptions(prompts=self.labels, top_k=self.top_k)


class CaptionRequest(ImageRequest):
    prefix: Prefix
    max_new_tokens: MaxNewTokens

    def options(self) -> PredictOptions:
        return PredictOptions(text=self.prefix, max_new_tokens=self.max_new_tokens)


class VqaRequest(ImageRequest):
    question: Question
    max_new_tokens: MaxNewTokens

    def options(self) -> PredictOptions:
        return PredictOptions(text=self.question, max_new_tokens=self.max_new_tokens)


class AnyTask(BaseModel):
    """The task, and the options of every task: the fields of the routes that serve any task.

    `prompts` are the open-vocabulary prompts or the zero-shot labels; `text` the caption prefix or the question.
    """

    task: TaskChoice
    conf: Conf
    iou: Iou
    imgsz: ImgSz
    max_det: MaxDet
    classes: Classes
    top_k: TopK
    prompts: Prompts
    text: Prefix
    max_new_tokens: MaxNewTokens

    def options(self) -> PredictOptions:
        return _options(self)


class AnnotateRequest(AnyTask, ImageRequest):
    """`POST /annotate`: one image, any task."""


Images = Annotated[
    list[ImageUpload],
    Field(
        min_length=1,
        description="The image files, one `images` part each (`-F images=@a.jpg -F images=@b.jpg`); at most "
        "YOLO_TOYS_MAX_REQUEST_IMAGES (64 by default), within the request body limit (`YOLO_TOYS_MAX_UPLOAD_BYTES`).",
    ),
]


class ImagesRequest(IODescriptor):
    """The images and the model of `POST /batch` (its first fields)."""

    images: Images
    model: ModelName


class BatchRequest(AnyTask, ImagesRequest):
    """`POST /batch`: several images for one task and model, with `/annotate`'s options."""


class StreamOptions(BaseModel):
    """What a stream (the WebSocket's `config`, an SSE video upload) sets: the task, its model and
    options, and tracking."""

    task: TaskChoice
    model: ModelName
    conf: Conf
    iou: Iou
    imgsz: ImgSz
    max_det: MaxDet
    classes: Classes
    prompts: Prompts
    tracking: bool = False
    tracker: Tracking

    def options(self) -> PredictOptions:
        return PredictOptions(**self.model_dump(include=set(PredictOptions.model_fields)))

    def check_streamable(self) -> None:
        if self.task not in STREAM_TASKS:
            raise ServiceError(422, "task not streamable", f"{self.task.value}; choose one of {[t.value for t in STREAM_TASKS]}")


class VideoRequest(IODescriptor, StreamOptions):
    video: Annotated[Path, Field(description="A video file: mp4, webm, avi, ...")]
    stride: Stride
    max_frames: MaxFrames


# ---- what a model must offer for a request -------------------------------------------------------

Check = Callable[[ModelDetail, PredictOptions], None]


def _prompts_match_the_vocabulary(info: ModelDetail, options: PredictOptions) -> None:
    if info.open_vocabulary and not options.prompts:
        raise ServiceError(422, "prompts required", f"{info.name!r} detects what `prompts` names; give a JSON list")
    if options.prompts and not info.open_vocabulary:
        raise ServiceError(422, "prompts not supported", f"{info.name!r} has a fixed label set; see GET /models")


def _labels_given(info: ModelDetail, options: PredictOptions) -> None:
    if not options.prompts:
        raise ServiceError(422, "labels required", "zero-shot classification scores the labels the caller gives")


def _question_given(info: ModelDetail, options: PredictOptions) -> None:
    if not options.text:
        raise ServiceError(422, "question required", "`question` must be a non-blank string")


def _imgsz_fits(info: ModelDetail, options: PredictOptions) -> None:
    if options.imgsz is not None and info.fixed_imgsz and options.imgsz != info.imgsz:
        raise ServiceError(422, "imgsz not supported", f"{info.name!r} has a fixed input size of {info.imgsz}")


def _classes_known(info: ModelDetail, options: PredictOptions) -> None:
    unknown = sorted(c for c in options.classes or () if info.labels and c not in info.labels)
    if unknown:
        raise ServiceError(422, "unknown class ids", f"{unknown}; {info.name!r} has ids 0..{max(info.labels)}")


@dataclass(frozen=True)
class TaskSpec:
    task: Task
    result: type[BaseModel]
    streamable: bool = False  # WebSocket and SSE video
    tracked: bool = False  # results have boxes a tracker can follow
    check: Check | None = None


TASKS: dict[Task, TaskSpec] = {
    spec.task: spec
    for spec in (
        TaskSpec(Task.detect, DetectResult, streamable=True, tracked=True, check=_prompts_match_the_vocabulary),
        TaskSpec(Task.segment, SegmentResult, streamable=True, tracked=True),
        TaskSpec(Task.pose, PoseResult, streamable=True, tracked=True),
        TaskSpec(Task.classify, ClassifyResult, streamable=True),
        TaskSpec(Task.obb, ObbResult, streamable=True),
        TaskSpec(Task.zero_shot_classify, ZeroShotClassifyResult, check=_labels_given),
        TaskSpec(Task.caption, CaptionResult),
        TaskSpec(Task.vqa, VqaResult, check=_question_given),
        TaskSpec(Task.depth, DepthResult),
    )
}
STREAM_TASKS = tuple(t for t, spec in TASKS.items() if spec.streamable)
TRACKED_TASKS = tuple(t for t, spec in TASKS.items() if spec.tracked)


def _named(models: Mapping[str, ModelDetail], task: Task, name: str) -> ModelDetail:
    info = models.get(name)
    if info is None:
        raise ServiceError(404, "unknown model", f"{name!r} is not in the catalog; known: {sorted(models)}")
    if not info.loaded:
        raise ServiceError(404, "model not loaded", f"{name!r} is in the catalog but not loaded: {info.reason}")
    if info.task != task:
        raise ServiceError(422, "wrong task for model", f"{name!r} serves {info.task.value}, not {task.value}")
    return info


def _default(models: Mapping[str, ModelDetail], task: Task) -> ModelDetail:
    candidates = sorted((i for i in models.values() if i.task == task and i.loaded), key=lambda i: not i.default)
    if not candidates:
        raise ServiceError(404, "no model loaded for task", f"no {task.value} model is loaded; see GET /models")
    return candidates[0]


def resolve(models: Mapping[str, ModelDetail], task: Task, name: str | None, options: PredictOptions) -> ModelDetail:
    """The model that serves this request (the task's default when `name` is None), checked against its options."""
    info = _default(models, task) if name is None else _named(models, task, name)
    checks = (_imgsz_fits, _classes_known, TASKS[task].check)
    for check in checks:
        if check is not None:
            check(info, options)
    return info
