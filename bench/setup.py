"""The benchmark's models, catalog and isolated BentoML model store, built offline.

- yolov8n-openvino: the pretrained INT8 OpenVINO export from the shared weights directory;
- yolov8n-pytorch: the yolov8n architecture with seeded random weights (the PyTorch path);
- vit-tiny: a ViT-Ti/16 image classifier (the DeiT-tiny architecture, 5.7 M parameters, 224 px, 1000
  classes) with seeded random weights, in hub format (the transformers path).
The runners' batching and process settings are those of the shipped catalog, so tuning it shows here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from models.catalog import DEFAULT_CATALOG, weights_dir
from yolo_toys.settings import PROJECT_ROOT as ROOT


@dataclass(frozen=True)
class BenchModel:
    name: str
    family: str
    route: str  # served route; the baseline app serves the same path
    label: str  # how the report names it


MODELS = [
    BenchModel("yolov8n-openvino", "ultralytics", "/detect", "yolov8n INT8 OpenVINO (pretrained)"),
    BenchModel("yolov8n-pytorch", "ultralytics", "/detect", "yolov8n PyTorch (random weights)"),
    BenchModel("vit-tiny", "transformers", "/classify", "ViT-Ti/16 transformers (random weights)"),
]
BY_NAME = {m.name: m for m in MODELS}


def _vit_tiny(folder: Path) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                       image_size=224, patch_size=16, num_labels=1000,
                       id2label={i: f"class_{i}" for i in range(1000)})  # fmt: skip
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)


def _yolov8n_pt(path: Path) -> None:
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    YOLO("yolov8n.yaml").save(str(path))


def weights(work: Path) -> dict[str, Path]:
    """Each bench model's weights path, built on first use."""
    shared = weights_dir()
    if shared is None or not (shared / "yolov8n_int8_openvino_model").is_dir():
        raise SystemExit("no pretrained weights: put ../shared/weights beside the project or set YOLO_TOYS_WEIGHTS")
    work.mkdir(parents=True, exist_ok=True)
    paths = {"yolov8n-openvino": shared / "yolov8n_int8_openvino_model",
             "yolov8n-pytorch": work / "yolov8n-random.pt", "vit-tiny": work / "vit-tiny"}  # fmt: skip
    if not paths["yolov8n-pytorch"].exists():
        _yolov8n_pt(paths["yolov8n-pytorch"])
    if not (paths["vit-tiny"] / "config.json").exists():
        _vit_tiny(paths["vit-tiny"])
    return paths


def catalog(paths: dict[str, Path], names: list[str]) -> dict:
    shipped = yaml.safe_load(DEFAULT_CATALOG.read_text())
    entries = {
        "yolov8n-openvino": {"family": "ultralytics", "task": "detect", "default": True},
        "yolov8n-pytorch": {"family": "ultralytics", "task": "detect"},
        "vit-tiny": {"family": "transformers", "task": "classify", "hf_task": "image-classification",
                     "default": True},
    }  # fmt: skip
    models = [{"name": n, **entries[n], "description": BY_NAME[n].label, "sources": [{"local": str(paths[n])}]}
              for n in names]  # fmt: skip
    return {"runners": shipped["runners"], "models": models}


def prepare(work: Path, names: list[str]) -> tuple[dict[str, str], dict[str, Path]]:
    """Build the models, write the catalog, import it into a private store.

    Returns the servers' environment and each model's weights path.
    """
    paths = weights(work)
    catalog_file = work / "catalog.yaml"
    catalog_file.write_text(yaml.safe_dump(catalog(paths, names), sort_keys=False))
    env = {
        **os.environ,
        "BENTOML_HOME": str(work / "bentoml"),
        "YOLO_TOYS_CATALOG": str(catalog_file),
        "YOLO_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONUNBUFFERED": "1",
    }
    subprocess.run([sys.executable, "-m", "models", "import", *names], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return env, paths
