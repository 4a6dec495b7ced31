"""Bounded cost per request: an image built to blow up a task's preprocessing gets its answer quickly, in
original-image coordinates, or a 4xx that names the limit; never a 5xx, never gigabytes of runner memory.

The served tests send hostile PNGs (a 1 x 20,000 PNG is 165 bytes: bench/hostile.py) to every task route
of the test catalog and read each runner's peak memory per request (the kernel's high-water mark, reset
before each request). The unit tests check each family's `fit` rule against the library's own
preprocessing: a classifier's answer on a long image is its answer on the central part it is given.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import psutil
import pytest
import torch
import transformers
from PIL import Image

from bench import limits_report
from bench.hostile import SHAPES, png
from conftest import SHARED_WEIGHTS, Server, bus_jpg
from models.catalog import ModelEntry
from runners import transformers as hf
from runners.batch import _chunks
from runners.exported import top_candidates
from runners.limits import aspect, central_part
from runners.ultralytics import FAMILY as ULTRALYTICS
from runners.ultralytics import LoadedYolo
from yolo_toys.drawing import DRAW_MAX_SIDE, drawn_size, render
from yolo_toys.errors import ServiceError
from yolo_toys.imaging import DecodedImage, decode
from yolo_toys.schemas import ClassifyResult, ImageSize, PredictOptions, Timings
from yolo_toys.settings import settings

OPTIONS = PredictOptions(conf=0.25, iou=0.7, imgsz=None, max_det=300, top_k=5, max_new_tokens=30)


def options(**changes) -> PredictOptions:
    return OPTIONS.model_copy(update=changes)


# ---- the images ------------------------------------------------------------------------------------------


def test_a_1x20000_png_is_165_bytes() -> None:
    data = png(1, 20_000)
    assert len(data) == 165
    assert decode(data).shape == (20_000, 1)


# ---- the shared rule: a centre-cropping model gets the central part ------------------------------------


def test_an_image_within_the_aspect_limit_is_given_as_it_is() -> None:
    image = decode(bus_jpg())
    assert central_part(image, 2.0) is image


def test_a_long_image_is_cut_to_its_central_part_and_keeps_its_original() -> None:
    pixels = np.arange(1 * 20_000 * 3, dtype=np.uint32).astype(np.uint8).reshape(20_000, 1, 3)
    image = DecodedImage(pixels, "RGB", "PNG")
    part = central_part(image, 2.0)
    assert part.shape == (2, 1) and aspect(*part.shape) <= 2.0
    np.testing.assert_array_equal(part.rgb, pixels[9_999:10_001])
    assert part.original is image and part.original.shape == (20_000, 1)
    wide = central_part(DecodedImage(np.zeros((100, 1000, 3), np.uint8), "RGB", "PNG"), 3.0)
    assert wide.shape == (100, 300)


# ---- Ultralytics ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier() -> LoadedYolo:
    path = SHARED_WEIGHTS / "yolo11n-cls_saved_model" / "yolo11n-cls_int8.tflite"
    entry = ModelEntry(name="yolo11n-cls", family="ultralytics", task="classify", sources=[{"local": str(path)}])
    return ULTRALYTICS.load(entry, path)


def long_photo() -> np.ndarray:
    """bus.jpg (810 x 1080) between two strips of noise: 5,400 x 1,080 (5:1), BGR."""
    photo = decode(bus_jpg()).bgr
    noise = np.random.default_rng(0).integers(0, 256, (1080, 2295, 3), dtype=np.uint8)
    return np.concatenate([noise, photo, noise[:, ::-1]], axis=1)


def test_classify_of_a_long_image_is_ultralytics_classify_of_the_whole_image(classifier: LoadedYolo) -> None:
    pixels = long_photo()
    image = DecodedImage(pixels, "BGR", "PNG")
    fitted = ULTRALYTICS.fit(classifier, image, OPTIONS)
    assert fitted.shape == (1080, 2160) and fitted.original is image
    served = ULTRALYTICS.infer(classifier, [fitted], OPTIONS).outputs[0].probs.data.numpy()
    own = classifier.yolo.predict(pixels, verbose=False)[0].probs.data.numpy()  # Ultralytics on all 5,400 columns
    np.testing.assert_allclose(served, own, atol=1e-6)  # equal: the resize sees the same pixels at the same scale


def test_classify_result_reports_the_uploaded_size(classifier: LoadedYolo) -> None:
    image = decode(png(1, 20_000))
    fitted = ULTRALYTICS.fit(classifier, image, OPTIONS)
    assert fitted.shape == (2, 1)
    output = ULTRALYTICS.infer(classifier, [fitted], OPTIONS).outputs[0]
    result = ULTRALYTICS.to_result(classifier, output, fitted.original, SimpleNamespace(options=OPTIONS), Timings())
    assert (result.image.width, result.image.height) == (1, 20_000)


def loaded_yolo(task: str, imgsz: int = 640, fixed: bool = False) -> LoadedYolo:
    entry = ModelEntry(name=f"a-{task}-model", family="ultralytics", task=task, sources=[{"local": "x"}])
    return LoadedYolo(entry=entry, format="openvino", yolo=None, rect_letterbox=not fixed, imgsz=imgsz, fixed_imgsz=fixed)


def test_imgsz_over_the_limit_is_refused_before_any_work() -> None:
    image = decode(png(64, 64))
    assert ULTRALYTICS.fit(loaded_yolo("detect"), image, options(imgsz=settings().max_imgsz)) is image
    with pytest.raises(ServiceError) as refused:
        ULTRALYTICS.fit(loaded_yolo("detect"), image, options(imgsz=4096))
    assert refused.value.status == 422 and f"over the limit {settings().max_imgsz}" in refused.value.detail
    assert ULTRALYTICS.fit(loaded_yolo("detect", imgsz=1536, fixed=True), image, options(imgsz=1536)) is image


def test_segment_masks_are_bounded_by_max_det_and_imgsz() -> None:
    image, seg = decode(png(64, 64)), loaded_yolo("segment")
    assert ULTRALYTICS.fit(seg, image, options(max_det=300)) is image  # the defaults are within the limit
    for too_many in (options(max_det=301), options(max_det=100, imgsz=1280)):
        with pytest.raises(ServiceError) as refused:
            ULTRALYTICS.fit(seg, image, too_many)
        assert refused.value.status == 422 and "over the limit 122,880,000" in refused.value.detail
    assert ULTRALYTICS.fit(seg, image, options(max_det=75, imgsz=1280)) is image


def test_rotated_nms_gets_the_best_candidates_in_their_order() -> None:
    raw = torch.zeros(2, 4 + 3 + 1, 10)  # box, 3 classes, angle; 10 anchors
    raw[:, 4 + 1] = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5, 0.0])
    raw[:, 0] = torch.arange(10.0)  # remembers each anchor's index
    kept = top_candidates((raw, "extras"), 4)
    assert kept.shape == (2, 8, 4)
    assert kept[0, 0].tolist() == [1.0, 3.0, 5.0, 7.0]  # the four best, in anchor order
    assert top_candidates(raw, 10) is raw


# ---- transformers: the planner is the processor's own rule --------------------------------------------


def real_processors() -> dict[str, object]:
    """The processors of the default catalog's checkpoints (their hub configs), built offline."""
    return {
        "clip": transformers.CLIPImageProcessor(),
        "detr": transformers.DetrImageProcessor(),
        "depth-anything": transformers.DPTImageProcessor(
            size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3),
        "segformer": transformers.SegformerImageProcessor(),
        "vit": transformers.ViTImageProcessor(),
        "blip": transformers.BlipImageProcessor(),
        "owlvit": transformers.OwlViTImageProcessor(),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["detr", "depth-anything", "segformer", "vit", "blip", "owlvit"])
@pytest.mark.parametrize("height,width", [(480, 640), (1080, 810), (300, 4000), (7, 50), (1, 5000), (1, 1)])
def test_the_planned_size_is_the_processors(name: str, height: int, width: int) -> None:
    ip = real_processors()[name]
    planned = hf.resized_size(ip, height, width)
    image = np.zeros((height, width, 3), np.uint8)
    if min(planned) < 1:
        with pytest.raises(ValueError):
            ip(images=[image], return_tensors="pt", input_data_format="channels_last")
        return
    out = ip(images=[image], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    assert tuple(out.shape[-2:]) == tuple(planned), (name, height, width)


def test_clip_gets_the_central_part_and_the_same_pixels() -> None:
    ip = real_processors()["clip"]
    pixels = long_photo()[..., ::-1].copy()  # RGB, 5,400 x 1,080
    fitted = hf.fitted_size(ip, 1080, 5400, 2.0)
    assert fitted == (1080, 2160)
    part = central_part(DecodedImage(pixels, "RGB", "PNG"), 2.0).rgb
    whole = ip(images=[pixels], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    cut = ip(images=[part], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    torch.testing.assert_close(cut, whole, atol=0, rtol=0)  # the same pixels, bit for bit


def test_depth_anything_gets_a_smaller_copy_instead_of_13690_tokens() -> None:
    ip = real_processors()["depth-anything"]
    assert hf.resized_size(ip, 20_000, 2_000) == (5180, 518)  # what it would make of it: 370 x 37 patches
    assert hf.fitted_size(ip, 1080, 1920, 2.0) == (1080, 1920)  # 16:9 is taken as it is
    assert hf.resized_size(ip, *hf.fitted_size(ip, 20_000, 2_000, 2.0)) == (518, 56)
    assert hf.resized_size(ip, *hf.fitted_size(ip, 2_000, 6_000, 2.0)) == (168, 518)


@pytest.mark.parametrize("name", sorted(real_processors()))
def test_a_resize_never_holds_more_than_the_pixel_limit_between_its_passes(name: str) -> None:
    """A resize is two passes; a 1 x 40,000,000 image resized to 224 x 224 width first held 40,000,000 x
    224 pixels between them (OWL-ViT took 47 s on it, and 27 GB at 224 px)."""
    ip = real_processors()[name]
    for height, width in ((40_000_000, 1), (1, 40_000_000), (6324, 6324), (1080, 810)):
        fitted = hf.fitted_size(ip, height, width, 2.0)
        out = hf.resized_size(ip, *fitted)
        if min(out) >= 1:
            assert max(fitted[0] * out[1], out[0] * fitted[1]) <= settings().max_pixels, (name, height, width)
    assert hf.fitted_size(ip, 1080, 810, 2.0) == (1080, 810)  # a photo is given as it is


def test_too_thin_for_the_processor_is_refused_with_its_limit() -> None:
    m = SimpleNamespace(processor=real_processors()["depth-anything"], entry=SimpleNamespace(name="depth-anything"))
    with pytest.raises(ServiceError) as refused:
        hf.fit_to_processor(m, decode(png(1, 20_000)))
    assert refused.value.status == 422
    assert refused.value.detail == "1x20000: aspect ratio 20000:1 is over the limit 69:1 for depth-anything"
    assert hf.fit_to_processor(m, decode(png(290, 20_000))).shape == (518, 8)  # 69:1, a smaller copy
    with pytest.raises(ServiceError):
        hf.fit_to_processor(m, decode(png(289, 20_000)))  # 69.2:1


def test_the_class_map_is_bounded_by_classes_times_pixels() -> None:
    assert hf.class_map_size((1080, 810), 150) == (1080, 810)
    height, width = hf.class_map_size((20_000, 2_000), 150)
    assert 150 * height * width <= settings().max_class_scores and abs(height / width - 10) < 0.1
    height, width = hf.class_map_size((6324, 6324), 4)
    assert height * width <= hf.CLASS_MAP_PIXELS


def test_a_chunk_holds_at_most_the_pixel_limit() -> None:
    big, small = DecodedImage(np.zeros((20, 10, 3), np.uint8), "RGB", "PNG"), DecodedImage(np.zeros((2, 5, 3), np.uint8), "RGB", "PNG")
    members = [(0, big, 0.0), (1, small, 0.0), (2, small, 0.0), (3, big, 0.0), (4, small, 0.0)]
    chunks = [[i for i, _, _ in chunk] for chunk in _chunks(members, 8, 220)]
    assert chunks == [[0, 1, 2], [3, 4]]
    assert [[i for i, _, _ in c] for c in _chunks(members, 2, 10**9)] == [[0, 1], [2, 3], [4]]


def test_a_long_image_is_annotated_on_a_bounded_copy() -> None:
    """JPEG holds 65,500 pixels a side (a 1 x 70,000 annotation was a 500), and filling outlines costs a
    pass per row (300 masks on a 1 x 40,000,000 image took 47 s)."""
    result = ClassifyResult(model="m", image=ImageSize(width=1, height=70_000), timings=Timings(), top_k=[])
    jpeg = render(np.zeros((70_000, 1, 3), np.uint8), result)
    assert Image.open(io.BytesIO(jpeg)).size == (1, DRAW_MAX_SIDE)
    assert drawn_size(810, 1080) == (810, 1080) and drawn_size(20_000, 2_000) == (DRAW_MAX_SIDE, 819)


def test_the_report_states_the_worst_case_of_each_task() -> None:
    row = {"task": "classify", "route": "/classify", "model": "m", "options": "defaults", "shape": "1x20000",
           "status": 200, "seconds": 0.5, "runner": "ultralytics", "runner_idle_mb": 1000, "runner_peak_mb": 1300,
           "front_peak_mb": 150, "detail": "", "concurrent": 1, "statuses": {}, "load": 1.0}  # fmt: skip
    results = {"date": "d", "command": "python -m bench.limits", "seconds_total": 1, "idle_mb": {"ultralytics": 900},
               "machine": {"cpu": "cpu", "cores": 2, "memory_gb": 1.0, "versions": {}},
               "limits": {name: 1 for name, _, _ in limits_report.LIMITS}, "rows": [row, {**row, "seconds": 2.5, "runner_peak_mb": 1900}]}  # fmt: skip
    text = limits_report.render(results)
    assert "| classify | m | ultralytics | 2.5 | 900 | 1,900 | 200 |" in text
    assert all(f"`{env}`" in text for _, env, _ in limits_report.LIMITS)


# ---- served: hostile images on every task route -------------------------------------------------------

LABELS = ["a photo of a bus", "a photo of a cat"]
# route, form fields, whether the model may refuse a shape (aspect-keeping processors: DETR, Depth Anything)
MASKS = 6 * settings().max_mask_pixels  # upsampled float masks, then binary ones, at the mask limit (conf 0)
# route, form fields, whether the model may refuse a shape (aspect-keeping processors: DETR, Depth Anything),
# and what the options may add to the runner's peak whatever the image
ROUTES = [
    ("/detect", {"model": "yolo11n"}, False, 0),
    ("/detect", {"model": "rand-yolov8n", "imgsz": 1280}, False, 0),
    ("/detect", {"model": "tiny-detr"}, True, 0),
    ("/detect", {"model": "tiny-owlvit", "prompts": ["a bus"]}, False, 0),
    ("/segment", {"model": "yolo11n-seg"}, False, 0),
    ("/segment", {"model": "tiny-segformer", "conf": 0.0}, False, 0),
    ("/pose", {}, False, 0),
    ("/obb", {"conf": 0.0}, False, 0),
    ("/classify", {"model": "yolo11n-cls"}, False, 0),
    ("/classify", {"model": "tiny-vit"}, False, 0),
    ("/zero_shot_classify", {"labels": LABELS}, False, 0),
    ("/caption", {"max_new_tokens": 3}, False, 0),
    ("/vqa", {"question": "what is it?", "max_new_tokens": 3}, False, 0),
    ("/depth", {}, True, 0),
    ("/annotate", {"task": "classify"}, False, 0),
    ("/annotate", {"task": "segment", "model": "yolo11n-seg", "conf": 0.0}, False, MASKS),
]
BATTERY = ["1x20000", "20000x1", "1x5000", "5000x1", "1x1", "2000x20000", "8000x2000", "1x40000000"]
SECONDS = 10.0  # every answer, on 2 busy CPU cores; the 1 x 20,000 classify took 16.9 s before the limits


def peak_bound(pixels: int) -> int:
    """What a request may add to a runner's peak memory: 256 MiB plus 32 bytes per uploaded pixel (the
    decode, its other channel order, the processors' copies). Before the limits a 1 x 20,000 image
    added 3.9 GB to the Ultralytics runner (classify) and 0.55 GB to the transformers one (tiny CLIP)."""
    return 256 * 2**20 + 32 * pixels


def runners(server: Server) -> dict[str, psutil.Process]:
    """The server's runner processes by family, from their command lines."""
    port = server.url.rsplit(":", 1)[1]
    [supervisor] = [p for p in psutil.process_iter(["cmdline"]) if port in (p.info["cmdline"] or [])
                    and "serve" in (p.info["cmdline"] or [])]  # fmt: skip
    found = {}
    for child in supervisor.children(recursive=True):
        cmdline = child.cmdline()
        if "--service-name" in cmdline and cmdline[cmdline.index("--service-name") + 1] != "yolo_toys":
            found[cmdline[cmdline.index("--service-name") + 1]] = child
    return found


def status_kb(process: psutil.Process, field: str) -> int:
    line = next(x for x in Path(f"/proc/{process.pid}/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1])


def post(server: Server, route: str, image: bytes, fields: dict) -> tuple[httpx.Response, float]:
    data = {k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in fields.items()}
    started = time.perf_counter()
    resp = httpx.post(f"{server.url}{route}", data=data, files={"image": ("x.png", image, "image/png")}, timeout=120)
    return resp, time.perf_counter() - started


def assert_answer_size(resp: httpx.Response, route: str, width: int, height: int) -> None:
    """The answer is of the whole upload: the result's `image` (and the depth PNG), or the drawn JPEG
    (scaled down to DRAW_MAX_SIDE where the upload is longer)."""
    if route == "/annotate":
        assert Image.open(io.BytesIO(resp.content)).size == drawn_size(width, height)
        return
    body = resp.json()
    assert (body["image"]["width"], body["image"]["height"]) == (width, height)
    if body["task"] == "depth":
        assert Image.open(io.BytesIO(base64.b64decode(body["depth_png"]))).size == (width, height)


@pytest.mark.serve
@pytest.mark.parametrize("route,fields,may_refuse,options_cost", ROUTES,
                         ids=[f"{r}-{f.get('model', f.get('task', ''))}" for r, f, _, _ in ROUTES])  # fmt: skip
def test_hostile_images_get_a_quick_bounded_answer(server: Server, route: str, fields: dict, may_refuse: bool,
                                                  options_cost: int) -> None:  # fmt: skip
    procs = runners(server)
    for shape in BATTERY:
        width, height = SHAPES[shape]
        before = {name: status_kb(p, "VmRSS") for name, p in procs.items()}
        for p in procs.values():
            Path(f"/proc/{p.pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from now
        resp, seconds = post(server, route, png(width, height), fields)
        assert resp.status_code < 500, (shape, resp.text)
        if resp.status_code == 200:
            assert_answer_size(resp, route, width, height)
        else:
            body = resp.json()
            assert may_refuse and resp.status_code == 422 and "over the limit" in body["detail"], (shape, body)
            assert f"{width}x{height}" in body["detail"]
        assert seconds < SECONDS, (shape, seconds)
        for name, p in procs.items():
            grown = (status_kb(p, "VmHWM") - before[name]) * 1024
            bound = peak_bound(width * height) + options_cost
            assert grown < bound, f"{shape}: the {name} runner's peak grew by {grown / 2**20:.0f} MB"
    assert server.healthy()


@pytest.mark.serve
def test_limits_are_4xx_that_name_them(server: Server) -> None:
    resp, _ = post(server, "/segment", png(640, 480), {"model": "yolo11n-seg", "max_det": 1000})
    assert resp.status_code == 422 and "over the limit" in resp.json()["detail"], resp.text
    resp, _ = post(server, "/detect", png(640, 480), {"model": "rand-yolov8n", "imgsz": 4096})
    assert resp.status_code == 422 and "imgsz 4096 is over the limit 1280" in resp.json()["detail"], resp.text
    resp, _ = post(server, "/depth", png(1, 20_000), {})
    assert resp.status_code == 422 and resp.json()["error"] == "image not supported", resp.text
