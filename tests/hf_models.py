"""Tiny random-weight Hugging Face models for every task of the transformers runner, built offline.

Each model is a real architecture with a small config and seeded random weights, saved in hub format
(`model.save_pretrained(dir)` + `processor.save_pretrained(dir)`), so that code under test loads it with
the Auto classes (`AutoProcessor` / `AutoImageProcessor` and `getattr(transformers, spec.auto_class)`) exactly
as it would load a hub checkpoint. Nothing is downloaded: the text models get tokenizers learnt here from
the small English corpus below (byte-level BPE for CLIP / OWL-ViT, WordPiece for BLIP), with the
`tokenizers` library's normalizers and pre-tokenizers and a deterministic merge loop (see "tokenizers").
Each folder is 0.2-0.7 MB (3.7 MB in all). `build_all` in a fresh process takes ~15 s on 2 CPU cores, nearly
all of it importing torch and transformers' model-loading machinery; the eight models themselves ~1.5 s.

Notes for transformers 5.x (checked on 5.23.0):
- There is no `AutoModelForVision2Seq` any more; BLIP captioning loads with `AutoModelForImageTextToText`.
- The `*Fast` tokenizer / image-processor names are aliases of the plain classes (`CLIPTokenizerFast is
  CLIPTokenizer`, `BertTokenizerFast is BertTokenizer`); the `*ImageProcessorFast` aliases log a deprecation.
  The plain image processors are the torchvision-backed ones, `*ImageProcessorPil` the PIL ones.
- OWL-ViT: the processor has `post_process_grounded_object_detection(outputs, threshold, target_sizes,
  text_labels)`; the image processor has `post_process_object_detection(outputs, threshold, target_sizes)`
  (no `post_process_grounded_object_detection`). Both exist; the processor one adds `text_labels`.
  Text queries must be a nested list (one list per image): a flat list is split across the images.
- `processor.save_pretrained` writes the image processor of a multimodal processor into
  `processor_config.json` (no `preprocessor_config.json`); `AutoImageProcessor` still loads it from there.
- The `visual-question-answering` and `image-to-text` pipelines were removed; `pipeline("image-text-to-text")`
  loads the BLIP captioner, nothing loads BLIP VQA as a pipeline (the runner calls `generate` itself).
- Depth Anything checkpoints use `keep_aspect_ratio=True, ensure_multiple_of=14`, which gives images of
  different aspect ratios different tensor shapes; batching those fails, so the tiny model keeps the
  aspect ratio off (fixed square resize) and the batch-of-2 path works like the other models. A runner
  serving the real checkpoint must pass `keep_aspect_ratio=False` or run such images one by one.

Usage: `build_all(tmp_dir)` -> {name: folder}; `build(name, tmp_dir)` builds one (cached: an existing folder
with a `config.json` is reused).
"""

from __future__ import annotations

import os
import shutil
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class HFSpec:
    name: str  # catalog / store name
    task: str  # our task: detect | classify | zero_shot_classify | caption | vqa | depth | segment
    hf_task: str  # the pipeline-style task name
    auto_class: str  # transformers Auto* class that loads the saved folder


SPECS: dict[str, HFSpec] = {
    s.name: s
    for s in (
        HFSpec("tiny-detr", "detect", "object-detection", "AutoModelForObjectDetection"),
        HFSpec("tiny-vit", "classify", "image-classification", "AutoModelForImageClassification"),
        HFSpec(
            "tiny-clip",
            "zero_shot_classify",
            "zero-shot-image-classification",
            "AutoModelForZeroShotImageClassification",
        ),
        HFSpec("tiny-owlvit", "detect", "zero-shot-object-detection", "AutoModelForZeroShotObjectDetection"),
        HFSpec("tiny-blip-caption", "caption", "image-captioning", "AutoModelForImageTextToText"),
        HFSpec("tiny-blip-vqa", "vqa", "visual-question-answering", "AutoModelForVisualQuestionAnswering"),
        HFSpec("tiny-depth-anything", "depth", "depth-estimation", "AutoModelForDepthEstimation"),
        HFSpec("tiny-segformer", "segment", "semantic-segmentation", "AutoModelForSemanticSegmentation"),
    )
}

DETR_LABELS = {0: "person", 1: "bus", 2: "car"}
VIT_LABELS = {0: "person", 1: "bus", 2: "car", 3: "cat", 4: "dog"}
SEGFORMER_LABELS = {0: "background", 1: "person", 2: "bus", 3: "road"}

CORPUS = """\
a photo of a bus. a photo of a person. a photo of a cat. a photo of a dog. a photo of a car.
a photo of a truck. a photo of a bicycle. a photo of a motorcycle. a photo of a train. a photo of a bird.
a picture of a man standing next to a bus on a city street.
a picture of two men in suits, one of them wearing a tie.
a blue bus is parked on the side of the road while people walk by.
a black cat is sleeping on a red couch in the living room.
a small brown dog runs across the green grass in the park.
a white car drives down the busy street past a tall building.
a woman rides a bicycle along the river on a sunny day.
a group of people wait at the bus stop in the rain.
a man in a suit smiles at the camera during a football match.
the person on the left is holding a phone and the person on the right is laughing.
how many people are in the picture? there are two people in the picture.
what color is the bus? the bus is blue and white.
what is the man wearing? the man is wearing a suit and a tie.
is there a dog in the image? yes, there is a dog. no, there is no cat.
where is the cat? the cat is on the couch. where is the car? the car is on the road.
what animal is this? this is a cat. this is a dog. this is a horse. this is a sheep. this is a cow.
a photo of a road, a photo of the sky, a photo of a tree, a photo of a house, a photo of a window.
one two three four five six seven eight nine ten many some several few none.
red green blue yellow black white gray orange pink purple brown dark light bright.
left right top bottom front back near far inside outside above below behind between.
the quick brown fox jumps over the lazy dog near the old stone bridge.
a person sitting on a bench reading a book under a large tree.
a traffic light, a stop sign, a fire hydrant and a parking meter on the corner.
an airplane flying in the clear blue sky above the clouds.
a boat floating on the calm water of the lake at sunset.
a plate of food with pizza, a sandwich, an apple, a banana and an orange.
a child playing with a ball and a kite on the beach.
a laptop, a keyboard, a mouse and a cell phone on a wooden desk.
"""


def corpus_lines() -> list[str]:
    return [line for line in CORPUS.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- tokenizers
#
# The vocabularies are learnt here, from CORPUS, with the same normalizers and pre-tokenizers (from the
# `tokenizers` library) as transformers' CLIPTokenizer / BertTokenizer use. The merges are learnt by the small
# loop below rather than `tokenizers.trainers.BpeTrainer` / `WordPieceTrainer`: those break ties between
# equally frequent pairs by ids handed out in Rust HashMap order, which is random per process, so every build
# got a different vocabulary (checked on tokenizers 0.23.3, TOKENIZERS_PARALLELISM=false included). Here ties
# go to the lexicographically smallest pair, so a build is reproducible byte for byte.


def _word_counts(normalizer, pre_tokenizer) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in corpus_lines():
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    return counts


def _learn_merges(
    counts: Counter[str], split: Callable[[str], list[str]], join: Callable[[str, str], str], n: int
) -> list[tuple[str, str]]:
    """Plain BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair) in every word."""
    words = {word: split(word) for word in counts}
    merges: list[tuple[str, str]] = []
    while len(merges) < n:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(join(*best))
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[word] = out
    return merges


def clip_tokenizer(model_max_length: int = 16):
    """A CLIP tokenizer (byte-level BPE, `</w>` end-of-word suffix) learnt from CORPUS.

    The vocabulary is laid out like CLIP's: the 256 byte symbols, the same with `</w>`, the merges in order,
    then `<|startoftext|>` and `<|endoftext|>` last (in CLIP 49406 and 49407). Special ids must not be 0:
    OWL-ViT treats a query whose first id is 0 as padding (`query_mask = input_ids[..., 0] > 0`), and CLIP's
    legacy pooling (`eos_token_id == 2`) takes the largest id as the end of the text.
    """
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    bos, eos = "<|startoftext|>", "<|endoftext|>"
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(
                    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
                ),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    merges = _learn_merges(
        _word_counts(normalizer, pre_tokenizer),
        split=lambda word: [*word[:-1], word[-1] + "</w>"],
        join=lambda a, b: a + b,
        n=1000,  # runs out of pairs first: every corpus word ends up one token
    )
    alphabet = [_BYTE_TO_UNICODE[b] for b in range(256)]
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *(a + b for a, b in merges), bos, eos]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(
        vocab=vocab, merges=merges, bos_token=bos, eos_token=eos, unk_token=eos, pad_token=eos,
        model_max_length=model_max_length,
    )  # fmt: skip


def bert_tokenizer(model_max_length: int = 32):
    """A BLIP-style BERT WordPiece tokenizer learnt from CORPUS; `[DEC]` is the bos token (as in BLIP).

    Ids: `[PAD]` 0 (BLIP's pad_token_id), then the other specials, the single characters (printable ASCII,
    word-initial and `##` continuation), then the merged pieces.
    """
    from tokenizers import normalizers, pre_tokenizers
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    merges = _learn_merges(
        _word_counts(normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()),
        split=lambda word: [word[0], *("##" + c for c in word[1:])],
        join=lambda a, b: a + b.removeprefix("##"),
        n=1000,  # runs out of pairs first: every corpus word ends up one token
    )
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    tokens = [*specials, *chars, *("##" + c for c in chars), *(a + b.removeprefix("##") for a, b in merges)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=model_max_length)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character table (what `pre_tokenizers.ByteLevel` produces)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TO_UNICODE = _bytes_to_unicode()


# --------------------------------------------------------------------------------------------- builders


def _detr():
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    backbone = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=["stage4"],
    )  # fmt: skip
    config = DetrConfig(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, num_queries=10,
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, id2label=DETR_LABELS,
        label2id={v: k for k, v in DETR_LABELS.items()},
    )  # fmt: skip
    processor = DetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 160})
    return DetrForObjectDetection(config), processor


def _vit():
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, id2label=VIT_LABELS, label2id={v: k for k, v in VIT_LABELS.items()},
    )  # fmt: skip
    processor = ViTImageProcessor(size={"height": 64, "width": 64})
    return ViTForImageClassification(config), processor


def _clip_configs(tokenizer, cls):
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 64, "patch_size": 16,
    }  # fmt: skip
    return cls(text_config=text, vision_config=vision, projection_dim=32)


def _clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return CLIPModel(_clip_configs(tokenizer, CLIPConfig)), processor


def _owlvit():
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessor, OwlViTProcessor

    tokenizer = clip_tokenizer()
    image_processor = OwlViTImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64})
    processor = OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return OwlViTForObjectDetection(_clip_configs(tokenizer, OwlViTConfig)), processor


def _blip(cls):
    from transformers import BlipConfig, BlipImageProcessor, BlipProcessor

    tokenizer = bert_tokenizer()
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 32, "encoder_hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id, "sep_token_id": tokenizer.sep_token_id,
    }  # fmt: skip
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 64, "patch_size": 16,
    }  # fmt: skip
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32)
    image_processor = BlipImageProcessor(size={"height": 64, "width": 64})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return cls(config), processor


def _blip_caption():
    from transformers import BlipForConditionalGeneration

    return _blip(BlipForConditionalGeneration)


def _blip_vqa():
    from transformers import BlipForQuestionAnswering

    return _blip(BlipForQuestionAnswering)


def _depth_anything():
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        image_size=70, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
        out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
    )  # fmt: skip
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 64],
        fusion_hidden_size=16, head_hidden_size=8,
    )  # fmt: skip
    # Keeps the aspect ratio, like Depth-Anything-V2-Small-hf: images of other shapes cannot share a batch.
    processor = DPTImageProcessor(
        size={"height": 70, "width": 70}, keep_aspect_ratio=True, ensure_multiple_of=14, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )  # fmt: skip
    return DepthAnythingForDepthEstimation(config), processor


def _segformer():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 16, 32, 64],
        num_attention_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=32, id2label=SEGFORMER_LABELS,
        label2id={v: k for k, v in SEGFORMER_LABELS.items()},
    )  # fmt: skip
    processor = SegformerImageProcessor(size={"height": 64, "width": 64})
    return SegformerForSemanticSegmentation(config), processor


BUILDERS = {
    "tiny-detr": _detr,
    "tiny-vit": _vit,
    "tiny-clip": _clip,
    "tiny-owlvit": _owlvit,
    "tiny-blip-caption": _blip_caption,
    "tiny-blip-vqa": _blip_vqa,
    "tiny-depth-anything": _depth_anything,
    "tiny-segformer": _segformer,
}


def build(name: str, directory: Path) -> Path:
    """Save model `name` (weights + config + processor) into `directory/name`; reuse it if already there.

    Written to a temporary sibling folder first and renamed, so an interrupted build never leaves a folder
    that looks complete.
    """
    import torch
    from transformers.utils import logging as hf_logging

    if name not in SPECS:
        raise KeyError(f"unknown tiny model {name!r}; known: {sorted(SPECS)}")
    target = Path(directory) / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        torch.manual_seed(0)
        model, processor = BUILDERS[name]()
        model.eval()
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if target.exists():  # a leftover without config.json (or a concurrent build that just finished)
        if (target / "config.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def build_all(directory: Path) -> dict[str, Path]:
    """Build (or reuse) every model of SPECS under `directory`; {name: folder}."""
    return {name: build(name, directory) for name in SPECS}
