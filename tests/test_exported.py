"""The lean path (runners/exported.py) answers what Ultralytics' own `predict` answers, task by task.

Each case loads the same weights twice, on the lean path and through `predict` (YOLO_TOYS_LEAN_PATH=0),
and compares the results the service would send: the same classes and labels in the same order,
boxes and keypoints within 1e-3 relative, scores within 1e-5, mask outlines covering the same pixels
(IoU >= 0.99). The shared pretrained exports (OpenVINO INT8) and random-weight models exported here
(ONNX static and dynamic, OpenVINO) cover detect, segment, pose, classify and obb.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from conftest import SHARED_WEIGHTS, bus_jpg, zidane_jpg
from models.catalog import ModelEntry
from runners.ultralytics import FAMILY, LoadedYolo
from yolo_toys.imaging import DecodedImage, decode
from yolo_toys.schemas import InferenceJob, PredictOptions, Task, TaskResult, Timings
from yolo_toys.settings import settings

SHARED = {
    "yolov8n-ov": ("yolov8n_int8_openvino_model", Task.detect),
    "yolo11n-ov": ("yolo11n_int8_openvino_model", Task.detect),
    "yolov8n-pose-ov": ("yolov8n-pose_int8_openvino_model", Task.pose),
    "yolo11n-seg-ov": ("yolo11n-seg_int8_openvino_model", Task.segment),
}
# random weights: (Ultralytics config, task, export arguments)
RANDOM = {
    "rand-detect-onnx": ("yolov8n.yaml", Task.detect, {"format": "onnx", "imgsz": 320}),
    "rand-detect-onnx-dynamic": ("yolov8n.yaml", Task.detect, {"format": "onnx", "imgsz": 320, "dynamic": True}),
    "rand-obb-onnx": ("yolov8n-obb.yaml", Task.obb, {"format": "onnx", "imgsz": 320}),
    "rand-cls-onnx": ("yolov8n-cls.yaml", Task.classify, {"format": "onnx", "imgsz": 96}),
    "rand-cls-ov": ("yolov8n-cls.yaml", Task.classify, {"format": "openvino", "imgsz": 96}),
    "rand-pose-onnx": ("yolov8n-pose.yaml", Task.pose, {"format": "onnx", "imgsz": 320}),
    "rand-seg-ov-dynamic": ("yolov8n-seg.yaml", Task.segment, {"format": "openvino", "imgsz": 320, "dynamic": True}),
}
# Random weights score every box low: a low `conf` gives each case detections to compare.
RANDOM_OPTIONS = PredictOptions(conf=0.0, max_det=30)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from ultralytics import YOLO

    work = tmp_path_factory.mktemp("exports")
    found = {}
    for name, (config, _task, export) in RANDOM.items():
        torch.manual_seed(0)
        checkpoint = work / name / f"{Path(config).stem}.pt"
        checkpoint.parent.mkdir()
        YOLO(config).save(str(checkpoint))
        found[name] = Path(YOLO(str(checkpoint)).export(**export, verbose=False))
    return found


def _load(name: str, task: Task, weights: Path, lean: bool, monkeypatch: pytest.MonkeyPatch) -> LoadedYolo:
    monkeypatch.setenv("YOLO_TOYS_LEAN_PATH", "1" if lean else "0")
    settings.cache_clear()
    try:
        model = FAMILY.load(ModelEntry(name=name, family="ultralytics", task=task, sources=[{"local": str(weights)}]), weights)
    finally:
        settings.cache_clear()
    assert isinstance(model, LoadedYolo) and (model.exported is not None) == lean, model.describe()
    return model


@pytest.fixture
def both(request: pytest.FixtureRequest, exports: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    name = request.param
    if name in SHARED:
        folder, task = SHARED[name]
        weights, options = SHARED_WEIGHTS / folder, PredictOptions()
    else:
        _config, task, _export = RANDOM[name]
        weights, options = exports[name], RANDOM_OPTIONS
    yield _load(name, task, weights, True, monkeypatch), _load(name, task, weights, False, monkeypatch), options
    settings.cache_clear()  # the test read the settings with the lean path off: the next test reads them afresh


def _images() -> list[DecodedImage]:
    return [decode(bus_jpg()), decode(zidane_jpg())]


def _results(model: LoadedYolo, images: list[DecodedImage], options: PredictOptions) -> list[dict[str, Any]]:
    job = InferenceJob(model=model.entry.name, task=model.entry.task, image=b"", options=options)
    outputs = FAMILY.infer(model, images, options).outputs
    return [_dump(FAMILY.to_result(model, out, image, job, Timings())) for out, image in zip(outputs, images, strict=True)]


def _dump(result: TaskResult) -> dict[str, Any]:
    return result.model_dump(exclude={"timings"})


def _instances(result: dict[str, Any]) -> list[dict[str, Any]]:
    return result.get("detections") or result.get("instances") or result.get("top_k") or []


def _numbers(item: dict[str, Any], keys: tuple[str, ...]) -> np.ndarray:
    values: list[float] = []
    for key in keys:
        part = item.get(key)
        if isinstance(part, dict):
            values += [v for k, v in part.items() if isinstance(v, (int, float)) and k != "angle"]
            values += [c for corner in part.get("corners", []) for c in corner]
        elif isinstance(part, list):
            values += [v for p in part for v in (p["x"], p["y"])]
    return np.asarray(values, dtype=np.float64)


def _mask(polygons: list, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for polygon in polygons:
        cv2.fillPoly(mask, [np.round(np.asarray(polygon)).astype(np.int32)], 1)
    return mask


def assert_same(lean: dict[str, Any], reference: dict[str, Any]) -> None:
    """Same classes and labels in order; boxes, corners and keypoints to 1e-3 relative; scores to 1e-5; masks IoU >= 0.99."""
    mine, theirs = _instances(lean), _instances(reference)
    assert [(i["class_id"], i["label"]) for i in mine] == [(i["class_id"], i["label"]) for i in theirs]
    assert np.allclose([i["score"] for i in mine], [i["score"] for i in theirs], rtol=0, atol=1e-5)
    shape = (reference["image"]["height"], reference["image"]["width"])
    for a, b in zip(mine, theirs, strict=True):
        assert np.allclose(_numbers(a, ("box", "rbox", "keypoints")), _numbers(b, ("box", "rbox", "keypoints")), rtol=1e-3, atol=1e-3)
        if "polygons" in b:
            ma, mb = _mask(a["polygons"], shape), _mask(b["polygons"], shape)
            union = np.logical_or(ma, mb).sum()
            assert union == 0 or np.logical_and(ma, mb).sum() / union >= 0.99


@pytest.mark.parametrize("both", [*SHARED, *RANDOM], indirect=True)
def test_the_lean_path_answers_what_predict_answers(both: tuple) -> None:
    lean, reference, options = both
    images = _images()
    for image in images:
        [mine], [theirs] = _results(lean, [image], options), _results(reference, [image], options)
        assert _instances(theirs), f"{reference.entry.name} found nothing to compare on this image"
        assert_same(mine, theirs)


@pytest.mark.parametrize("both", ["yolov8n-ov", "yolov8n-pose-ov", "rand-detect-onnx", "rand-cls-ov"], indirect=True)
def test_a_chunk_of_images_answers_each_as_alone(both: tuple) -> None:
    """Several images in one call (parallel infer requests for a static-batch export) answer as one by one."""
    lean, reference, options = both
    images = _images() * 2
    alone = [_results(reference, [image], options)[0] for image in images]
    for mine, theirs in zip(_results(lean, images, options), alone, strict=True):
        assert_same(mine, theirs)


@pytest.mark.parametrize("both", ["yolov8n-ov", "yolo11n-seg-ov"], indirect=True)
@pytest.mark.parametrize("options", [PredictOptions(conf=0.5, iou=0.3), PredictOptions(classes=(0,), max_det=2),
                                     PredictOptions(conf=0.1, max_det=100)])  # fmt: skip
def test_options_apply_as_in_predict(both: tuple, options: PredictOptions) -> None:
    lean, reference, _ = both
    for image in _images():
        [mine], [theirs] = _results(lean, [image], options), _results(reference, [image], options)
        assert_same(mine, theirs)


@pytest.mark.parametrize("both", ["yolo11n-seg-ov"], indirect=True)
def test_a_dynamic_export_follows_imgsz_as_predict_does(both: tuple) -> None:
    lean, reference, _ = both
    options = PredictOptions(imgsz=320)
    for image in _images():
        [mine], [theirs] = _results(lean, [image], options), _results(reference, [image], options)
        assert_same(mine, theirs)


def test_an_export_with_another_batch_stays_on_predict(tmp_path: Path) -> None:
    """The runtimes here run a batch-1 export image by image; an export of another batch goes through `predict`."""
    import shutil

    from runners.ultralytics import _load_exported

    folder = tmp_path / "yolov8n_int8_openvino_model"
    shutil.copytree(SHARED_WEIGHTS / "yolov8n_int8_openvino_model", folder)
    entry = ModelEntry(name="b", family="ultralytics", task=Task.detect, sources=[{"local": str(folder)}])
    assert _load_exported(entry, folder, "openvino") is not None
    metadata = folder / "metadata.yaml"
    metadata.write_text(metadata.read_text().replace("batch: 1\n", "batch: 4\n", 1))
    assert _load_exported(entry, folder, "openvino") is None
