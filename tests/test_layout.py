"""The shape of the code, as issue #9 asks it to stay: imports without side effects, short functions,
one package, BentoML workarounds checked at start-up."""

from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

MODULES = ["service", "models.catalog", "models.store", "models.__main__", "runners.runner", "runners.ultralytics",
           "runners.transformers", "yolo_toys.front", "yolo_toys.openapi", "yolo_toys.stream_client",
           "yolo_toys.workarounds", "yolo_toys.video"]  # fmt: skip

IMPORT_EVERYTHING = """
import json, logging, os, sys
import cv2  # OpenCV sets QT_QPA_* and LD_LIBRARY_PATH when imported: a dependency's doing, not ours
before = dict(os.environ)
for name in sys.argv[1:]:
    __import__(name)
from _bentoml_impl.serde import MultipartSerde
print(json.dumps({
    "environ": sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)),
    "patched": getattr(MultipartSerde.parse_request, "__yolo_toys__", False),
    "log_filters": len(logging.getLogger("bentoml._internal.server.http_app").filters),
    "store_touched": os.path.exists(os.environ["BENTOML_HOME"]),
    "heavy": sorted(m for m in ("torch", "ultralytics", "transformers", "openvino") if m in sys.modules),
}))
"""


def test_importing_has_no_side_effects(tmp_path: Path) -> None:
    """No module reads the model store, patches BentoML or changes the environment when imported,
    and none pulls in a framework before a runner starts."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "BENTOML_HOME": str(tmp_path / "bentoml"),
           "YOLO_TOYS_CATALOG": str(ROOT / "models" / "catalog.yaml")}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING, *MODULES], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"environ": [], "patched": False, "log_filters": 0, "store_touched": False, "heavy": []}


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(f"{path.relative_to(ROOT)}:{node.name}", node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]  # fmt: skip


def test_service_and_runner_functions_are_short() -> None:
    """No function of the service or the runners over 40 lines (ruff's C901 keeps their branches at 10 or fewer)."""
    paths = [ROOT / "service.py", *sorted((ROOT / "runners").glob("*.py")), ROOT / "yolo_toys" / "front.py"]
    long = [(name, lines) for path in paths for name, lines in _functions(path) if lines > 40]
    assert long == []


def test_the_shared_code_is_one_package() -> None:
    loose = sorted(p.name for p in ROOT.glob("*.py"))
    assert loose == ["service.py"]
    edit = "sys.path." + "insert"  # spelled apart so that this file does not match itself
    assert not [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and edit in p.read_text()]


def test_workarounds_apply_at_start_up_and_name_what_to_recheck(monkeypatch, caplog) -> None:
    import bentoml
    from _bentoml_impl.serde import MultipartSerde

    from yolo_toys import workarounds

    assert all(w.issue and w.where for w in workarounds.WORKAROUNDS)
    workarounds.install()
    patched = MultipartSerde.parse_request
    assert getattr(patched, "__yolo_toys__", False)
    workarounds.install()
    assert MultipartSerde.parse_request is patched  # idempotent: a second service in the process adds nothing
    assert bentoml.__version__ == workarounds.WRITTEN_FOR, "re-check every workaround, then update WRITTEN_FOR"

    monkeypatch.setattr(bentoml, "__version__", "9.9.9")
    with caplog.at_level(logging.WARNING, logger="yolo_toys.workarounds"):
        workarounds.install()
    warned = [r.getMessage() for r in caplog.records if r.name == "yolo_toys.workarounds"]
    assert len(warned) == len(workarounds.WORKAROUNDS)
    assert all("BentoML 9.9.9, not 1.4.39: re-check" in m for m in warned)
    assert any("bentoml/BentoML#5540" in m for m in warned)


def test_pip_install_builds_the_package(tmp_path: Path) -> None:
    """`pip install .` installs the `yolo_toys` package and the streaming client's command."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"  # a copy: building writes its egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", ".work", "test-artifacts", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = tmp_path.glob("yolo_toys-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "yolo_toys/schemas.py" in names and "yolo_toys/stream_client.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "service.py"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "yolo-toys-stream = yolo_toys.stream_client:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
