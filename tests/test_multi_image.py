"""Several images in one request (`POST /batch`), and the task routes' pass-through answers, against
a real `bentoml serve`: the runner writes each image's answer once, the front sends it as it is."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Server, assert_error, bus_jpg, zidane_jpg
from imagefiles import BROKEN
from yolo_toys.schemas import BatchError, BatchResult, DetectResult, ErrorBody

pytestmark = pytest.mark.serve

MAX_IMAGES = 64  # YOLO_TOYS_MAX_REQUEST_IMAGES's default: the test server leaves it


def batch(server: Server, images: list[bytes], timeout: float = 120, **fields) -> httpx.Response:
    data = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in fields.items()}
    files = [("images", (f"image{i}", image, "application/octet-stream")) for i, image in enumerate(images)]
    return httpx.post(f"{server.url}/batch", data=data, files=files or None, timeout=timeout)


def detect(server: Server, image: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/detect", files={"image": ("upload", image, "image/jpeg")}, timeout=120)


def results(resp: httpx.Response) -> list[DetectResult | BatchError]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    return BatchResult.model_validate_json(resp.content).results


def assert_same_detections(batched: DetectResult, single: DetectResult) -> None:
    assert [d.label for d in batched.detections] == [d.label for d in single.detections]
    assert [d.class_id for d in batched.detections] == [d.class_id for d in single.detections]
    boxes = [[[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in r.detections] for r in (batched, single)]
    np.testing.assert_allclose(*boxes, atol=1e-3)
    np.testing.assert_allclose([d.score for d in batched.detections], [d.score for d in single.detections], atol=1e-5)


def tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(bus_jpg())).resize((81, 108)).save(buf, format="JPEG")
    return buf.getvalue()


# ---- several images, one batch -----------------------------------------------------------------------


def test_batch_answers_in_upload_order_as_single_requests_do(server: Server) -> None:
    photos = [bus_jpg(), zidane_jpg()]
    batched = results(batch(server, photos, task="detect"))
    singles = [DetectResult.model_validate_json(detect(server, photo).content) for photo in photos]
    assert [type(r) for r in batched] == [DetectResult, DetectResult]
    assert [(r.image.width, r.image.height) for r in batched] == [(810, 1080), (1280, 720)]  # upload order
    for item, single in zip(batched, singles, strict=True):
        assert isinstance(item, DetectResult) and item.model == single.model == "yolo11n"
        assert item.version == single.version == 1
        assert_same_detections(item, single)
        assert item.timings.batch_size >= 2, item.timings  # one runner call: one adaptive batch on an idle runner
        assert item.timings.total_ms >= item.timings.inference_ms > 0


def test_one_bad_image_answers_alone(server: Server) -> None:
    undecodable, undecodable_status = BROKEN["jpeg_truncated_half"]
    text, text_status = BROKEN["text"]
    items = results(batch(server, [bus_jpg(), undecodable(), zidane_jpg(), b"", text()]))
    assert isinstance(items[0], DetectResult) and "bus" in [d.label for d in items[0].detections]
    assert isinstance(items[2], DetectResult) and "person" in [d.label for d in items[2].detections]
    errors = {i: item for i, item in enumerate(items) if isinstance(item, BatchError)}
    assert sorted(errors) == [1, 3, 4]
    assert (errors[1].status, errors[1].error) == (undecodable_status, "undecodable image")  # from the runner
    assert (errors[3].status, errors[3].error) == (400, "empty image")  # from the front's upload check
    assert (errors[4].status, errors[4].error) == (text_status, "unsupported image format")


def test_options_task_and_model_apply_to_every_image(server: Server) -> None:
    persons = results(batch(server, [bus_jpg(), zidane_jpg()], classes=[0], conf=0.5, model="yolov8n"))
    for item in persons:
        assert isinstance(item, DetectResult) and item.model == "yolov8n"
        assert item.detections and {d.label for d in item.detections} == {"person"}
        assert all(d.score >= 0.5 for d in item.detections)
    top = results(batch(server, [bus_jpg(), zidane_jpg()], task="classify", top_k=3))
    assert [(item.task, len(item.top_k)) for item in top] == [("classify", 3), ("classify", 3)]


def test_as_many_images_as_the_limit(server: Server) -> None:
    items = results(batch(server, [tiny_jpeg()] * MAX_IMAGES))
    assert len(items) == MAX_IMAGES and all(isinstance(item, DetectResult) for item in items)
    assert max(item.timings.batch_size for item in items) >= 2


def test_whole_request_problems_are_4xx(server: Server) -> None:
    url = f"{server.url}/batch"
    missing = assert_error(httpx.post(url, files={"task": (None, b"detect")}, timeout=30), 400)
    assert "images" in json.dumps(missing["detail"])
    body = assert_error(batch(server, [b"\xff\xd8\xff"] * (MAX_IMAGES + 1)), 413, "too many images")
    assert str(MAX_IMAGES) in body["detail"]
    assert_error(batch(server, [bus_jpg()], model="nope"), 404, "unknown model")
    assert_error(batch(server, [bus_jpg()], model="yolo11n-cls"), 422, "wrong task for model")
    assert_error(batch(server, [bus_jpg()], task="pose", model="yolo11n"), 422, "wrong task for model")
    assert_error(batch(server, [bus_jpg()], task="teleport"), 400)
    assert_error(batch(server, [bus_jpg()], conf=2), 400)
    assert_error(batch(server, [bus_jpg()], classes=[0, 80]), 422, "unknown class ids")
    assert_error(httpx.post(url, files={"images": (None, b"http://127.0.0.1:1/x.jpg")}, timeout=30), 400)
    assert_error(httpx.post(url, content=bus_jpg(), headers={"content-type": "image/jpeg"}, timeout=30), 415)
    assert server.healthy()


def test_sdk_client_and_curl_send_several_images(server: Server, tmp_path: Path) -> None:
    bus, zidane = tmp_path / "bus.jpg", tmp_path / "zidane.jpg"
    bus.write_bytes(bus_jpg())
    zidane.write_bytes(zidane_jpg())
    with bentoml.SyncHTTPClient(server.url, timeout=120) as client:
        answer = BatchResult.model_validate(client.batch(images=[bus, zidane], task="detect"))
    assert [(r.image.width, r.image.height) for r in answer.results] == [(810, 1080), (1280, 720)]
    out = subprocess.run(["curl", "-sS", "-F", f"images=@{bus}", "-F", f"images=@{zidane}", "-F", "conf=0.5",
                          f"{server.url}/batch"], capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    items = BatchResult.model_validate_json(out.stdout).results
    assert len(items) == 2 and all(isinstance(item, DetectResult) for item in items)


# ---- the task routes pass the runner's answer through --------------------------------------------------


def test_detect_answers_the_documented_body_with_server_timing(server: Server) -> None:
    resp = detect(server, bus_jpg())
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    result = DetectResult.model_validate_json(resp.content)
    assert result.model_dump_json().encode() == resp.content  # exactly the schema's JSON: fields, order, values
    timing = re.fullmatch(r"total;dur=(\d+(?:\.\d+)?)", resp.headers["server-timing"])
    assert timing, resp.headers["server-timing"]
    assert float(timing.group(1)) >= result.timings.total_ms > 0  # the front's wall time holds the runner's


def test_runner_errors_pass_through_with_their_status(server: Server) -> None:
    resp = detect(server, BROKEN["jpeg_truncated_half"][0]())
    body = assert_error(resp, 400, "undecodable image")
    assert ErrorBody.model_validate(body).model_dump_json().encode() == resp.content
    assert "server-timing" in resp.headers


def test_batch_is_documented(server: Server) -> None:
    doc = httpx.get(f"{server.url}/docs.json", timeout=30).json()
    operation = doc["paths"]["/batch"]["post"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/BatchResult"}
    assert {"400", "404", "413", "415", "422", "503"} <= set(operation["responses"])
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    first, field = next(iter(form.items()))
    assert first == "images" and field["type"] == "array" and field["items"]["format"] == "binary"
    assert "BatchError" in doc["components"]["schemas"]
