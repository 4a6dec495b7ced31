"""A third model family, defined in tests/palette_family.py, served end to end by a real `bentoml serve`.

Nothing outside that module and the catalog below knows the family: the catalog names the module,
`python -m models import` stores the model through the family's hooks, the front gets a runner for
it, and it answers `/classify`, `/annotate`, `/models` and the WebSocket like any other family.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from websockets.sync.client import connect

from conftest import ROOT, Server, serving
from yolo_toys.schemas import ClassifyResult, ModelDetail, ModelsResponse

pytestmark = pytest.mark.serve

PALETTE = {"red": [230, 20, 20], "green": [20, 200, 40], "blue": [20, 40, 220], "white": [250, 250, 250]}
TESTS = Path(__file__).resolve().parent


def solid(rgb: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def palette_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("palette")
    (work / "colours.json").write_text(json.dumps(PALETTE))
    catalog = {
        "runners": {"palette": {"module": "palette_family", "max_batch_size": 4, "gpu": 0}},
        "models": [{"name": "colours", "family": "palette", "task": "classify", "default": True,
                    "sources": [{"local": str(work / "colours.json")}]}],
    }  # fmt: skip
    (work / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    return {**os.environ, "BENTOML_HOME": str(work / "home"), "YOLO_TOYS_CATALOG": str(work / "catalog.yaml"),
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "BENTOML_DO_NOT_TRACK": "True", "PYTHONUNBUFFERED": "1"}  # fmt: skip


@pytest.fixture(scope="module")
def palette_server(palette_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    done = subprocess.run([sys.executable, "-m", "models", "import"], cwd=ROOT, env=palette_env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "imported" in done.stdout, done.stdout + done.stderr
    with serving(palette_env, tmp_path_factory.mktemp("palette-serve") / "serve.log") as srv:
        yield srv


def classify(server: Server, image: bytes, **fields: str) -> httpx.Response:
    return httpx.post(f"{server.url}/classify", files={"image": ("x", image)}, data=fields, timeout=60)


def test_the_third_family_classifies(palette_server: Server) -> None:
    for rgb, name in (((240, 10, 10), "red"), ((10, 30, 230), "blue"), ((15, 190, 50), "green")):
        for fmt in ("PNG", "JPEG"):
            resp = classify(palette_server, solid(rgb, fmt), top_k="2")
            assert resp.status_code == 200, resp.text
            result = ClassifyResult.model_validate(resp.json())
            assert result.model == "colours" and len(result.top_k) == 2
            assert result.top_k[0].label == name and result.top_k[0].score > result.top_k[1].score
            assert (result.image.width, result.image.height) == (64, 48)
            assert result.timings.total_ms > 0 and result.timings.batch_size >= 1


def test_the_third_family_batches(palette_server: Server) -> None:
    # Large photos, so that decoding keeps the inference thread busy while the others queue: the
    # palette itself answers in microseconds, and requests that never wait never share a batch.
    images = [solid((240, 10, 10), "JPEG", size=(1600, 1200)), solid((10, 30, 230), "JPEG", size=(1200, 1600))] * 12
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda im: classify(palette_server, im), images))
    results = [ClassifyResult.model_validate(a.json()) for a in answers]
    assert [r.top_k[0].label for r in results] == ["red", "blue"] * 12
    assert max(r.timings.batch_size for r in results) > 1  # different sizes share a call: no group key
    assert max(r.timings.batch_size for r in results) <= 4  # the catalog's cap


def test_the_third_family_is_listed_and_annotated(palette_server: Server) -> None:
    models = ModelsResponse.model_validate(httpx.get(f"{palette_server.url}/models", timeout=30).json()).models
    assert [(m.name, m.family, m.task.value, m.loaded, m.format, m.label_count) for m in models] == [
        ("colours", "palette", "classify", True, "palette", 4)]  # fmt: skip
    detail = ModelDetail.model_validate(httpx.get(f"{palette_server.url}/models/colours", timeout=30).json())
    assert list(detail.labels.values()) == list(PALETTE)
    resp = httpx.post(f"{palette_server.url}/annotate", files={"image": ("x", solid((240, 10, 10)))},
                      data={"task": "classify"}, timeout=60)  # fmt: skip
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(resp.content)).size == (64, 48)


def test_the_third_family_streams_and_errors_like_the_others(palette_server: Server) -> None:
    ws_url = palette_server.url.replace("http", "ws") + "/ws/stream"
    with connect(ws_url) as ws:
        ws.send(json.dumps({"type": "config", "task": "classify"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "config"
        ws.send(solid((250, 250, 250), "JPEG"))
        message = json.loads(ws.recv(timeout=30))
    assert message["type"] == "result" and message["result"]["top_k"][0]["label"] == "white"
    assert message["result"]["timings"]["total_ms"] > 0
    resp = httpx.post(f"{palette_server.url}/detect", files={"image": ("x", solid((1, 2, 3)))}, timeout=60)
    assert resp.status_code == 404 and resp.json() == {
        "error": "no model loaded for task", "detail": "no detect model is loaded; see GET /models"}  # fmt: skip
    assert np.isfinite(classify(palette_server, solid((0, 0, 0))).json()["top_k"][0]["score"])
