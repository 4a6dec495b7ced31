"""The transformers family through a real `bentoml serve`, with tiny random-weight models built offline.

Each task answers in its schema; served results equal the same checkpoint called in-process with
plain transformers calls; concurrent mixed-task requests share batches per model; text options
are validated before anything reaches a model.
"""

from __future__ import annotations

import base64
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from pydantic import TypeAdapter

from conftest import Server, bus_jpg
from hf_models import SPECS
from yolo_toys.schemas import (
    CaptionResult,
    ClassifyResult,
    DepthResult,
    DetectResult,
    ModelDetail,
    ModelsResponse,
    SegmentResult,
    TaskResult,
    VqaResult,
    ZeroShotClassifyResult,
)

pytestmark = pytest.mark.serve

RESULT = TypeAdapter(TaskResult)
LABELS = ["a photo of a bus", "a photo of a cat", "a photo of a person"]
PROMPTS = ["a bus", "a person"]


def post(server: Server, route: str, image: bytes | None, **fields) -> httpx.Response:
    data = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in fields.items()}
    files = {"image": ("upload.png", image, "image/png")} if image is not None else None
    return httpx.post(f"{server.url}{route}", data=data, files=files, timeout=120)


def ok(resp: httpx.Response):
    assert resp.status_code == 200, resp.text
    return RESULT.validate_python(resp.json())


def bus_png() -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(bus_jpg())).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def reference(folder: Path, name: str):
    """The checkpoint loaded with its Auto* class, as a user would in a notebook."""
    model = getattr(transformers, SPECS[name].auto_class).from_pretrained(folder).eval()
    return model, transformers.AutoProcessor.from_pretrained(folder)


def photo() -> Image.Image:
    return Image.open(io.BytesIO(bus_png())).convert("RGB")


# ---- every task, equal to in-process -----------------------------------------------------------


def test_detr_detect_equals_in_process(server: Server, hf_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/detect", bus_png(), model="tiny-detr", conf=0.0, max_det=100))
    assert isinstance(served, DetectResult) and served.model == "tiny-detr" and served.detections
    model, proc = reference(hf_weights["tiny-detr"], "tiny-detr")
    img = photo()
    with torch.inference_mode():
        out = model(**proc(images=img, return_tensors="pt"))
    ref = proc.post_process_object_detection(out, threshold=0.0, target_sizes=[(img.height, img.width)])[0]
    order = torch.argsort(ref["scores"], descending=True, stable=True)
    np.testing.assert_allclose([d.score for d in served.detections], ref["scores"][order].numpy(), atol=1e-5)
    np.testing.assert_allclose([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in served.detections],
                               ref["boxes"][order].numpy(), atol=1e-2)  # fmt: skip
    assert [d.label for d in served.detections] == [model.config.id2label[int(i)] for i in ref["labels"][order]]


def test_client_switches_detect_between_yolo_and_detr(server: Server) -> None:
    for model in ("yolo11n", "tiny-detr"):
        result = DetectResult.model_validate(post(server, "/detect", bus_jpg(), model=model, conf=0.0).json())
        assert result.model == model and result.detections
        assert all(0 <= d.box.x1 <= d.box.x2 <= 810 + 1 and 0 <= d.box.y1 <= d.box.y2 <= 1080 + 1 for d in result.detections)


def test_open_vocabulary_detect_equals_in_process(server: Server, hf_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/detect", bus_png(), model="tiny-owlvit", prompts=PROMPTS, conf=0.0, max_det=1000))
    assert isinstance(served, DetectResult) and served.detections
    assert {d.label for d in served.detections} <= set(PROMPTS)
    assert all(d.class_id == PROMPTS.index(d.label) for d in served.detections)
    model, proc = reference(hf_weights["tiny-owlvit"], "tiny-owlvit")
    img = photo()
    with torch.inference_mode():
        out = model(**proc(text=[PROMPTS], images=img, return_tensors="pt", padding=True))
    ref = proc.post_process_grounded_object_detection(out, threshold=0.0, target_sizes=[(img.height, img.width)])[0]
    assert len(served.detections) == len(ref["scores"])
    np.testing.assert_allclose(sorted(d.score for d in served.detections), sorted(ref["scores"].tolist()), atol=1e-5)


def test_vit_classify_equals_in_process(server: Server, hf_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/classify", bus_png(), model="tiny-vit", top_k=3))
    assert isinstance(served, ClassifyResult) and len(served.top_k) == 3
    model, proc = reference(hf_weights["tiny-vit"], "tiny-vit")
    with torch.inference_mode():
        probs = model(**proc(images=photo(), return_tensors="pt")).logits.softmax(-1)[0]
    top = torch.topk(probs, 3)
    assert [c.class_id for c in served.top_k] == top.indices.tolist()
    np.testing.assert_allclose([c.score for c in served.top_k], top.values.numpy(), atol=1e-5)
    assert [c.label for c in served.top_k] == [model.config.id2label[i] for i in top.indices.tolist()]


def test_zero_shot_classify_equals_in_process(server: Server, hf_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/zero_shot_classify", bus_png(), labels=LABELS))
    assert isinstance(served, ZeroShotClassifyResult) and served.model == "tiny-clip"
    assert sorted(c.label for c in served.top_k) == sorted(LABELS)
    assert all(LABELS[c.class_id] == c.label for c in served.top_k)
    model, proc = reference(hf_weights["tiny-clip"], "tiny-clip")
    with torch.inference_mode():
        out = model(**proc(text=LABELS, images=photo(), return_tensors="pt", padding=True))
    probs = out.logits_per_image.softmax(-1)[0].numpy()
    np.testing.assert_allclose([c.score for c in served.top_k], [probs[c.class_id] for c in served.top_k], atol=1e-5)
    assert sum(c.score for c in served.top_k) == pytest.approx(1.0, abs=1e-4)


def _generate(folder: Path, name: str, text: str | None, max_new_tokens: int) -> str:
    model, proc = reference(folder, name)
    kwargs = {"text": text} if text else {}
    with torch.inference_mode():
        ids = model.generate(**proc(images=photo(), return_tensors="pt", **kwargs), max_new_tokens=max_new_tokens)
    return proc.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_caption_equals_in_process(server: Server, hf_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/caption", bus_png(), max_new_tokens=8))
    assert isinstance(served, CaptionResult) and served.model == "tiny-blip-caption"
    assert served.text == _generate(hf_weights["tiny-blip-caption"], "tiny-blip-caption", None, 8)
    prefixed = ok(post(server, "/caption", bus_png(), prefix="a picture of", max_new_tokens=8))
    assert prefixed.prefix == "a picture of"
    assert prefixed.text == _generate(hf_weights["tiny-blip-caption"], "tiny-blip-caption", "a picture of", 8)


def test_vqa_equals_in_process(server: Server, hf_weights: dict[str, Path]) -> None:
    question = "what color is the bus?"
    served = ok(post(server, "/vqa", bus_png(), question=question, max_new_tokens=6))
    assert isinstance(served, VqaResult) and served.question == question
    assert served.answer == _generate(hf_weights["tiny-blip-vqa"], "tiny-blip-vqa", question, 6)


def test_depth_equals_in_process(server: Server, hf_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/depth", bus_png()))
    assert isinstance(served, DepthResult) and served.model == "tiny-depth-anything"
    png = Image.open(io.BytesIO(base64.b64decode(served.depth_png)))
    assert png.size == (810, 1080) and png.mode.startswith("I")
    levels = np.asarray(png, dtype=np.float64)
    served_depth = served.min + levels * served.scale
    model, proc = reference(hf_weights["tiny-depth-anything"], "tiny-depth-anything")
    img = photo()
    with torch.inference_mode():
        out = model(**proc(images=img, return_tensors="pt"))
    ref = proc.post_process_depth_estimation(out, target_sizes=[(img.height, img.width)])[0]["predicted_depth"].numpy()
    assert served.min == pytest.approx(float(ref.min()), abs=1e-4) and served.max == pytest.approx(float(ref.max()), abs=1e-4)
    np.testing.assert_allclose(served_depth, ref, atol=served.scale + 1e-4)  # one PNG level of quantisation


def test_semantic_segmentation_equals_in_process(server: Server, hf_weights: dict[str, Path]) -> None:
    served = ok(post(server, "/segment", bus_png(), model="tiny-segformer", conf=0.0))
    assert isinstance(served, SegmentResult) and served.instances
    model, proc = reference(hf_weights["tiny-segformer"], "tiny-segformer")
    img = photo()
    with torch.inference_mode():
        out = model(**proc(images=img, return_tensors="pt"))
    seg = proc.post_process_semantic_segmentation(out, target_sizes=[(img.height, img.width)])[0].numpy()
    assert {i.class_id for i in served.instances} == set(np.unique(seg).tolist())
    for inst in served.instances:
        assert inst.label == model.config.id2label[inst.class_id]
        ys, xs = np.nonzero(seg == inst.class_id)
        assert (inst.box.x1, inst.box.y1, inst.box.x2, inst.box.y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert inst.polygons and all(len(p) >= 3 for p in inst.polygons)


def test_semantic_segmentation_honours_classes_and_conf(server: Server) -> None:
    everything = ok(post(server, "/segment", bus_png(), model="tiny-segformer", conf=0.0))
    assert len(everything.instances) >= 2
    first = everything.instances[0]
    only = ok(post(server, "/segment", bus_png(), model="tiny-segformer", conf=0.0, classes=[first.class_id]))
    assert [i.class_id for i in only.instances] == [first.class_id]
    threshold = (everything.instances[0].score + everything.instances[-1].score) / 2
    above = ok(post(server, "/segment", bus_png(), model="tiny-segformer", conf=threshold))
    assert [i.class_id for i in above.instances] == [i.class_id for i in everything.instances if i.score >= threshold]
    assert 0 < len(above.instances) < len(everything.instances)


def test_annotate_transformers_results(server: Server) -> None:
    cases = [
        {"task": "detect", "model": "tiny-detr", "conf": 0.0},
        {"task": "zero_shot_classify", "prompts": LABELS},
        {"task": "caption"},
        {"task": "vqa", "text": "what is this?"},
        {"task": "depth"},
        {"task": "segment", "model": "tiny-segformer"},
    ]
    plain = np.asarray(photo(), dtype=np.int16)
    for fields in cases:
        resp = post(server, "/annotate", bus_png(), **fields)
        assert resp.status_code == 200, (fields, resp.text)
        drawn = Image.open(io.BytesIO(resp.content))
        assert drawn.format == "JPEG" and drawn.size == (810, 1080), fields
        assert np.abs(np.asarray(drawn.convert("RGB"), dtype=np.int16) - plain).mean() > 1.0, fields


# ---- batching, catalog, docs -------------------------------------------------------------------


def _batch_metrics(server: Server) -> dict[str, tuple[float, float]]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    totals: dict[str, list[float]] = {}
    for m in re.finditer(r'^yolo_toys_model_batch_size_(sum|count)\{.*model="([^"]+)".*\} (\S+)$', text, re.M):
        entry = totals.setdefault(m.group(2), [0.0, 0.0])
        entry[0 if m.group(1) == "sum" else 1] += float(m.group(3))
    return {k: (v[0], v[1]) for k, v in totals.items()}


def test_mixed_task_load_batches_per_model(server: Server) -> None:
    calls = [("/zero_shot_classify", {"labels": LABELS}), ("/caption", {"max_new_tokens": 4}),
             ("/depth", {}), ("/classify", {"model": "tiny-vit"})] * 6  # fmt: skip
    image = bus_png()
    with ThreadPoolExecutor(8) as pool:  # warm the dispatchers' latency models
        list(pool.map(lambda c: post(server, c[0], image, **c[1]).status_code, calls))
    before = _batch_metrics(server)
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda c: ok(post(server, c[0], image, **c[1])), calls))
    assert [r.task for r in results] == [c[0].strip("/") for c in calls]
    after = _batch_metrics(server)
    models = ("tiny-clip", "tiny-blip-caption", "tiny-depth-anything", "tiny-vit")
    images = sum(after[m][0] - before.get(m, (0, 0))[0] for m in models)
    inference_calls = sum(after[m][1] - before.get(m, (0, 0))[1] for m in models)
    assert images == len(calls)
    assert inference_calls < len(calls), "no two requests for one model shared an inference call"
    # batch-mates do not change a result
    captions = {r.text for r in results if isinstance(r, CaptionResult)}
    assert len(captions) == 1


def test_models_lists_transformers(server: Server) -> None:
    models = {m.name: m for m in ModelsResponse.model_validate(httpx.get(f"{server.url}/models").json()).models}
    for name, spec in SPECS.items():
        assert models[name].loaded and models[name].family == "transformers" and models[name].task.value == spec.task
    assert models["tiny-owlvit"].open_vocabulary and not models["tiny-detr"].open_vocabulary
    assert models["tiny-detr"].label_count and models["tiny-segformer"].label_count
    assert models["tiny-clip"].label_count == 0  # the caller names the labels
    detr = ModelDetail.model_validate(httpx.get(f"{server.url}/models/tiny-detr").json())
    assert len(detr.labels) == models["tiny-detr"].label_count
    for name in ("detr-resnet-50", "clip-vit-base-patch32", "blip-vqa-base"):
        assert not models[name].loaded and models[name].reason


def test_openapi_shows_transformers_endpoints(server: Server) -> None:
    spec = httpx.get(f"{server.url}/docs.json", timeout=30).json()
    for route in ("/zero_shot_classify", "/caption", "/vqa", "/depth"):
        op = spec["paths"][route]["post"]
        assert "multipart/form-data" in op["requestBody"]["content"] and op.get("description"), route
    assert "prompts" in json.dumps(spec["paths"]["/detect"])


# ---- text options are validated ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "fields", "status"),
    [
        ("/zero_shot_classify", {}, 400),  # labels missing
        ("/zero_shot_classify", {"labels": []}, 400),
        ("/zero_shot_classify", {"labels": [f"label {i}" for i in range(65)]}, 400),
        ("/zero_shot_classify", {"labels": ["a bus", "x" * 201]}, 400),
        ("/zero_shot_classify", {"labels": ["a bus", "   "]}, 400),
        ("/zero_shot_classify", {"labels": "a bus"}, 400),  # not a list
        ("/zero_shot_classify", {"labels": ["a bus"], "model": "tiny-vit"}, 422),
        ("/vqa", {}, 400),  # question missing
        ("/vqa", {"question": ""}, 400),
        ("/vqa", {"question": "   "}, 400),
        ("/vqa", {"question": "why?" * 200}, 400),
        ("/vqa", {"question": "why?", "max_new_tokens": 0}, 400),
        ("/caption", {"prefix": "p" * 501}, 400),
        ("/caption", {"max_new_tokens": 1000}, 400),
        ("/detect", {"model": "tiny-owlvit"}, 422),  # prompts required
        ("/detect", {"model": "tiny-owlvit", "prompts": []}, 422),  # empty: not given, and required
        ("/detect", {"model": "yolo11n", "prompts": ["a bus"]}, 422),  # fixed label set
        ("/detect", {"model": "tiny-clip"}, 422),  # wrong task
        ("/depth", {"model": "tiny-detr"}, 422),
    ],
)
def test_bad_text_options(server: Server, route: str, fields: dict, status: int) -> None:
    resp = post(server, route, bus_jpg(), **fields)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body, dict) and body["error"] and "detail" in body
    assert server.healthy()


# ---- what the models cannot take: a 4xx, never a 500 ---------------------------------------------


def png_of(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def test_tiny_and_thin_images(server: Server) -> None:
    """A 1x1 image is served (the processors are told the layout); a shape the processor refuses is a 422."""
    for route, fields in (("/depth", {}), ("/classify", {"model": "tiny-vit"}), ("/segment", {"model": "tiny-segformer"}),
                          ("/zero_shot_classify", {"labels": LABELS}), ("/caption", {"max_new_tokens": 3})):  # fmt: skip
        result = ok(post(server, route, png_of(1, 1), **fields))
        assert (result.image.width, result.image.height) == (1, 1), route
    assert ok(post(server, "/depth", png_of(3, 2))).depth_png
    thin = post(server, "/depth", png_of(50, 1))
    assert thin.status_code == 422 and thin.json()["error"] == "image not supported", thin.text
    assert "50x1" in thin.json()["detail"]


def test_text_beyond_what_the_model_reads_is_a_422(server: Server) -> None:
    """The tiny models read 32 tokens (CLIP reads 77): longer text is refused, not cut or crashed on."""
    long = " ".join(["bus"] * 60)
    for route, fields in (("/vqa", {"question": long}), ("/caption", {"prefix": long}),
                          ("/zero_shot_classify", {"labels": ["a cat", long[:200]]})):  # fmt: skip
        resp = post(server, route, bus_png(), **fields)
        assert resp.status_code == 422 and resp.json()["error"] == "text too long", (route, resp.text)
        assert "tokens" in resp.json()["detail"]


def test_max_new_tokens_is_an_upper_bound(server: Server) -> None:
    """The tiny decoders have 64 positions; asking for 128 new tokens answers what fits."""
    assert isinstance(ok(post(server, "/caption", bus_png(), max_new_tokens=128)), CaptionResult)
    assert isinstance(ok(post(server, "/vqa", bus_png(), question="what is it?", max_new_tokens=128)), VqaResult)
