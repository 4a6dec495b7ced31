"""In-process HTTP contract of the front service: `TestClient(YoloToys.to_asgi())`.

The runner is instantiated in this process (no batching, no subprocess): fast checks of routes,
schemas and error shapes. The real process model is covered by test_serve.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from conftest import bus_jpg


@pytest.fixture(scope="module")
def client(in_process_env) -> Iterator[TestClient]:
    from service import YoloToys

    with TestClient(YoloToys.to_asgi()) as c:
        yield c


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"}, body
    return body


def test_detect_contract(client: TestClient) -> None:
    resp = client.post("/detect", files={"image": ("bus.jpg", bus_jpg(), "image/jpeg")}, data={"conf": "0.5"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"task", "model", "version", "image", "timings", "detections"}
    assert body["task"] == "detect" and body["image"] == {"width": 810, "height": 1080} and body["version"] == 1
    first = body["detections"][0]
    assert set(first) == {"box", "score", "class_id", "label", "track_id"} and first["track_id"] is None
    assert set(first["box"]) == {"x1", "y1", "x2", "y2"}


def test_each_task_answers_its_schema(client: TestClient) -> None:
    keys = {"segment": "instances", "pose": "instances", "classify": "top_k", "obb": "detections"}
    for route, key in keys.items():
        resp = client.post(f"/{route}", files={"image": ("bus.jpg", bus_jpg(), "image/jpeg")})
        assert resp.status_code == 200, (route, resp.text)
        assert resp.json()["task"] == route and key in resp.json()


def test_error_shapes(client: TestClient) -> None:
    files = {"image": ("bus.jpg", bus_jpg(), "image/jpeg")}
    assert error_of(client.post("/detect", files=files, data={"model": "nope"}), 404)["error"] == "unknown model"
    assert error_of(client.post("/pose", files=files, data={"model": "yolo11n"}), 422)["error"] == "wrong task for model"
    assert error_of(client.post("/detect", files={"image": ("x.txt", b"hello", "text/plain")}), 415)
    assert error_of(client.post("/detect", files={"image": ("e.jpg", b"", "image/jpeg")}), 400)
    assert error_of(client.post("/detect", files={"image": (None, b"https://example.com/a.jpg")}), 400)
    assert error_of(client.post("/detect", data={"image": "https://example.com/a.jpg"}), 415)  # not multipart
    assert error_of(client.post("/detect", files=files, data={"iou": "2"}), 400)
    big = {"image": ("big.jpg", b"\xff\xd8\xff" + bytes(23 * 1024 * 1024), "image/jpeg")}
    assert error_of(client.post("/detect", files=big), 413)["error"] == "request too large"


def test_models_and_openapi(client: TestClient) -> None:
    models = client.get("/models").json()["models"]
    assert {m["name"] for m in models if m["loaded"]} >= {"yolo11n", "yolo11n-cls", "rand-yolov8n-obb"}
    spec = client.get("/docs.json").json()
    assert {"/detect", "/segment", "/pose", "/classify", "/obb", "/annotate", "/models"} <= set(spec["paths"])
    image_field = spec["paths"]["/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert image_field


def test_runner_answers_state_their_media_type(in_process_env) -> None:
    """Without it BentoML rebuilds the JSON schema of the answer on every response (docs/performance.md).
    The answer is bytes (yolo_toys/schemas.py `pack_answers`), which BentoML's client hands over as they are."""
    from runners.runner import ANSWERS_MEDIA_TYPE
    from service import YoloToys

    runners = {name: dependency.on for name, dependency in YoloToys.dependencies.items()}
    assert set(runners) == {"ultralytics", "transformers"}
    for runner in runners.values():
        spec = runner.apis["predict"].output_spec
        assert spec.media_type == ANSWERS_MEDIA_TYPE
        assert spec.mime_type() == ANSWERS_MEDIA_TYPE
        assert spec.model_json_schema() == {"type": "string", "format": "binary"}
