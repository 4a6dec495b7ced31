"""runners.ultralytics postprocessing: real Ultralytics `Results` into the shared result schemas.

The family module imports without a model store or BentoML, so these run on bare `Results`.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter
from ultralytics.engine.results import Results

from models.catalog import ModelEntry, Source
from yolo_toys import schemas
from yolo_toys.schemas import (
    ClassifyResult,
    DetectResult,
    InferenceJob,
    ObbResult,
    PoseResult,
    PredictOptions,
    SegmentResult,
    Task,
    Timings,
)

H, W = 60, 100  # not square: a width/height swap shows
NAMES = {0: "person", 5: "bus"}
COCO_KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip
# Values exact in float32, so "carried over exactly" means ==.
BOXES = [[10.5, 20.25, 50.0, 40.75, 0.875, 5.0], [0.0, 0.0, 99.5, 59.5, 0.5, 0.0], [1.0, 2.0, 3.0, 4.0, 0.25, 7.0]]


@pytest.fixture(scope="module")
def ru() -> ModuleType:
    import runners.ultralytics as module

    return module


def loaded_model(ru: ModuleType, task: Task, names: dict[int, str] | None = None):
    entry = ModelEntry(name=f"test-{task.value}", family="ultralytics", task=task, sources=[Source(local="x.pt")])
    return ru.LoadedYolo(entry=entry, yolo=None, labels=dict(NAMES if names is None else names), source="test",
                         format="pytorch", device="cpu", half=False, imgsz=640, fixed_imgsz=False,
                         rect_letterbox=True)  # fmt: skip


def job(task: Task, **options) -> InferenceJob:
    return InferenceJob(model=f"test-{task.value}", task=task, image=b"", options=PredictOptions(**options))


def results(names: dict[int, str] | None = None, h: int = H, w: int = W, **outputs) -> Results:
    return Results(orig_img=np.zeros((h, w, 3), np.uint8), path="x", names=dict(NAMES if names is None else names),
                   **outputs)  # fmt: skip


def postprocess(ru: ModuleType, task: Task, r: Results, names: dict[int, str] | None = None, **options):
    timings = Timings(decode_ms=1.0, inference_ms=2.0, batch_size=2)
    result = ru.to_result(r, loaded_model(ru, task, names), job(task, **options), timings)
    assert result.model == f"test-{task.value}"
    assert result.task == task.value
    assert result.timings == timings
    # What the runner returns is a valid TaskResult of the right class, through JSON too.
    assert TypeAdapter(schemas.TaskResult).validate_json(result.model_dump_json()) == result
    return result


def assert_detections(dets, rows=BOXES, names=NAMES) -> None:
    assert len(dets) == len(rows)
    for d, (x1, y1, x2, y2, conf, cls) in zip(dets, rows, strict=True):
        assert (d.box.x1, d.box.y1, d.box.x2, d.box.y2) == (x1, y1, x2, y2)
        assert d.score == conf
        assert d.class_id == int(cls)
        assert d.label == names.get(int(cls), str(int(cls)))


# ---- weights_format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("x.pt", "pytorch"),
        ("/store/yolov8n/abc/yolo11n.pt", "pytorch"),
        ("yolo11n_int8_openvino_model", "openvino"),
        ("/store/yolo11n/abc/yolo11n_int8_openvino_model", "openvino"),
        ("m.onnx", "onnx"),
        ("yolo11n-cls_saved_model/m.tflite", "tflite"),
        ("m.engine", "tensorrt"),
        ("m.torchscript", "torchscript"),
        ("m.mlpackage", "coreml"),
    ],
)
def test_weights_format(ru: ModuleType, path: str, fmt: str) -> None:
    assert ru.weights_format(Path(path)) == fmt


# ---- detect ----------------------------------------------------------------------------------------


def test_detect_carries_boxes_scores_and_labels(ru: ModuleType) -> None:
    result = postprocess(ru, Task.detect, results(boxes=torch.tensor(BOXES)))
    assert isinstance(result, DetectResult)
    assert (result.image.width, result.image.height) == (W, H)
    assert_detections(result.detections)
    assert result.detections[2].label == "7"  # a class id the model has no name for


def test_detect_uses_the_model_names_not_the_results_names(ru: ModuleType) -> None:
    r = results(names={0: "other", 5: "other"}, boxes=torch.tensor(BOXES[:1]))
    assert postprocess(ru, Task.detect, r, names={5: "autobus"}).detections[0].label == "autobus"


def test_detect_score_is_the_float32_score(ru: ModuleType) -> None:
    r = results(boxes=torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.9, 0.0]]))
    assert postprocess(ru, Task.detect, r).detections[0].score == float(np.float32(0.9))


@pytest.mark.parametrize("boxes", [torch.zeros((0, 6)), None], ids=["empty", "none"])
def test_detect_without_detections(ru: ModuleType, boxes) -> None:
    result = postprocess(ru, Task.detect, results(boxes=boxes))
    assert result.detections == []
    assert (result.image.width, result.image.height) == (W, H)


# ---- segment ---------------------------------------------------------------------------------------


def rect_mask(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> torch.Tensor:
    """Mask with ones on rows y1..y2-1 and columns x1..x2-1."""
    mask = torch.zeros((h, w))
    mask[y1:y2, x1:x2] = 1.0
    return mask


def assert_on_rect_outline(points, x1: float, y1: float, x2: float, y2: float, tol: float) -> None:
    """Every point lies on the border of the rectangle [x1, x2] x [y1, y2], within `tol` pixels."""
    assert len(points) >= 4
    for x, y in points:
        assert x1 - tol <= x <= x2 + tol and y1 - tol <= y <= y2 + tol, (x, y)
        assert min(abs(x - x1), abs(x - x2), abs(y - y1), abs(y - y2)) <= tol, (x, y)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    # ... and the outline goes all the way round it.
    assert min(xs) <= x1 + tol and max(xs) >= x2 - tol and min(ys) <= y1 + tol and max(ys) >= y2 - tol


def test_segment_polygons_follow_the_mask_outline(ru: ModuleType) -> None:
    boxes = torch.tensor([[30.0, 20.0, 70.0, 40.0, 0.75, 5.0], [5.0, 45.0, 25.0, 55.0, 0.5, 0.0]])
    masks = torch.stack([rect_mask(H, W, 30, 20, 70, 40), rect_mask(H, W, 5, 45, 25, 55)])
    result = postprocess(ru, Task.segment, results(boxes=boxes, masks=masks))
    assert isinstance(result, SegmentResult)
    assert (result.image.width, result.image.height) == (W, H)
    assert_detections(result.instances, boxes.tolist())
    first, second = result.instances
    assert len(first.polygons) == 1 and len(second.polygons) == 1
    assert_on_rect_outline(first.polygons[0], 30, 20, 70, 40, tol=1.0)
    assert_on_rect_outline(second.polygons[0], 5, 45, 25, 55, tol=1.0)


def test_segment_mask_in_two_parts_has_two_outlines(ru: ModuleType) -> None:
    """One polygon per part, as the transformers family gives: no outline joined by a bridge line."""
    boxes = torch.tensor([[5.0, 5.0, 95.0, 55.0, 0.75, 5.0]])
    mask = rect_mask(H, W, 5, 5, 25, 25) + rect_mask(H, W, 60, 30, 95, 55)
    [instance] = postprocess(ru, Task.segment, results(boxes=boxes, masks=mask[None])).instances
    assert len(instance.polygons) == 2
    left, right = sorted(instance.polygons, key=lambda poly: min(x for x, _ in poly))
    assert_on_rect_outline(left, 5, 5, 25, 25, tol=1.0)
    assert_on_rect_outline(right, 60, 30, 95, 55, tol=1.0)


def test_segment_polygons_are_in_original_image_pixels(ru: ModuleType) -> None:
    """Masks at half the image's resolution (as a model's mask head gives): polygons are scaled up."""
    boxes = torch.tensor([[30.0, 20.0, 70.0, 40.0, 0.75, 5.0]])
    masks = rect_mask(H // 2, W // 2, 15, 10, 35, 20)[None]
    [instance] = postprocess(ru, Task.segment, results(boxes=boxes, masks=masks)).instances
    assert_on_rect_outline(instance.polygons[0], 30, 20, 70, 40, tol=2.0)


def test_segment_empty_mask_gives_no_polygon(ru: ModuleType) -> None:
    boxes = torch.tensor([[30.0, 20.0, 70.0, 40.0, 0.75, 5.0]])
    [instance] = postprocess(ru, Task.segment, results(boxes=boxes, masks=torch.zeros((1, H, W)))).instances
    assert instance.polygons == []
    assert instance.label == "bus"


def test_segment_without_masks_keeps_the_boxes(ru: ModuleType) -> None:
    result = postprocess(ru, Task.segment, results(boxes=torch.tensor(BOXES)))
    assert_detections(result.instances)
    assert all(i.polygons == [] for i in result.instances)


@pytest.mark.parametrize("masks", [None, torch.zeros((0, H, W))], ids=["no-masks", "empty-masks"])
def test_segment_without_detections(ru: ModuleType, masks) -> None:
    assert postprocess(ru, Task.segment, results(boxes=torch.zeros((0, 6)), masks=masks)).instances == []


# ---- pose ------------------------------------------------------------------------------------------


def test_keypoint_names_are_the_coco_order(ru: ModuleType) -> None:
    assert ru.COCO_KEYPOINTS == COCO_KEYPOINT_NAMES


def test_pose_has_17_named_keypoints_with_their_scores(ru: ModuleType) -> None:
    boxes = torch.tensor([[10.0, 5.0, 40.0, 55.0, 0.875, 0.0], [50.0, 5.0, 90.0, 55.0, 0.5, 0.0]])
    kpts = torch.zeros((2, 17, 3))
    for n in range(2):
        for k in range(17):
            kpts[n, k] = torch.tensor([10.0 + 40 * n + k, 5.0 + 2 * k + 0.5, (k + 1) / 32 + 0.25 * n])
    result = postprocess(ru, Task.pose, results(boxes=boxes, keypoints=kpts))
    assert isinstance(result, PoseResult)
    assert (result.image.width, result.image.height) == (W, H)
    assert_detections(result.instances, boxes.tolist())
    for n, instance in enumerate(result.instances):
        assert [kp.name for kp in instance.keypoints] == COCO_KEYPOINT_NAMES
        got = [(kp.x, kp.y, kp.score) for kp in instance.keypoints]
        assert got == [tuple(p) for p in kpts[n].tolist()]


def test_pose_with_other_keypoints_and_no_scores(ru: ModuleType) -> None:
    boxes = torch.tensor([[10.0, 5.0, 40.0, 55.0, 0.875, 0.0]])
    kpts = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]])
    [instance] = postprocess(ru, Task.pose, results(boxes=boxes, keypoints=kpts)).instances
    assert [(kp.name, kp.x, kp.y, kp.score) for kp in instance.keypoints] == [
        ("kp0", 1.0, 2.0, 1.0), ("kp1", 3.0, 4.0, 1.0), ("kp2", 5.0, 6.0, 1.0), ("kp3", 7.0, 8.0, 1.0)]  # fmt: skip


def test_pose_without_detections(ru: ModuleType) -> None:
    r = results(boxes=torch.zeros((0, 6)), keypoints=torch.zeros((0, 17, 3)))
    assert postprocess(ru, Task.pose, r).instances == []


# ---- classify --------------------------------------------------------------------------------------

PROBS = [0.0625, 0.25, 0.03125, 0.375, 0.015625, 0.125, 0.0078125, 0.125]
CLS_NAMES = {i: f"class{i}" for i in range(7)}  # 7 has no name


@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_classify_top_k(ru: ModuleType, top_k: int) -> None:
    r = results(names=CLS_NAMES, probs=torch.tensor(PROBS))
    result = postprocess(ru, Task.classify, r, names=CLS_NAMES, top_k=top_k)
    assert isinstance(result, ClassifyResult)
    assert (result.image.width, result.image.height) == (W, H)
    assert len(result.top_k) == top_k
    scores = [c.score for c in result.top_k]
    assert scores == sorted(scores, reverse=True)
    assert scores == sorted(PROBS, reverse=True)[:top_k]
    for c in result.top_k:
        assert c.score == PROBS[c.class_id]
        assert c.label == CLS_NAMES.get(c.class_id, str(c.class_id))
    assert [c.class_id for c in result.top_k] == [3, 1, 5, 7, 0][:top_k]  # ties keep class order


def test_classify_default_top_k_is_5(ru: ModuleType) -> None:
    r = results(names=CLS_NAMES, probs=torch.tensor(PROBS))
    assert len(postprocess(ru, Task.classify, r, names=CLS_NAMES).top_k) == PredictOptions().top_k == 5


def test_classify_top_k_larger_than_the_classes(ru: ModuleType) -> None:
    r = results(names=CLS_NAMES, probs=torch.tensor(PROBS))
    result = postprocess(ru, Task.classify, r, names=CLS_NAMES, top_k=100)
    assert [c.class_id for c in result.top_k] == [3, 1, 5, 7, 0, 2, 4, 6]
    assert result.top_k[3].label == "7"


# ---- obb -------------------------------------------------------------------------------------------


def test_obb_angle_in_degrees_and_four_corners(ru: ModuleType) -> None:
    rows = [[50.0, 30.0, 40.0, 20.0, math.pi / 2, 0.75, 5.0], [20.0, 20.0, 10.0, 6.0, 0.0, 0.5, 0.0]]
    r = results(obb=torch.tensor(rows))
    result = postprocess(ru, Task.obb, r)
    assert isinstance(result, ObbResult)
    assert (result.image.width, result.image.height) == (W, H)
    turned, flat = result.detections
    assert (turned.score, turned.class_id, turned.label) == (0.75, 5, "bus")
    assert (flat.score, flat.class_id, flat.label) == (0.5, 0, "person")
    assert (turned.rbox.cx, turned.rbox.cy, turned.rbox.width, turned.rbox.height) == (50.0, 30.0, 40.0, 20.0)
    assert turned.rbox.angle == pytest.approx(90.0, abs=1e-4)
    assert flat.rbox.angle == 0.0
    for det in result.detections:
        assert len(det.rbox.corners) == 4
    # 40 wide, 20 high, turned a quarter: the corners span 20 in x and 40 in y around the centre.
    xs = sorted(x for x, _ in turned.rbox.corners)
    ys = sorted(y for _, y in turned.rbox.corners)
    assert xs == pytest.approx([40.0, 40.0, 60.0, 60.0], abs=1e-3)
    assert ys == pytest.approx([10.0, 10.0, 50.0, 50.0], abs=1e-3)
    np.testing.assert_allclose(sorted(flat.rbox.corners), [(15.0, 17.0), (15.0, 23.0), (25.0, 17.0), (25.0, 23.0)],
                               atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(turned.rbox.corners, r.obb.xyxyxyxy[0].numpy(), atol=1e-5)  # in Ultralytics' order


def test_obb_angle_sign_follows_ultralytics(ru: ModuleType) -> None:
    r = results(obb=torch.tensor([[50.0, 30.0, 20.0, 10.0, -math.pi / 6, 0.5, 0.0]]))
    [det] = postprocess(ru, Task.obb, r).detections
    assert det.rbox.angle == pytest.approx(-30.0, abs=1e-4)


def test_obb_without_detections(ru: ModuleType) -> None:
    assert postprocess(ru, Task.obb, results(obb=torch.zeros((0, 7)))).detections == []
    assert postprocess(ru, Task.obb, results()).detections == []
