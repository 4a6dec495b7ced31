"""Request options and result schemas shared by every model family.

A client parses a `/detect` answer the same way whether a YOLO or a transformers model produced it:
every runner postprocesses into these types.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter


class Task(str, Enum):
    detect = "detect"
    segment = "segment"
    pose = "pose"
    classify = "classify"
    obb = "obb"
    zero_shot_classify = "zero_shot_classify"
    caption = "caption"
    vqa = "vqa"
    depth = "depth"


# ---- request options ---------------------------------------------------------------------------
# Each option's constraints and default are written here once; the REST routes (yolo_toys/tasks.py),
# the WebSocket config (yolo_toys/streaming.py) and `PredictOptions` all read them from these types.
# An optional field sent empty (`-F model=`, `-F classes=[]`, or Swagger UI's "Send empty value")
# means "not given": Swagger UI sends every optional field it leaves empty (as an empty blob: b"").
Blank = BeforeValidator(lambda value: None if value in ("", b"", []) else value)

ModelName = Annotated[
    Annotated[str, Field(min_length=1, max_length=128)] | None,
    Blank,
    Field(
        None,
        description="Catalog name of the model (see `GET /models`); the task's default if omitted.",
        examples=["yolo11n"],
    ),
]
Conf = Annotated[float, Field(0.25, ge=0.0, le=1.0, description="Minimum confidence score.")]
Iou = Annotated[float, Field(0.7, ge=0.0, le=1.0, description="IoU threshold of non-maximum suppression.")]
ImgSz = Annotated[
    Annotated[int, Field(ge=32, le=4096)] | None,
    Blank,
    Field(
        None,
        description="Inference size in pixels (long side); the model's own size if omitted. "
        "Models exported with a fixed input size accept only that size.",
    ),
]
MaxDet = Annotated[int, Field(300, ge=1, le=1000, description="Maximum number of instances returned.")]
Classes = Annotated[
    Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1000)] | None,
    Blank,
    Field(None, description="Keep only these class ids (JSON list, e.g. `[0, 5]`)."),
]
TopK = Annotated[int, Field(5, ge=1, le=100, description="Number of labels returned by classification.")]
Phrase = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S")]
Labels = Annotated[
    list[Phrase],
    Field(
        min_length=1,
        max_length=64,
        description="Candidate labels (JSON list of 1 to 64 non-blank strings of at most 200 characters).",
        examples=[["a bus", "a cat", "a person"]],
    ),
]
Prompts = Annotated[
    Annotated[list[Phrase], Field(min_length=1, max_length=64)] | None,
    Blank,
    Field(
        None,
        description="Open-vocabulary detection only: what to look for (JSON list of 1 to 64 phrases).",
        examples=[["a bus", "a person"]],
    ),
]
Prefix = Annotated[
    Annotated[str, Field(max_length=500)] | None,
    Blank,
    Field(None, description="Text the caption must start with (conditional captioning)."),
]
Question = Annotated[str, Field(min_length=1, max_length=500, pattern=r"\S", examples=["What color is the bus?"])]
MaxNewTokens = Annotated[int, Field(30, ge=1, le=128, description="Upper bound on the generated tokens.")]
TaskChoice = Annotated[Task, Field(Task.detect, description="The task whose results to draw or stream.")]


class PredictOptions(BaseModel):
    """Options of one inference request, after validation: what a runner receives.

    Lists become tuples so that equal options group into one batch; `text` is a caption's prefix or
    a VQA question; `prompts` are open-vocabulary prompts or zero-shot labels.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    conf: Conf
    iou: Iou
    imgsz: ImgSz
    max_det: MaxDet
    classes: tuple[int, ...] | None = None
    top_k: TopK
    prompts: tuple[str, ...] | None = None
    text: str | None = None
    max_new_tokens: MaxNewTokens


# ---- results -----------------------------------------------------------------------------------


class Box(BaseModel):
    """Axis-aligned box in pixels of the original (EXIF-rotated) image."""

    x1: float
    y1: float
    x2: float
    y2: float


class Detection(BaseModel):
    box: Box
    score: float = Field(ge=0.0, le=1.0)
    class_id: int
    label: str
    track_id: int | None = Field(None, description="Stable id across the frames of a stream, when tracking is on.")


Point = tuple[float, float]


class SegmentInstance(Detection):
    polygons: list[list[Point]] = Field(
        description="Outlines of the instance mask, each a list of (x, y) pixel points."
    )


class Keypoint(BaseModel):
    name: str
    x: float
    y: float
    score: float


class PoseInstance(Detection):
    keypoints: list[Keypoint] = Field(description="Named keypoints (17 COCO keypoints for COCO pose models).")


class RotatedBox(BaseModel):
    cx: float
    cy: float
    width: float
    height: float
    angle: float = Field(description="Rotation in degrees, clockwise in image coordinates.")
    corners: list[Point] = Field(min_length=4, max_length=4, description="The 4 corners in pixels.")


class OrientedDetection(BaseModel):
    rbox: RotatedBox
    score: float = Field(ge=0.0, le=1.0)
    class_id: int
    label: str


class Classification(BaseModel):
    class_id: int
    label: str
    score: float


class ImageSize(BaseModel):
    width: int
    height: int


class Timings(BaseModel):
    """Milliseconds per stage; batch stages are divided by the batch size."""

    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_ms: float = Field(
        0.0,
        description="Wall time inside the model's runner, from the image's arrival to its answer (queue, decode, "
        "inference, postprocessing). The front's own wall time, upload parsing excluded, is the answer's "
        "`Server-Timing: total;dur=<ms>` header.",
    )
    batch_size: int = Field(1, description="How many images shared this image's inference batch.")
    load_ms: float = Field(0.0, description="Cold start: the model version was loaded for this request (evicted before).")


_EXAMPLE_TIMINGS = {
    "decode_ms": 9.1,
    "preprocess_ms": 2.0,
    "inference_ms": 45.2,
    "postprocess_ms": 0.8,
    "total_ms": 61.3,
    "batch_size": 1,
    "load_ms": 0.0,
}


class ResultBase(BaseModel):
    model: str
    version: int | None = Field(None, description="The model version that produced the result.")
    image: ImageSize
    timings: Timings


class DetectResult(ResultBase):
    task: Literal["detect"] = "detect"
    detections: list[Detection]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "detect",
                "model": "yolo11n",
                "version": 1,
                "image": {"width": 810, "height": 1080},
                "detections": [
                    {
                        "box": {"x1": 22.9, "y1": 231.3, "x2": 805.0, "y2": 756.8},
                        "score": 0.93,
                        "class_id": 5,
                        "label": "bus",
                        "track_id": None,
                    }
                ],
                "timings": _EXAMPLE_TIMINGS,
            }
        }
    )


class SegmentResult(ResultBase):
    task: Literal["segment"] = "segment"
    instances: list[SegmentInstance]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "segment",
                "model": "yolo11n-seg",
                "version": 1,
                "image": {"width": 810, "height": 1080},
                "instances": [
                    {
                        "box": {"x1": 18.5, "y1": 230.4, "x2": 802.1, "y2": 746.5},
                        "score": 0.86,
                        "class_id": 5,
                        "label": "bus",
                        "track_id": None,
                        "polygons": [[[20.0, 232.0], [800.0, 232.0], [800.0, 745.0], [20.0, 745.0]]],
                    }
                ],
                "timings": _EXAMPLE_TIMINGS,
            }
        }
    )


class PoseResult(ResultBase):
    task: Literal["pose"] = "pose"
    instances: list[PoseInstance]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "pose",
                "model": "yolov8n-pose",
                "version": 1,
                "image": {"width": 810, "height": 1080},
                "instances": [
                    {
                        "box": {"x1": 49.9, "y1": 397.5, "x2": 242.7, "y2": 903.7},
                        "score": 0.89,
                        "class_id": 0,
                        "label": "person",
                        "track_id": None,
                        "keypoints": [
                            {"name": "nose", "x": 141.2, "y": 437.8, "score": 0.97},
                            {"name": "left_eye", "x": 150.3, "y": 428.1, "score": 0.93},
                        ],
                    }
                ],
                "timings": _EXAMPLE_TIMINGS,
            }
        }
    )


class ClassifyResult(ResultBase):
    task: Literal["classify"] = "classify"
    top_k: list[Classification]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "classify",
                "model": "yolo11n-cls",
                "version": 1,
                "image": {"width": 810, "height": 1080},
                "top_k": [{"class_id": 654, "label": "minibus", "score": 0.65}],
                "timings": {
                    "decode_ms": 9.0,
                    "preprocess_ms": 6.0,
                    "inference_ms": 7.0,
                    "postprocess_ms": 0.1,
                    "total_ms": 25.0,
                    "batch_size": 1,
                    "load_ms": 0.0,
                },
            }
        }
    )


class ObbResult(ResultBase):
    task: Literal["obb"] = "obb"
    detections: list[OrientedDetection]

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "obb",
                "model": "yolo11n-obb",
                "version": 1,
                "image": {"width": 1024, "height": 768},
                "detections": [
                    {
                        "rbox": {
                            "cx": 300.0,
                            "cy": 200.0,
                            "width": 80.0,
                            "height": 40.0,
                            "angle": 30.0,
                            "corners": [[275.4, 162.7], [344.6, 202.7], [324.6, 237.3], [255.4, 197.3]],
                        },
                        "score": 0.91,
                        "class_id": 9,
                        "label": "large vehicle",
                    }
                ],
                "timings": _EXAMPLE_TIMINGS,
            }
        }
    )


class ZeroShotClassifyResult(ResultBase):
    task: Literal["zero_shot_classify"] = "zero_shot_classify"
    top_k: list[Classification] = Field(description="The caller's labels, best first; class_id is the label's index.")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "zero_shot_classify",
                "model": "clip-vit-base-patch32",
                "version": 1,
                "image": {"width": 810, "height": 1080},
                "top_k": [
                    {"class_id": 0, "label": "a bus", "score": 0.93},
                    {"class_id": 2, "label": "a person", "score": 0.06},
                ],
                "timings": _EXAMPLE_TIMINGS,
            }
        }
    )


class CaptionResult(ResultBase):
    task: Literal["caption"] = "caption"
    text: str
    prefix: str | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "caption",
                "model": "blip-image-captioning-base",
                "version": 1,
                "image": {"width": 810, "height": 1080},
                "text": "a blue bus parked on the side of a street",
                "prefix": None,
                "timings": _EXAMPLE_TIMINGS,
            }
        }
    )


class VqaResult(ResultBase):
    task: Literal["vqa"] = "vqa"
    question: str
    answer: str

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "vqa",
                "model": "blip-vqa-base",
                "version": 1,
                "image": {"width": 810, "height": 1080},
                "question": "What color is the bus?",
                "answer": "blue",
                "timings": _EXAMPLE_TIMINGS,
            }
        }
    )


class DepthResult(ResultBase):
    """Relative depth as the model predicts it: depth = min + png_value * scale."""

    task: Literal["depth"] = "depth"
    depth_png: str = Field(description="Base64 of a 16-bit grayscale PNG of the image's size.", repr=False)
    min: float
    max: float
    scale: float = Field(description="Depth units per PNG level: (max - min) / 65535.")

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "task": "depth",
                "model": "depth-anything-v2-small",
                "version": 1,
                "image": {"width": 810, "height": 1080},
                "depth_png": "iVBORw0KGgoAAAANSUhEUgAA...",
                "min": 0.0,
                "max": 7.91,
                "scale": 0.0001207,
                "timings": _EXAMPLE_TIMINGS,
            }
        }
    )


TaskResult = Annotated[
    DetectResult
    | SegmentResult
    | PoseResult
    | ClassifyResult
    | ObbResult
    | ZeroShotClassifyResult
    | CaptionResult
    | VqaResult
    | DepthResult,
    Field(discriminator="task"),
]
RESULT: TypeAdapter[TaskResult] = TypeAdapter(TaskResult)  # a result's JSON, written by the runners, read by streams


class ErrorBody(BaseModel):
    """Body of every 4xx and 503 answer (yolo_toys/errors.py)."""

    error: str = Field(description="What went wrong, in a few words.", examples=["unknown model"])
    detail: str | list | dict | None = Field(
        None,
        description="Specifics: the offending value, the limit, the choices.",
    )


class BatchError(ErrorBody):
    """One image of a `POST /batch` without a result: the error its own request would have had."""

    status: int = Field(description="The HTTP status a single-image request would have answered.", examples=[400])


BatchItem = Annotated[TaskResult | BatchError, Field(description="The task's result, or this image's error.")]


class BatchResult(BaseModel):
    """One item per uploaded image, in upload order: the task's result as the single-image route gives it,
    or `{"error", "detail", "status"}` for that image alone."""

    results: list[BatchItem]


# ---- server-sent events of `POST /stream/video` ---------------------------------------------------


class VideoResultEvent(BaseModel):
    """`event: result`: one processed frame."""

    frame: int = Field(description="Index of the frame in the file.")
    timestamp_ms: float
    result: TaskResult


class VideoErrorEvent(ErrorBody):
    """`event: error`: the stream stops at this frame (a cut file, a model failure)."""

    frame: int


class VideoEndEvent(BaseModel):
    """`event: end`: the whole file was read."""

    frames_read: int
    results: int


VideoEvent = VideoResultEvent | VideoErrorEvent | VideoEndEvent


# ---- models listing ----------------------------------------------------------------------------


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_latency_ms: int


VersionState = Literal["loading", "ready", "failed", "unloaded"]


class VersionInfo(BaseModel):
    """One stored version of a model and its state in the runner's worker processes."""

    version: int = Field(description="Numbered in the order the versions entered the model store, from 1.")
    tag: str = Field(description="The BentoML model-store tag.")
    state: VersionState
    reason: str | None = Field(None, description="Why it failed, or why it is not loaded.")
    default: bool = Field(False, description="Requests without a version get this one (unless a split is set).")
    weight: int | None = Field(None, description="Its share of a traffic split, in percent of the weights.")
    load_s: float | None = Field(None, description="Seconds its last load took (warm-up included; the longest "
                                 "over the workers).")
    memory_bytes: int | None = Field(None, description="Process memory its load added (RSS, or GPU memory on a GPU; "
                                     "the most over the workers).")
    workers: str = Field("", description="Worker processes in this state out of the runner's live workers, e.g. `2/2`.")
    source: str = ""
    sha256: str = ""


class ModelInfo(BaseModel):
    """One catalog model as `GET /models` lists it; its labels are at `GET /models/{name}`."""

    name: str
    family: str
    task: Task
    default: bool
    loaded: bool
    reason: str | None = Field(None, description="Why the model is not loaded.")
    source: str | None = Field(None, description="Where the loaded weights came from.")
    format: str | None = None
    device: str | None = None
    half: bool = False
    imgsz: int | None = Field(None, description="Input size the model was exported or trained for.")
    fixed_imgsz: bool = False
    open_vocabulary: bool = Field(False, description="Detects what the request's `prompts` name.")
    label_count: int = Field(0, description="How many class labels the model has (0: the caller names them).")
    batching: BatchingInfo
    default_version: int | None = Field(None, description="The version a request without `name:version` gets.")
    split: dict[int, int] | None = Field(None, description="Traffic split of requests without a version: weight per version.")
    versions: list[VersionInfo] = Field(default_factory=list, description="Every version in the model store.")


class ModelDetail(ModelInfo):
    """One model with its class labels: `GET /models/{name}`, and what runners report."""

    labels: dict[int, str] = Field(default_factory=dict)


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


# ---- between the front service and the runners ------------------------------------------------


class InferenceJob(BaseModel):
    """One image for one model, as the front service hands it to a family runner."""

    model: str
    task: Task
    image: bytes = Field(repr=False, description="The uploaded bytes, decoded once in the runner.")
    options: PredictOptions = Field(default_factory=PredictOptions)
    annotate: bool = False
    version: int | None = Field(None, description="A specific version; none: the default (or the traffic split).")


class Outcome(BaseModel):
    """What a runner's batch made of one job (runners/batch.py): a result, or the error the front must send."""

    result: TaskResult | None = None
    annotated_jpeg: bytes | None = Field(None, repr=False)
    status: int = 200
    error: ErrorBody | None = None


# The runner's `predict` answers one `Answer` per job, packed by `pack_answers` into one bytes body
# (BentoML sends a `bytes` answer as it is, and hands it to the calling front as it is). Per answer,
# a header of 14 bytes, then the body, then the JPEG:
#     status: u16 | version: u32 (0: none) | body length: u32 | jpeg length: u32    (little-endian)
# The body is the route's answer, written once in the runner: the task's result JSON (`version` and
# `timings` filled in), or the error `{"error", "detail"}`. The front sends it as it is: no parsing,
# no validation, no second serialisation; /batch joins the bodies (`batch_body`). A JSON envelope would
# escape each body into a string and base64 the JPEG; pydantic answers (BentoML's pickle) had the front's
# client validate every result, and the route serialise it again.
_HEADER = struct.Struct("<HIII")


@dataclass(frozen=True)
class Answer:
    """A runner's answer for one job, as the route sends it."""

    status: int
    body: bytes  # JSON: the task's result, or `{"error", "detail"}`
    version: int | None = None  # the model version that answered (the front's per-version metrics)
    jpeg: bytes | None = None  # the annotated image, when the job asked for it


def pack_answers(answers: list[Answer]) -> bytes:
    """The runner's `predict` answer: the answers in job order, framed as above."""
    parts = []
    for a in answers:
        jpeg = a.jpeg or b""
        parts += (_HEADER.pack(a.status, a.version or 0, len(a.body), len(jpeg)), a.body, jpeg)
    return b"".join(parts)


def unpack_answers(data: bytes) -> list[Answer]:
    """`pack_answers`' answers back, in the front: only the headers are read."""
    answers, at, view = [], 0, memoryview(data)
    while at < len(data):
        status, version, body_len, jpeg_len = _HEADER.unpack_from(data, at)
        at += _HEADER.size
        body, jpeg = bytes(view[at : at + body_len]), bytes(view[at + body_len : at + body_len + jpeg_len])
        answers.append(Answer(status, body, version or None, jpeg or None))
        at += body_len + jpeg_len
    return answers


def batch_body(answers: list[Answer]) -> bytes:
    """`BatchResult` JSON joined from the answers' bodies, unparsed: an error body (`{...}`, the runners'
    and `ServiceError.json()`'s compact JSON object) gets its `"status"` as last key."""
    items = [a.body if a.status == 200 else b'%s,"status":%d}' % (a.body[:-1], a.status) for a in answers]
    return b'{"results":[' + b",".join(items) + b"]}"


# ---- model management (admin keys; yolo_toys/front.py, runners/serving.py) ------------------------

# Below the front's 120 s request timeout (service.py), which would answer 504 without the state reached so far.
Timeout = Annotated[float, Field(100.0, ge=1, le=110, description="Seconds to wait for the state to be reached.")]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, description="The version to load; none: the default, else the newest.")
    default: bool = Field(False, description="Make it the default version once it is ready (an upgrade).")
    timeout_s: Timeout = 100.0


class UnloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(None, ge=1, description="The version to unload; none: every version of the model.")
    timeout_s: Timeout = 100.0


class DefaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The new default: loaded and warmed, then switched to atomically.")
    keep_previous: bool = Field(False, description="Keep the previous default loaded (else unloaded once idle).")
    timeout_s: Timeout = 100.0


class SplitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[int, int] | None = Field(
        description="Weight per version (e.g. `{\"1\": 90, \"2\": 10}`) for requests that name no version; null clears it.",
        examples=[{"1": 90, "2": 10}],
    )
    timeout_s: Timeout = 100.0


class ModelAction(BaseModel):
    """A management request as the front hands it to every replica of the model's runner."""

    action: Literal["load", "unload", "default", "split"]
    name: str
    version: int | None = None
    default: bool = False
    keep_previous: bool = False
    weights: dict[int, int] | None = None
    timeout_s: float = 100.0


class RegisterJob(BaseModel):
    """`POST /models` as the front hands it to every replica of the family's runner."""

    name: str
    family: str
    task: Task
    hf_task: str | None = None
    description: str = ""
    filename: str
    artifact: bytes = Field(repr=False)
    load: bool = True
    default: bool = False
    timeout_s: float = 100.0


class ManageResult(BaseModel):
    """The answer of a management call: the model as it now is."""

    model: ModelDetail
    version: int | None = Field(None, description="The version the call concerned (the new one, for a registration).")
    message: str


class ManageOutcome(BaseModel):
    """A runner's answer to a management call: the result, or the error the front must send."""

    result: ManageResult | None = None
    status: int = 200
    error: ErrorBody | None = None
