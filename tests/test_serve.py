"""Integration: a real `bentoml serve` subprocess, real HTTP, real models.

The pretrained INT8 exports must find what MANIFEST.md lists on bus.jpg; the random-weight .pt
models exercise the PyTorch path and obb; served results must equal the same model called
in-process; concurrent requests must share batches; every bad input gets its 4xx.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter

from conftest import SHARED_WEIGHTS, Server, bus_jpg, zidane_jpg
from imagefiles import BROKEN, EXPECTED_SIZE, VALID
from yolo_toys.schemas import (
    ClassifyResult,
    DetectResult,
    ModelDetail,
    ModelsResponse,
    ObbResult,
    PoseResult,
    SegmentResult,
    TaskResult,
)

pytestmark = pytest.mark.serve

RESULT = TypeAdapter(TaskResult)


def post(server: Server, route: str, image: bytes | None = None, timeout: float = 120, **fields) -> httpx.Response:
    data = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in fields.items()}
    files = {"image": ("upload", image, "application/octet-stream")} if image is not None else None
    return httpx.post(f"{server.url}{route}", data=data, files=files, timeout=timeout)


def ok(resp: httpx.Response):
    assert resp.status_code == 200, resp.text
    return RESULT.validate_python(resp.json())


def labels(result) -> list[str]:
    items = getattr(result, "detections", None) or getattr(result, "instances", None) or []
    return [d.label for d in items]


def bus_png() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(bus_jpg())).save(buf, format="PNG")
    return buf.getvalue()


def metric_sum(server: Server, name: str, **label_values: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram, summed over series that match the labels."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    total = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        m = re.match(rf"^{name}_(sum|count)\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(2) for k, v in label_values.items()):
            total[m.group(1)] += float(m.group(3))
    return total["sum"], total["count"]


# ---- pretrained models through the SDK client and plain multipart ------------------------------


def test_sdk_client_detects_bus_and_persons(server: Server, tmp_path: Path) -> None:
    photo = tmp_path / "bus.jpg"
    photo.write_bytes(bus_jpg())
    with bentoml.SyncHTTPClient(server.url, timeout=120) as client:
        for model in ("yolo11n", "yolov8n"):
            result = DetectResult.model_validate(client.detect(image=photo, model=model))
            assert result.model == model
            assert "bus" in labels(result), labels(result)
            assert labels(result).count("person") >= 3, labels(result)
            assert (result.image.width, result.image.height) == (810, 1080)
            bus = next(d for d in result.detections if d.label == "bus")
            assert bus.class_id == 5 and bus.score > 0.8
            assert bus.box.x2 - bus.box.x1 > 600  # the bus spans the photo's width


def test_multipart_detect_options(server: Server) -> None:
    result = ok(post(server, "/detect", bus_jpg()))
    assert result.model == "yolo11n"  # the catalog's default for detect
    persons = ok(post(server, "/detect", bus_jpg(), classes=[0]))
    assert set(labels(persons)) == {"person"}
    assert len(ok(post(server, "/detect", bus_jpg(), max_det=2)).detections) == 2
    strict = ok(post(server, "/detect", bus_jpg(), conf=0.8))
    assert strict.detections and all(d.score >= 0.8 for d in strict.detections)
    assert len(strict.detections) < len(result.detections)
    t = result.timings
    assert t.inference_ms > 0 and t.decode_ms > 0 and t.total_ms >= t.inference_ms and t.batch_size >= 1


def test_zidane(server: Server) -> None:
    result = ok(post(server, "/detect", zidane_jpg(), model="yolov8n"))
    assert labels(result).count("person") >= 2


def test_segment_masks(server: Server) -> None:
    result = ok(post(server, "/segment", bus_jpg()))
    assert isinstance(result, SegmentResult) and result.model == "yolo11n-seg"
    assert "bus" in labels(result) and labels(result).count("person") >= 3
    for inst in result.instances:
        assert inst.polygons and len(inst.polygons[0]) >= 3
        xs = [x for x, _ in inst.polygons[0]]
        ys = [y for _, y in inst.polygons[0]]
        # the outline lies inside its own box (1 px slack for rounding)
        assert inst.box.x1 - 1 <= min(xs) and max(xs) <= inst.box.x2 + 1
        assert inst.box.y1 - 1 <= min(ys) and max(ys) <= inst.box.y2 + 1


def test_pose_keypoints(server: Server) -> None:
    result = ok(post(server, "/pose", bus_jpg()))
    assert isinstance(result, PoseResult) and result.model == "yolov8n-pose"
    assert len(result.instances) >= 3
    for inst in result.instances:
        assert [k.name for k in inst.keypoints][:3] == ["nose", "left_eye", "right_eye"]
        assert len(inst.keypoints) == 17
    confident = max(result.instances, key=lambda i: i.score)
    visible = [k for k in confident.keypoints if k.score > 0.5]
    assert len(visible) >= 10
    assert all(confident.box.x1 - 5 <= k.x <= confident.box.x2 + 5 for k in visible)


def test_classify_top_k(server: Server) -> None:
    result = ok(post(server, "/classify", bus_jpg(), top_k=3))
    assert isinstance(result, ClassifyResult) and len(result.top_k) == 3
    assert result.top_k[0].label in {"minibus", "school_bus", "trolleybus", "passenger_car", "police_van"}
    scores = [c.score for c in result.top_k]
    assert scores == sorted(scores, reverse=True)


def test_annotate_returns_jpeg(server: Server) -> None:
    plain = Image.open(io.BytesIO(bus_jpg())).convert("RGB")
    for task in ("detect", "segment", "pose", "classify"):
        resp = post(server, "/annotate", bus_jpg(), task=task)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "image/jpeg"
        drawn = Image.open(io.BytesIO(resp.content))
        assert drawn.format == "JPEG" and drawn.size == plain.size
        diff = np.abs(np.asarray(drawn, dtype=np.int16) - np.asarray(plain, dtype=np.int16)).mean()
        assert diff > 1.0, f"nothing drawn for {task}"
    assert post(server, "/annotate", bus_jpg(), task="nope").status_code == 400


# ---- random-weight models: the .pt path and obb, equal to in-process ---------------------------


def in_process(weights: Path, image: bytes, **options):
    """The same model called in-process, on the same decoded pixels."""
    from ultralytics import YOLO

    from yolo_toys.imaging import decode

    return YOLO(str(weights)).predict(decode(image).bgr, verbose=False, **options)[0]


def assert_boxes_equal(served_xyxy, served_scores, served_cls, r_xyxy, r_conf, r_cls) -> None:
    assert len(served_xyxy) == len(r_xyxy)
    np.testing.assert_allclose(np.asarray(served_xyxy).reshape(-1, 4), r_xyxy.reshape(-1, 4), atol=1e-3)
    np.testing.assert_allclose(served_scores, r_conf, atol=1e-5)
    assert list(served_cls) == [int(c) for c in r_cls]


def test_pt_model_equals_in_process(server: Server, random_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/detect", bus_png(), model="rand-yolov8n", conf=0.0001, max_det=50))
    assert isinstance(served, DetectResult) and served.detections, "random weights give scores near 2e-4"
    r = in_process(random_weights["rand-yolov8n"], bus_png(), conf=0.0001, max_det=50, iou=0.7)
    assert_boxes_equal(
        [[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in served.detections],
        [d.score for d in served.detections], [d.class_id for d in served.detections],
        r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy(),
    )  # fmt: skip


def test_obb_equals_in_process(server: Server, random_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/obb", bus_png(), conf=0.0001, max_det=30))
    assert isinstance(served, ObbResult) and served.model == "rand-yolov8n-obb"  # yolo11n-obb is hub-only
    assert served.detections
    r = in_process(random_weights["rand-yolov8n-obb"], bus_png(), conf=0.0001, max_det=30, iou=0.7)
    xywhr = r.obb.xywhr.numpy()
    assert len(served.detections) == len(xywhr)
    for d, (cx, cy, w, h, rad), corners in zip(served.detections, xywhr, r.obb.xyxyxyxy.numpy(), strict=True):
        np.testing.assert_allclose([d.rbox.cx, d.rbox.cy, d.rbox.width, d.rbox.height], [cx, cy, w, h], atol=1e-3)
        assert d.rbox.angle == pytest.approx(np.degrees(rad), abs=1e-3)
        np.testing.assert_allclose(d.rbox.corners, corners, atol=1e-3)


def test_pretrained_export_equals_in_process(server: Server) -> None:
    served = ok(post(server, "/detect", bus_png(), model="yolov8n"))
    r = in_process(SHARED_WEIGHTS / "yolov8n_int8_openvino_model", bus_png())
    assert_boxes_equal(
        [[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in served.detections],
        [d.score for d in served.detections], [d.class_id for d in served.detections],
        r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy(),
    )  # fmt: skip


# ---- batching ----------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_per_model(server: Server) -> None:
    image = bus_jpg()
    before = {m: metric_sum(server, "yolo_toys_model_batch_size", model=m) for m in ("yolo11n", "yolov8n")}
    runner_before = metric_sum(server, "yolo_toys_runner_batch_size", runner="ultralytics")
    models = ["yolo11n", "yolov8n"] * 16
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda m: ok(post(server, "/detect", image, model=m)), models))
    assert [r.model for r in results] == models
    reference = {m: next(r for r in results if r.model == m) for m in set(models)}
    for r in results:  # batch-mates do not change a result
        assert [d.label for d in r.detections] == [d.label for d in reference[r.model].detections]
    images_sum, calls = 0.0, 0.0
    for m in ("yolo11n", "yolov8n"):
        s, c = metric_sum(server, "yolo_toys_model_batch_size", model=m)
        images_sum += s - before[m][0]
        calls += c - before[m][1]
    assert images_sum == len(models)
    assert calls < len(models), "every image went through inference alone: no batching"
    runner = metric_sum(server, "yolo_toys_runner_batch_size", runner="ultralytics")
    assert runner[0] - runner_before[0] == len(models)
    assert runner[1] - runner_before[1] < len(models)
    assert max(r.timings.batch_size for r in results) > 1


# ---- catalog, docs, health ---------------------------------------------------------------------


def test_models_endpoint(server: Server) -> None:
    resp = httpx.get(f"{server.url}/models", timeout=30)
    assert resp.status_code == 200
    models = {m.name: m for m in ModelsResponse.model_validate(resp.json()).models}
    for name in ("yolo11n", "yolov8n", "yolo11n-seg", "yolov8n-pose", "yolo11n-cls", "rand-yolov8n", "rand-yolov8n-obb"):
        assert models[name].loaded, models[name]
    assert models["yolo11n"].label_count == 80 and models["yolo11n-cls"].label_count == 1000
    assert "labels" not in resp.json()["models"][0], "the listing stays compact: labels are per model"
    assert len(resp.content) < 20_000
    detail = ModelDetail.model_validate(httpx.get(f"{server.url}/models/yolo11n", timeout=30).json())
    assert detail.labels[5] == "bus" and len(detail.labels) == 80 and detail.format == "openvino"
    assert len(ModelDetail.model_validate(httpx.get(f"{server.url}/models/yolo11n-cls").json()).labels) == 1000
    unknown = httpx.get(f"{server.url}/models/nope", timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown model"
    assert models["yolo11n"].format == "openvino" and models["yolo11n-cls"].format == "tflite"
    assert models["rand-yolov8n"].format == "pytorch" and models["rand-yolov8n"].device == "cpu"
    assert models["yolo11n"].batching.max_batch_size >= 2
    missing = models["yolo11n-obb"]
    assert not missing.loaded and "import" in missing.reason


def test_openapi_documents_every_endpoint(server: Server) -> None:
    spec = httpx.get(f"{server.url}/docs.json", timeout=30).json()
    for route in ("/detect", "/segment", "/pose", "/classify", "/obb", "/annotate"):
        op = spec["paths"][route]["post"]
        content = op["requestBody"]["content"]
        assert "multipart/form-data" in content, route
        assert op.get("description"), route
    assert "get" in spec["paths"]["/models"]
    detect_schema = json.dumps(spec["components"])
    assert "example" in detect_schema and "minibus" in detect_schema
    assert httpx.get(f"{server.url}/", timeout=30).status_code == 200  # Swagger UI


def test_health_and_metrics(server: Server) -> None:
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200, path


def test_curl_multipart(server: Server, tmp_path: Path) -> None:
    photo = tmp_path / "bus.jpg"
    photo.write_bytes(bus_jpg())
    out = subprocess.run(
        ["curl", "-sS", "-F", f"image=@{photo};type=image/jpg", "-F", "conf=0.5", f"{server.url}/detect"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "bus" in labels(DetectResult.model_validate_json(out.stdout))


# ---- every bad input gets its 4xx; the service stays healthy ----------------------------------


def assert_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body, dict) and body.get("error") and "detail" in body, body
    return body


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_image(server: Server, name: str) -> None:
    factory, status = BROKEN[name]
    assert_error(post(server, "/detect", factory()), status)
    assert server.healthy()


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_unusual_image(server: Server, name: str) -> None:
    result = ok(post(server, "/detect", VALID[name]()))
    if name in EXPECTED_SIZE:
        assert (result.image.width, result.image.height) == EXPECTED_SIZE[name]


def test_exif_rotated_photo_is_detected_upright(server: Server) -> None:
    upright = ok(post(server, "/detect", VALID["jpeg"]()))
    rotated = ok(post(server, "/detect", VALID["jpeg_exif_orientation_6"]()))
    assert (rotated.image.width, rotated.image.height) == (upright.image.width, upright.image.height)
    assert "bus" in labels(rotated) and labels(rotated).count("person") >= 3


@pytest.mark.parametrize(
    ("route", "fields", "status", "error"),
    [
        ("/detect", {"model": "nope"}, 404, "unknown model"),
        ("/detect", {"model": "yolo11n-obb"}, 404, "model not loaded"),
        ("/detect", {"model": "yolo11n-cls"}, 422, "wrong task for model"),
        ("/classify", {"model": "yolo11n"}, 422, "wrong task for model"),
        ("/detect", {"conf": 1.5}, 400, None),
        ("/detect", {"conf": "high"}, 400, None),
        ("/detect", {"iou": -0.1}, 400, None),
        ("/detect", {"max_det": 0}, 400, None),
        ("/detect", {"imgsz": 10}, 400, None),
        ("/detect", {"imgsz": 320}, 422, "imgsz not supported"),
        ("/detect", {"classes": [0, 80]}, 422, "unknown class ids"),
        ("/detect", {"classes": [-1]}, 400, None),
        ("/classify", {"top_k": 0}, 400, None),
        ("/classify", {"top_k": 1000}, 400, None),
    ],
)
def test_bad_options(server: Server, route: str, fields: dict, status: int, error: str | None) -> None:
    body = assert_error(post(server, route, bus_jpg(), **fields), status)
    if error:
        assert body["error"] == error


def test_bad_requests(server: Server) -> None:
    url = f"{server.url}/detect"
    assert_error(httpx.post(url, files={"conf": (None, b"0.5")}, timeout=30), 400)  # no image
    assert_error(httpx.post(url, files={"image": (None, b"http://127.0.0.1:1/x.jpg")}, timeout=30), 400)  # URL, not fetched
    assert_error(httpx.post(url, files={"image": (None, b"just text")}, timeout=30), 400)
    assert_error(httpx.post(url, data={"image": "just text"}, timeout=30), 415)  # a urlencoded form
    assert_error(httpx.post(url, content=b"garbage", headers={"content-type": "multipart/form-data"}, timeout=30), 400)
    bad_boundary = {"content-type": "multipart/form-data; boundary=xyz"}
    assert_error(httpx.post(url, content=b"--xyz\r\ngarbage", headers=bad_boundary, timeout=30), 400)
    raw = assert_error(httpx.post(url, content=bus_jpg(), headers={"content-type": "image/jpeg"}, timeout=30), 415)
    assert "multipart/form-data" in raw["detail"] and "-F image=@" in raw["detail"]
    assert_error(httpx.post(url, json={"image": "abc"}, timeout=30), 415)
    huge = b"\xff\xd8\xff" + bytes(25 * 1024 * 1024)
    assert_error(post(server, "/detect", huge), 413)

    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n\r\n"
        for _ in range(30):
            yield bytes(1024 * 1024)

    streamed = httpx.post(url, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}, timeout=60)
    assert_error(streamed, 413)
    assert server.healthy()


def test_service_healthy_after_abuse(server: Server) -> None:
    assert server.healthy()
    assert "bus" in labels(ok(post(server, "/detect", bus_jpg())))
    log = server.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert "status=500" not in log
