"""`bentoml build` packages the service offline and records the catalog's models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BENTOML = str(Path(sys.executable).parent / "bentoml")


def test_bentoml_build_records_models(test_env: dict[str, str], imported) -> None:
    build = subprocess.run(
        [BENTOML, "build", "--output", "tag"], cwd=ROOT, env=test_env, capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("yolo-toys:"), build.stdout
    info = subprocess.run(
        [BENTOML, "get", tag, "-o", "json"], cwd=ROOT, env=test_env, capture_output=True, text=True, timeout=120
    )
    assert info.returncode == 0, info.stderr
    bento = json.loads(info.stdout)
    recorded = {m["tag"].split(":")[0] for service in bento["services"] for m in service["models"]}
    assert {"yolo11n", "yolov8n", "yolo11n-seg", "yolov8n-pose", "yolo11n-cls", "rand-yolov8n"} <= recorded
    assert {"tiny-detr", "tiny-clip", "tiny-blip-vqa", "tiny-depth-anything"} <= recorded
    assert "yolo11n-obb" not in recorded and "detr-resnet-50" not in recorded  # not obtainable offline
    assert {s["name"] for s in bento["services"]} == {"yolo_toys", "ultralytics", "transformers"}
    bento_dir = Path(test_env["BENTOML_HOME"]) / "bentos" / tag.replace(":", "/")
    src = bento_dir / "src"
    for path in ("service.py", "runners/runner.py", "runners/ultralytics.py", "models/catalog.yaml",
                 "yolo_toys/imaging.py", "yolo_toys/front.py", "demo/index.html"):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists()
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "bentoml==1.4.39" in requirements and "torch==2.13.0" in requirements
    assert "transformers==5.23.0" in requirements
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "libgl1" in dockerfile
