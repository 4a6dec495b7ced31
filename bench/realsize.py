"""Real-size transformers architectures with seeded random weights, built offline for `bench.limits`.

The served cost of an image depends on the architecture and the processor, not on the weights: each
model here is the default catalog's architecture (the library's default config, which is the base
checkpoint's) with the processor settings of the hub checkpoint, saved in hub format. The text models
get the small tokenizers the tests learn (tests/hf_models.py), so only their vocabularies are smaller.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yolo_toys.settings import PROJECT_ROOT

# name: (hf_task, task, the architecture measured)
REAL_SIZE: dict[str, tuple[str, str, str]] = {
    "detr-r50": ("object-detection", "detect", "DETR, ResNet-50 backbone, 800/1333 px"),
    "owlvit-b32": ("zero-shot-object-detection", "detect", "OWL-ViT B/32, 768 px"),
    "vit-b16": ("image-classification", "classify", "ViT-B/16, 224 px"),
    "clip-b32": ("zero-shot-image-classification", "zero_shot_classify", "CLIP ViT-B/32, 224 px (shortest edge + crop)"),
    "blip-caption": ("image-captioning", "caption", "BLIP base captioning, 384 px"),
    "blip-vqa": ("visual-question-answering", "vqa", "BLIP base VQA, 384 px"),
    "depth-anything-s": ("depth-estimation", "depth", "Depth Anything (V2) small, 518 px, keep_aspect_ratio"),
    "segformer-b0": ("semantic-segmentation", "segment", "SegFormer-B0, 512 px, 150 classes (ADE20k)"),
}


def _tokenizers() -> Any:
    """tests/hf_models.py, whose tokenizers are learnt offline from a small corpus."""
    if "hf_models" in sys.modules:
        return sys.modules["hf_models"]
    spec = importlib.util.spec_from_file_location("hf_models", PROJECT_ROOT / "tests" / "hf_models.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules["hf_models"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _detr() -> tuple[Any, Any]:
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    labels = {i: f"class_{i}" for i in range(91)}
    config = DetrConfig(backbone_config=ResNetConfig(out_features=["stage4"]), use_pretrained_backbone=False,
                        id2label=labels, label2id={v: k for k, v in labels.items()})  # fmt: skip
    return DetrForObjectDetection(config), DetrImageProcessor()


def _clip_like(config_cls: Callable, model_cls: Callable, processor_cls: Callable, image_processor: Any) -> tuple[Any, Any]:
    tokenizer = _tokenizers().clip_tokenizer(model_max_length=77)
    text = {"vocab_size": len(tokenizer), "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = config_cls(text_config=text)
    return model_cls(config), processor_cls(image_processor=image_processor, tokenizer=tokenizer)


def _owlvit() -> tuple[Any, Any]:
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    return _clip_like(OwlViTConfig, OwlViTForObjectDetection, OwlViTProcessor, OwlViTImageProcessor())


def _clip() -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    return _clip_like(CLIPConfig, CLIPModel, CLIPProcessor, CLIPImageProcessor())


def _vit() -> tuple[Any, Any]:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {i: f"class_{i}" for i in range(1000)}
    config = ViTConfig(id2label=labels, label2id={v: k for k, v in labels.items()})
    return ViTForImageClassification(config), ViTImageProcessor()


def _blip(model_cls_name: str) -> tuple[Any, Any]:
    import transformers
    from transformers import BlipConfig, BlipImageProcessor, BlipProcessor

    tokenizer = _tokenizers().bert_tokenizer(model_max_length=512)
    text = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id, "sep_token_id": tokenizer.sep_token_id}  # fmt: skip
    model = getattr(transformers, model_cls_name)(BlipConfig(text_config=text))
    return model, BlipProcessor(image_processor=BlipImageProcessor(), tokenizer=tokenizer)


def _depth_anything() -> tuple[Any, Any]:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    processor = DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                  resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
    return DepthAnythingForDepthEstimation(DepthAnythingConfig()), processor


def _segformer() -> tuple[Any, Any]:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    labels = {i: f"class_{i}" for i in range(150)}
    config = SegformerConfig(id2label=labels, label2id={v: k for k, v in labels.items()})
    return SegformerForSemanticSegmentation(config), SegformerImageProcessor()


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "detr-r50": _detr, "owlvit-b32": _owlvit, "vit-b16": _vit, "clip-b32": _clip,
    "blip-caption": lambda: _blip("BlipForConditionalGeneration"), "blip-vqa": lambda: _blip("BlipForQuestionAnswering"),
    "depth-anything-s": _depth_anything, "segformer-b0": _segformer,
}  # fmt: skip


def build(name: str, directory: Path) -> Path:
    """Save model `name` under `directory/name` (reused when already there)."""
    import torch

    target = directory / name
    if (target / "config.json").is_file():
        return target
    tmp = directory / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    torch.manual_seed(0)
    model, processor = BUILDERS[name]()
    model.eval().save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(target)
    return target
