"""schemas.py: the result types every runner answers with, as a client parses them from JSON."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from yolo_toys import schemas
from yolo_toys.schemas import (
    Box,
    CaptionResult,
    Classification,
    ClassifyResult,
    DepthResult,
    Detection,
    DetectResult,
    ErrorBody,
    ImageSize,
    Keypoint,
    ObbResult,
    OrientedDetection,
    Outcome,
    PoseInstance,
    PoseResult,
    PredictOptions,
    RotatedBox,
    SegmentInstance,
    SegmentResult,
    Timings,
    VqaResult,
    ZeroShotClassifyResult,
)

TASK_RESULT = TypeAdapter(schemas.TaskResult)


def common() -> dict:
    return {
        "model": "m",
        "image": ImageSize(width=640, height=480),
        "timings": Timings(decode_ms=1.5, preprocess_ms=2.25, inference_ms=30.125, postprocess_ms=0.5,
                           total_ms=40.0, batch_size=3),
    }  # fmt: skip


def detection(class_id: int = 5, label: str = "bus", score: float = 0.875) -> dict:
    return {"box": Box(x1=1.5, y1=2.25, x2=300.0, y2=400.75), "score": score, "class_id": class_id, "label": label}


def results() -> dict[str, BaseModel]:
    """One non-trivial result per task, keyed by the task name."""
    rbox = RotatedBox(cx=100.0, cy=50.0, width=40.0, height=20.0, angle=30.0,
                      corners=[(80.0, 40.0), (120.0, 40.0), (120.0, 60.0), (80.0, 60.0)])  # fmt: skip
    return {
        "detect": DetectResult(detections=[Detection(**detection()), Detection(**detection(0, "person", 0.5))],
                               **common()),  # fmt: skip
        "segment": SegmentResult(
            instances=[SegmentInstance(**detection(), polygons=[[(1.0, 2.0), (3.5, 4.0), (5.0, 6.25)], [(7.0, 8.0)]])],
            **common(),
        ),
        "pose": PoseResult(
            instances=[PoseInstance(**detection(0, "person"),
                                    keypoints=[Keypoint(name="nose", x=10.0, y=20.0, score=0.75),
                                               Keypoint(name="left_eye", x=11.0, y=19.0, score=0.25)])],
            **common(),
        ),  # fmt: skip
        "classify": ClassifyResult(
            top_k=[Classification(class_id=654, label="minibus", score=0.625),
                   Classification(class_id=734, label="police_van", score=0.25)],
            **common(),
        ),  # fmt: skip
        "obb": ObbResult(detections=[OrientedDetection(rbox=rbox, score=0.75, class_id=1, label="ship")], **common()),
        "zero_shot_classify": ZeroShotClassifyResult(
            top_k=[Classification(class_id=1, label="a bus", score=0.75),
                   Classification(class_id=0, label="a cat", score=0.25)],
            **common(),
        ),  # fmt: skip
        "caption": CaptionResult(text="a bus on a street", prefix="a bus", **common()),
        "vqa": VqaResult(question="what color is the bus?", answer="blue", **common()),
        "depth": DepthResult(depth_png="iVBORw0KGgo=", min=0.5, max=3.0, scale=2.5 / 65535, **common()),
    }


CLASSES = {"detect": DetectResult, "segment": SegmentResult, "pose": PoseResult, "classify": ClassifyResult,
           "obb": ObbResult, "zero_shot_classify": ZeroShotClassifyResult, "caption": CaptionResult,
           "vqa": VqaResult, "depth": DepthResult}  # fmt: skip


@pytest.mark.parametrize("task", list(CLASSES))
def test_each_result_round_trips_through_json(task: str) -> None:
    result = results()[task]
    assert result.task == task
    text = result.model_dump_json()
    assert json.loads(text)["task"] == task
    back = type(result).model_validate_json(text)
    assert back == result
    assert back.model_dump() == result.model_dump()


def test_every_task_has_a_result_class() -> None:
    assert set(CLASSES) == {t.value for t in schemas.Task}


@pytest.mark.parametrize("task", list(CLASSES))
def test_task_result_union_picks_the_class_by_task(task: str) -> None:
    result = results()[task]
    parsed = TASK_RESULT.validate_json(result.model_dump_json())
    assert type(parsed) is CLASSES[task]
    assert parsed == result
    # From a plain dict (what a JSON client holds) as well.
    assert type(TASK_RESULT.validate_python(json.loads(result.model_dump_json()))) is CLASSES[task]


def test_task_result_union_tells_detect_from_obb_by_task_alone() -> None:
    """Both have `detections`; only `task` says which kind of detections they are."""
    obb = json.loads(results()["obb"].model_dump_json())
    with pytest.raises(ValidationError):
        TASK_RESULT.validate_python({**obb, "task": "detect"})  # rotated boxes are not Detections
    empty = {**obb, "detections": []}
    assert type(TASK_RESULT.validate_python({**empty, "task": "obb"})) is ObbResult
    assert type(TASK_RESULT.validate_python({**empty, "task": "detect"})) is DetectResult


def test_task_result_union_rejects_unknown_or_missing_task() -> None:
    data = json.loads(results()["detect"].model_dump_json())
    with pytest.raises(ValidationError, match="depth"):
        TASK_RESULT.validate_python({**data, "task": "depth"})
    data.pop("task")
    with pytest.raises(ValidationError, match="task"):
        TASK_RESULT.validate_python(data)


@pytest.mark.parametrize("task", list(CLASSES))
def test_outcome_with_a_result_round_trips(task: str) -> None:
    outcome = Outcome(result=results()[task])
    back = Outcome.model_validate_json(outcome.model_dump_json())
    assert type(back.result) is CLASSES[task]
    assert back == outcome
    assert back.status == 200
    assert back.error is None
    assert back.annotated_jpeg is None


def test_outcome_with_an_error_round_trips() -> None:
    outcome = Outcome(status=422, error=ErrorBody(error="wrong task for model", detail={"model": "yolo11n",
                                                                                          "serves": ["detect"]}))
    back = Outcome.model_validate_json(outcome.model_dump_json())
    assert back == outcome
    assert back.result is None
    assert back.status == 422
    assert back.error.error == "wrong task for model"
    assert back.error.detail == {"model": "yolo11n", "serves": ["detect"]}
    for detail in ("a string", ["a", "list"], None):
        body = ErrorBody(error="e", detail=detail)
        assert ErrorBody.model_validate_json(body.model_dump_json()).detail == detail


def test_outcome_carries_annotated_jpeg_bytes_in_python_mode() -> None:
    """Runner -> front travels pickled (BentoML's internal media type): bytes must survive model_dump."""
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    outcome = Outcome(result=results()["detect"], annotated_jpeg=jpeg)
    assert Outcome.model_validate(outcome.model_dump()).annotated_jpeg == jpeg
    assert "annotated_jpeg" not in repr(outcome)


@pytest.mark.parametrize("count", [3, 5])
def test_rotated_box_needs_exactly_four_corners(count: int) -> None:
    corners = [(float(i), float(i)) for i in range(count)]
    with pytest.raises(ValidationError, match="corners"):
        RotatedBox(cx=0, cy=0, width=1, height=1, angle=0, corners=corners)
    RotatedBox(cx=0, cy=0, width=1, height=1, angle=0, corners=corners[:3] + [(9.0, 9.0)])


def test_rotated_box_corner_is_a_pair() -> None:
    with pytest.raises(ValidationError):
        RotatedBox(cx=0, cy=0, width=1, height=1, angle=0, corners=[(0, 0), (1, 0), (1, 1), (0, 1, 2)])


@pytest.mark.parametrize("score", [1.0001, 2.0, -0.01])
def test_detection_score_is_a_probability(score: float) -> None:
    with pytest.raises(ValidationError, match="score"):
        Detection(**detection(score=score))
    with pytest.raises(ValidationError, match="score"):
        OrientedDetection(rbox=results()["obb"].detections[0].rbox, score=score, class_id=0, label="x")


@pytest.mark.parametrize("score", [0.0, 1.0])
def test_detection_score_bounds_are_inclusive(score: float) -> None:
    assert Detection(**detection(score=score)).score == score


def test_predict_options_defaults() -> None:
    options = PredictOptions()
    assert options.model_dump() == {"conf": 0.25, "iou": 0.7, "imgsz": None, "max_det": 300, "classes": None,
                                    "top_k": 5, "prompts": None, "text": None, "max_new_tokens": 30}  # fmt: skip
    assert PredictOptions(classes=[0, 5]).classes == (0, 5)


def test_timings_defaults() -> None:
    assert Timings().model_dump() == {"decode_ms": 0.0, "preprocess_ms": 0.0, "inference_ms": 0.0,
                                      "postprocess_ms": 0.0, "total_ms": 0.0, "batch_size": 1, "load_ms": 0.0}  # fmt: skip


@pytest.mark.parametrize("cls", [DetectResult, SegmentResult, PoseResult, ClassifyResult, ObbResult,
                                 ZeroShotClassifyResult, CaptionResult, VqaResult, DepthResult])  # fmt: skip
def test_json_schema_example_validates(cls: type[BaseModel]) -> None:
    schema = cls.model_json_schema()
    # `example`, singular: BentoML's OpenAPI 3.0 Schema object rejects `examples` (GET /docs.json would 500).
    assert "examples" not in schema
    example = schema.get("example")
    assert example, f"{cls.__name__} has no example in its JSON schema"
    parsed = cls.model_validate(example)
    assert parsed.task == example["task"]
    assert type(TASK_RESULT.validate_python(example)) is cls
    # The example is complete: nothing in it is left to defaults.
    assert parsed.model_dump(mode="json") == example
