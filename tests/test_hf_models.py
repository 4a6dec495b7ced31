"""tests/hf_models.py: the tiny random-weight Hugging Face models load back like hub checkpoints and run.

Each model is built once into a temporary folder and reloaded through the Auto classes only, as a hub name
would be (conftest.py sets HF_HUB_OFFLINE=1). A batch of two real photos of different sizes (bus.jpg
810x1080, zidane.jpg 1280x720) goes through processor -> model -> post-processing, and the outputs must
come back in each image's own pixel size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from PIL import Image

from hf_models import CORPUS, SPECS, bert_tokenizer, build, build_all, clip_tokenizer

TASKS = {"detect", "classify", "zero_shot_classify", "caption", "vqa", "depth", "segment"}
HF_TASKS = {
    "object-detection", "image-classification", "zero-shot-image-classification", "zero-shot-object-detection",
    "image-captioning", "visual-question-answering", "depth-estimation", "semantic-segmentation",
}  # fmt: skip
ARCHITECTURES = {
    "tiny-detr": "DetrForObjectDetection",
    "tiny-vit": "ViTForImageClassification",
    "tiny-clip": "CLIPModel",
    "tiny-owlvit": "OwlViTForObjectDetection",
    "tiny-blip-caption": "BlipForConditionalGeneration",
    "tiny-blip-vqa": "BlipForQuestionAnswering",
    "tiny-depth-anything": "DepthAnythingForDepthEstimation",
    "tiny-segformer": "SegformerForSemanticSegmentation",
}
PROCESSORS = {
    "tiny-detr": "DetrImageProcessor",
    "tiny-vit": "ViTImageProcessor",
    "tiny-clip": "CLIPProcessor",
    "tiny-owlvit": "OwlViTProcessor",
    "tiny-blip-caption": "BlipProcessor",
    "tiny-blip-vqa": "BlipProcessor",
    "tiny-depth-anything": "DPTImageProcessor",
    "tiny-segformer": "SegformerImageProcessor",
}
PROMPTS = ["a photo of a bus", "a photo of a person"]
MAX_FOLDER_BYTES = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("hf_models"))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    from ultralytics.utils import ASSETS

    return [Image.open(ASSETS / name).convert("RGB") for name in ("bus.jpg", "zidane.jpg")]


@pytest.fixture(scope="module")
def sizes(images: list[Image.Image]) -> list[tuple[int, int]]:
    sizes = [(im.height, im.width) for im in images]
    assert sizes == [(1080, 810), (720, 1280)]  # different sizes and orientations
    return sizes


def load(folder: Path, auto_class: str) -> tuple[Any, Any]:
    processor = transformers.AutoProcessor.from_pretrained(folder)
    model = getattr(transformers, auto_class).from_pretrained(folder).eval()
    return processor, model


def expected_boxes(pred_boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Normalized (cx, cy, w, h) -> (x1, y1, x2, y2) in pixels of an image of `size` (h, w)."""
    cx, cy, w, h = pred_boxes.unbind(-1)
    height, width = size
    return torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)


def check_boxes(post: list[dict], pred_boxes: torch.Tensor, sizes: list[tuple[int, int]], n: int) -> None:
    assert len(post) == len(sizes)
    for result, pred, size in zip(post, pred_boxes, sizes, strict=True):
        boxes = result["boxes"]
        assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
        assert result["scores"].shape == (n,) and result["labels"].shape == (n,)
        assert torch.all((result["scores"] >= 0) & (result["scores"] <= 1))
        # Scaled to this image's own size, not the network input or the other image.
        torch.testing.assert_close(boxes, expected_boxes(pred, size), rtol=1e-4, atol=1e-2)
        height, width = size
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert torch.all((centers[:, 0] >= 0) & (centers[:, 0] <= width))
        assert torch.all((centers[:, 1] >= 0) & (centers[:, 1] <= height))


# ---- the specs and the saved folders --------------------------------------------------------------------


def test_specs() -> None:
    assert set(SPECS) == set(ARCHITECTURES)
    for name, spec in SPECS.items():
        assert spec.name == name
        assert spec.task in TASKS and spec.hf_task in HF_TASKS
        assert hasattr(transformers, spec.auto_class), spec.auto_class
    assert {s.task for s in SPECS.values()} == TASKS
    assert {s.hf_task for s in SPECS.values()} == HF_TASKS
    with pytest.raises(KeyError, match="unknown tiny model"):
        build("tiny-nope", Path("unused"))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_saved_in_hub_format(folders: dict[str, Path], name: str) -> None:
    folder = folders[name]
    assert folder.name == name and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < MAX_FOLDER_BYTES, f"{name}: {size} bytes"
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.architectures == [ARCHITECTURES[name]]
    processor = transformers.AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == PROCESSORS[name]
    if hasattr(processor, "tokenizer"):  # text models: the tokenizer and the image processor load on their own too
        assert transformers.AutoTokenizer.from_pretrained(folder).get_vocab() == processor.tokenizer.get_vocab()
        image_processor = transformers.AutoImageProcessor.from_pretrained(folder)
        assert type(image_processor) is type(processor.image_processor)
        assert len(processor.tokenizer) <= config.text_config.vocab_size


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-clip", "tiny-blip-vqa"])
def test_build_is_cached_and_reproducible(folders: dict[str, Path], tmp_path: Path, name: str) -> None:
    again = build(name, tmp_path)
    stamps = {f.name: f.stat().st_mtime_ns for f in again.iterdir()}
    assert build(name, tmp_path) == again
    assert {f.name: f.stat().st_mtime_ns for f in again.iterdir()} == stamps  # reused, not rebuilt
    # Seeded weights and deterministically learnt tokenizers: the same bytes as the module's build.
    assert sorted(stamps) == sorted(f.name for f in folders[name].iterdir())
    for file in stamps:
        assert (again / file).read_bytes() == (folders[name] / file).read_bytes(), file
    assert not list(tmp_path.glob(".*.tmp"))


def test_clip_tokenizer() -> None:
    tok = clip_tokenizer()
    words = {w.strip(".,?!").lower() for w in CORPUS.split()} - {""}
    assert all(len(tok.tokenize(w)) == 1 for w in words)  # every corpus word is one token
    # CLIP puts its special tokens last; OWL-ViT masks queries whose first id is 0.
    assert tok.bos_token_id == len(tok) - 2 and tok.eos_token_id == tok.pad_token_id == len(tok) - 1
    enc = tok("A  photo of a Bus!")
    assert enc["input_ids"][0] == tok.bos_token_id and enc["input_ids"][-1] == tok.eos_token_id
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])[1:-1]
    assert tokens == ["a</w>", "photo</w>", "of</w>", "a</w>", "bus</w>", "!</w>"]
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == "a photo of a bus !"  # as CLIP decodes it
    unseen = tok("zebra é 42")["input_ids"]
    assert tok.unk_token_id not in unseen[1:-1]  # byte-level: any text, no unknown token
    assert tok.decode(unseen, skip_special_tokens=True) == "zebra é 4 2"


def test_bert_tokenizer() -> None:
    tok = bert_tokenizer()
    assert (tok.pad_token_id, tok.bos_token, tok.sep_token, tok.cls_token) == (0, "[DEC]", "[SEP]", "[CLS]")
    words = {w.strip(".,?!").lower() for w in CORPUS.split()} - {""}
    assert all(len(tok.tokenize(w)) == 1 for w in words)
    enc = tok("How many people are in the picture?")
    assert tok.convert_ids_to_tokens(enc["input_ids"]) == [
        "[CLS]", "how", "many", "people", "are", "in", "the", "picture", "?", "[SEP]"
    ]  # fmt: skip
    assert tok.decode(tok("a zebra")["input_ids"], skip_special_tokens=True) == "a zebra"  # unseen word: pieces


# ---- batch of two images of different sizes, through the Auto classes ---------------------------------------


@torch.inference_mode()
def test_detr(folders: dict[str, Path], images: list[Image.Image], sizes: list[tuple[int, int]]) -> None:
    processor, model = load(folders["tiny-detr"], SPECS["tiny-detr"].auto_class)
    inputs = processor(images=images, return_tensors="pt")
    assert inputs["pixel_values"].shape[0] == 2 and inputs["pixel_mask"].shape[0] == 2  # padded to one size
    assert max(inputs["pixel_values"].shape[-2:]) <= 160
    outputs = model(**inputs)
    post = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    check_boxes(post, outputs.pred_boxes, sizes, n=model.config.num_queries)
    for result in post:
        assert {model.config.id2label[int(i)] for i in result["labels"]} <= {"person", "bus", "car"}


@torch.inference_mode()
def test_owlvit(folders: dict[str, Path], images: list[Image.Image], sizes: list[tuple[int, int]]) -> None:
    processor, model = load(folders["tiny-owlvit"], SPECS["tiny-owlvit"].auto_class)
    queries = [PROMPTS] * len(images)  # one list of queries per image
    inputs = processor(text=queries, images=images, return_tensors="pt", padding=True)
    assert inputs["input_ids"].shape[0] == len(images) * len(PROMPTS)
    outputs = model(**inputs)
    patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    assert outputs.logits.shape == (2, patches, len(PROMPTS))
    post = processor.post_process_grounded_object_detection(
        outputs, threshold=0.0, target_sizes=sizes, text_labels=queries
    )
    check_boxes(post, outputs.pred_boxes, sizes, n=patches)
    for result in post:
        assert torch.all(result["labels"] < len(PROMPTS))
        assert result["text_labels"] == [PROMPTS[int(i)] for i in result["labels"]]
    # The image processor's own post-processing gives the same boxes (without text labels).
    plain = processor.image_processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    for a, b in zip(plain, post, strict=True):
        torch.testing.assert_close(a["boxes"], b["boxes"])
    # Default padding ("max_length", the tokenizer's 16) works as well.
    padded = processor(text=queries, images=images, return_tensors="pt")
    assert padded["input_ids"].shape == (4, 16) and model(**padded).logits.shape == outputs.logits.shape


@torch.inference_mode()
def test_vit(folders: dict[str, Path], images: list[Image.Image]) -> None:
    processor, model = load(folders["tiny-vit"], SPECS["tiny-vit"].auto_class)
    inputs = processor(images=images, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    logits = model(**inputs).logits
    assert logits.shape == (2, len(model.config.id2label)) and torch.isfinite(logits).all()
    assert {model.config.id2label[int(i)] for i in logits.argmax(-1)} <= {"person", "bus", "car", "cat", "dog"}


@torch.inference_mode()
def test_clip(folders: dict[str, Path], images: list[Image.Image]) -> None:
    processor, model = load(folders["tiny-clip"], SPECS["tiny-clip"].auto_class)
    labels = ["a photo of a bus", "a photo of a cat", "a dog"]
    inputs = processor(text=labels, images=images, return_tensors="pt", padding=True)
    assert inputs["input_ids"].shape[0] == 3 and inputs["pixel_values"].shape == (2, 3, 64, 64)
    out = model(**inputs)
    assert out.logits_per_image.shape == (2, 3) and out.logits_per_text.shape == (3, 2)
    probs = out.logits_per_image.softmax(-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    single = processor(text=labels[:2], images=images[0], return_tensors="pt", padding=True)
    assert model(**single).logits_per_image.shape == (1, 2)


@torch.inference_mode()
def test_blip_caption(folders: dict[str, Path], images: list[Image.Image]) -> None:
    processor, model = load(folders["tiny-blip-caption"], SPECS["tiny-blip-caption"].auto_class)
    assert type(model).__name__ == "BlipForConditionalGeneration"
    inputs = processor(images=images, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5)
    assert generated.shape[0] == 2 and generated.shape[1] <= 1 + 5
    captions = processor.batch_decode(generated, skip_special_tokens=True)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    prefix = "a picture of"
    inputs = processor(images=images, text=[prefix] * 2, return_tensors="pt", padding=True)
    generated = model.generate(**inputs, max_new_tokens=5)
    captions = processor.batch_decode(generated, skip_special_tokens=True)
    assert len(captions) == 2 and all(isinstance(c, str) and c.startswith(prefix) for c in captions)


@torch.inference_mode()
def test_blip_vqa(folders: dict[str, Path], images: list[Image.Image]) -> None:
    processor, model = load(folders["tiny-blip-vqa"], SPECS["tiny-blip-vqa"].auto_class)
    assert type(model).__name__ == "BlipForQuestionAnswering"
    questions = ["how many people are in the picture?", "what color is the bus?"]  # different lengths: padded
    inputs = processor(images=images, text=questions, return_tensors="pt", padding=True)
    generated = model.generate(**inputs, max_new_tokens=5)
    assert generated.shape[0] == 2 and generated.shape[1] <= 1 + 5
    answers = processor.batch_decode(generated, skip_special_tokens=True)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


@torch.inference_mode()
def test_depth_anything(folders: dict[str, Path], images: list[Image.Image], sizes: list[tuple[int, int]]) -> None:
    processor, model = load(folders["tiny-depth-anything"], SPECS["tiny-depth-anything"].auto_class)
    with pytest.raises((RuntimeError, ValueError)):  # why the runner batches only images of one shape
        processor(images=images, return_tensors="pt")
    same = [images[0], images[0]]
    inputs = processor(images=same, return_tensors="pt")
    _, _, height, width = inputs["pixel_values"].shape
    assert inputs["pixel_values"].shape[0] == 2 and height % 14 == 0 and width % 14 == 0
    assert height > width  # bus.jpg is portrait: the aspect ratio is kept
    outputs = model(**inputs)
    assert outputs.predicted_depth.shape == (2, height, width)
    post = processor.post_process_depth_estimation(outputs, target_sizes=[sizes[0], sizes[0]])
    assert [tuple(p["predicted_depth"].shape) for p in post] == [sizes[0], sizes[0]]
    assert all(torch.isfinite(p["predicted_depth"]).all() for p in post)


@torch.inference_mode()
def test_segformer(folders: dict[str, Path], images: list[Image.Image], sizes: list[tuple[int, int]]) -> None:
    processor, model = load(folders["tiny-segformer"], SPECS["tiny-segformer"].auto_class)
    inputs = processor(images=images, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    outputs = model(**inputs)
    assert outputs.logits.shape == (2, 4, 16, 16)  # 1/4 of the input
    post = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    assert [tuple(seg.shape) for seg in post] == sizes
    for seg in post:
        assert seg.dtype == torch.int64 and set(seg.unique().tolist()) <= set(model.config.id2label)
