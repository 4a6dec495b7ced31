"""Shared fixtures: an isolated model store, random-weight models, and a real `bentoml serve`.

Everything runs offline: the pretrained INT8 exports come from ../shared/weights (or
$YOLO_TOYS_WEIGHTS), the PyTorch-path models are built here from Ultralytics YAML with random
weights, and BentoML's home is a temporary directory so the user's model store is untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from bench.servers import own_home, workers
from bench.servers import serving as bench_serving
from models.catalog import DEFAULT_CATALOG, weights_dir
from yolo_toys.settings import settings

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_WEIGHTS = weights_dir()
RANDOM_MODELS = {"rand-yolov8n": ("yolov8n.yaml", "detect"), "rand-yolov8n-obb": ("yolov8n-obb.yaml", "obb")}


def assert_error(resp: httpx.Response, status: int, error: str | None = None) -> dict:
    """The answer is `status` with exactly `{"error", "detail"}` (and that `error`, if given)."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"}, body
    if error is not None:
        assert body["error"] == error, body
    return body


def bus_jpg() -> bytes:
    from ultralytics.utils import ASSETS

    return (ASSETS / "bus.jpg").read_bytes()


def zidane_jpg() -> bytes:
    from ultralytics.utils import ASSETS

    return (ASSETS / "zidane.jpg").read_bytes()


def build_random_weights(directory: Path) -> dict[str, Path]:
    """Real architectures with seeded random weights, saved as Ultralytics .pt checkpoints."""
    import torch
    from ultralytics import YOLO

    paths = {}
    for name, (config, _task) in RANDOM_MODELS.items():
        path = directory / f"{name}.pt"
        if not path.exists():
            torch.manual_seed(0)
            YOLO(config).save(str(path))
        paths[name] = path
    return paths


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_random_weights(tmp_path_factory.mktemp("random_weights"))


@pytest.fixture(scope="session")
def hf_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight transformers models in hub format (tests/hf_models.py)."""
    from hf_models import build_all

    return build_all(tmp_path_factory.mktemp("hf_weights"))


@pytest.fixture(scope="session")
def test_env(
    tmp_path_factory: pytest.TempPathFactory, random_weights: dict[str, Path], hf_weights: dict[str, Path]
) -> dict[str, str]:
    """Environment of every subprocess: isolated BentoML home, a catalog with the random models."""
    if SHARED_WEIGHTS is None:
        pytest.fail("no pretrained weights: put ../shared/weights beside the project or set YOLO_TOYS_WEIGHTS")
    home = tmp_path_factory.mktemp("bentoml_home")
    weights = random_weights
    random_dir = tmp_path_factory.mktemp("catalog")
    catalog = yaml.safe_load(DEFAULT_CATALOG.read_text())
    for name, (_config, task) in RANDOM_MODELS.items():
        catalog["models"].append({
            "name": name, "family": "ultralytics", "task": task,
            "description": "random weights, built by the tests", "sources": [{"local": str(weights[name])}],
        })  # fmt: skip
    from hf_models import SPECS

    for name, spec in SPECS.items():
        catalog["models"].append({
            "name": name, "family": "transformers", "task": spec.task, "hf_task": spec.hf_task,
            "description": "tiny random weights, built by the tests", "sources": [{"local": str(hf_weights[name])}],
        })  # fmt: skip
    catalog_file = random_dir / "catalog.yaml"
    catalog_file.write_text(yaml.safe_dump(catalog, sort_keys=False))
    env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "YOLO_TOYS_CATALOG": str(catalog_file),
        "YOLO_TOYS_WEIGHTS": str(SHARED_WEIGHTS),
        "YOLO_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "True",
        "YOLO_TOYS_MAX_STREAMS": "8",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@pytest.fixture(scope="session")
def imported(test_env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m models import` into the isolated store, exactly as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "models", "import"], cwd=ROOT, env=test_env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="session")
def in_process_env(test_env: dict[str, str], imported: subprocess.CompletedProcess) -> Iterator[None]:
    """Point this process at the isolated store and test catalog (for in-process tests)."""
    keys = ("BENTOML_HOME", "YOLO_TOYS_CATALOG", "YOLO_TOYS_WEIGHTS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: test_env[k] for k in keys})
    settings.cache_clear()
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    settings.cache_clear()


class Server:
    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> dict[str, psutil.Process]:
        """The server's worker processes by service name (`yolo_toys`, `ultralytics`, ...), looked up now."""
        return workers(self.url)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


@contextmanager
def serving(env: dict[str, str], log: Path, timeout: float = 240) -> Iterator[Server]:
    """A real `bentoml serve service:YoloToys` on a free port, ready when entered, stopped on exit."""
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", "service:YoloToys", "--port", "{port}",
               "--host", "127.0.0.1"]  # fmt: skip
    with bench_serving(command, own_home(env, log.parent), None, "/readyz", log, timeout) as url:
        yield Server(url, log)


@pytest.fixture(scope="session")
def server(test_env: dict[str, str], imported: subprocess.CompletedProcess, tmp_path_factory) -> Iterator[Server]:
    """The test catalog served by a real `bentoml serve`, for the whole session."""
    with serving(test_env, tmp_path_factory.mktemp("serve") / "serve.log") as srv:
        yield srv
