"""Put catalog models into the BentoML model store, and find them there.

Each stored model holds the weights exactly as obtained (a file, or a whole export folder) plus
metadata: family, task, class names, source, the entry path to load and sha256 digests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import NotFound

from models.catalog import HF_AUTO_CLASS, LABELLED_HF_TASKS, ModelEntry, Source, load_catalog, weights_dir

log = logging.getLogger("yolo_toys.models")


class SourceUnavailable(Exception):
    """This source cannot provide the model here (missing file, no internet, ...)."""


@dataclass
class Fetched:
    path: Path  # file or folder to copy into the store
    entry: str  # what to load, relative to the stored model's folder
    source: Source


@dataclass
class ImportOutcome:
    name: str
    status: str  # "imported", "up to date" or "skipped"
    detail: str
    tag: str | None = None


def sha256_tree(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file itself), by relative path."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digests = {}
    for file in files:
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests[file.relative_to(path).as_posix() if path.is_dir() else file.name] = h.hexdigest()
    return digests


def combined_digest(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(digests.items())).encode()).hexdigest()


def _fetch_local(entry: ModelEntry, source: Source) -> Fetched:
    """A path under the weights directory, or an absolute path."""
    local = Path(str(source.local)).expanduser()
    if not local.is_absolute():
        root = weights_dir()
        if root is None:
            raise SourceUnavailable("no weights directory (set YOLO_TOYS_WEIGHTS)")
        local = root / local
    if not local.exists():
        raise SourceUnavailable(f"{local} does not exist")
    # An exported file (TFLite, ...) needs the metadata.yaml beside it: copy its whole folder.
    top = local.parent if local.is_file() and (local.parent / "metadata.yaml").is_file() else local
    return Fetched(path=top, entry=local.relative_to(top.parent).as_posix(), source=source)


def _fetch_hub(entry: ModelEntry, source: Source, workdir: Path) -> Fetched:
    if entry.family == "ultralytics":
        from ultralytics.utils.downloads import attempt_download_asset

        try:
            local = Path(attempt_download_asset(workdir / str(source.hub)))
        except Exception as exc:  # no internet, unknown asset, ...
            raise SourceUnavailable(f"download of {source.hub} failed: {exc}".splitlines()[0]) from None
        if not local.is_file():
            raise SourceUnavailable(f"download of {source.hub} produced no file")
        return Fetched(path=local, entry=local.name, source=source)
    if entry.family == "transformers":
        if not hub_reachable("huggingface.co"):
            raise SourceUnavailable("the Hugging Face hub is not reachable (offline)")
        folder = workdir / entry.name
        try:
            model, processor = load_transformers(entry, str(source.hub))
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
        except Exception as exc:  # offline, unknown repo, gated, ...
            raise SourceUnavailable(f"hub download of {source.hub} failed: {exc}".splitlines()[0]) from None
        return Fetched(path=folder, entry=folder.name, source=source)
    raise SourceUnavailable(f"no hub loader for family {entry.family}")


@lru_cache(maxsize=8)
def hub_reachable(host: str) -> bool:
    """One quick probe: offline, huggingface_hub retries each file for minutes before it gives up."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # the proxy decides; a direct probe would say nothing
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


def load_transformers(entry: ModelEntry, where: str, **kwargs: Any) -> tuple[Any, Any]:
    """Model and processor of a hf_task, from a hub repo id or a save_pretrained folder."""
    import transformers

    auto_class = getattr(transformers, HF_AUTO_CLASS[str(entry.hf_task)])
    processor = transformers.AutoProcessor.from_pretrained(where)
    return auto_class.from_pretrained(where, **kwargs), processor


def _inspect(entry: ModelEntry, weights: Path) -> dict:
    """Load the model once to check its task and record its class names."""
    if entry.family == "ultralytics":
        from ultralytics import YOLO

        model = YOLO(str(weights))  # no task=: Ultralytics would echo it instead of reading the weights
        if model.task != entry.task.value:
            raise SourceUnavailable(f"weights are for task {model.task}, catalog says {entry.task.value}")
        return {"class_names": {int(k): str(v) for k, v in model.names.items()}}
    if entry.family == "transformers":
        try:
            model, _ = load_transformers(entry, str(weights))
        except Exception as exc:
            raise SourceUnavailable(f"not loadable as {entry.hf_task}: {exc}".splitlines()[0]) from None
        if entry.hf_task not in LABELLED_HF_TASKS:
            return {"architecture": type(model).__name__}
        labels = {int(k): str(v) for k, v in (model.config.id2label or {}).items()}
        return {"architecture": type(model).__name__, "class_names": labels}
    return {}


def _export(entry: ModelEntry, fetched: Fetched, workdir: Path) -> Fetched:
    """TensorRT FP16 engine with a dynamic batch up to the runner's GPU batch cap, built on this GPU.

    An engine only runs with the GPU model and TensorRT version it was built with: import it on the
    serving machine. Ultralytics installs `tensorrt` on first use (needs internet).
    """
    import torch
    from ultralytics import YOLO

    if not torch.cuda.is_available():
        raise SourceUnavailable("TensorRT export needs a CUDA GPU; none is visible here")
    batch = load_catalog().batching(entry, on_gpu=True).max_batch_size
    work = workdir / f"{entry.name}-export"
    work.mkdir()
    weights = shutil.copy2(fetched.path.parent / fetched.entry, work)
    try:
        engine = Path(YOLO(str(weights)).export(format="engine", quantize=16, dynamic=True, batch=batch, device=0))
    except Exception as exc:
        raise SourceUnavailable(f"TensorRT export failed: {exc}".splitlines()[0]) from None
    return Fetched(path=engine, entry=engine.name, source=fetched.source)


def stored(name: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(f"{name}:latest")
    except NotFound:
        return None


def import_model(entry: ModelEntry, *, force: bool = False, progress: Callable[[str], None] = log.info) -> ImportOutcome:
    reasons = []
    with tempfile.TemporaryDirectory(prefix="yolo-toys-import-") as tmp:
        for source in entry.sources:
            try:
                progress(f"{entry.name}: trying {source.describe()}")
                fetched = (
                    _fetch_local(entry, source) if source.local is not None else _fetch_hub(entry, source, Path(tmp))
                )
                if entry.export is not None:
                    progress(f"{entry.name}: exporting to {entry.export}")
                    fetched = _export(entry, fetched, Path(tmp))
                digests = sha256_tree(fetched.path)
                digest = combined_digest(digests)
                existing = stored(entry.name)
                if existing is not None and not force and existing.info.metadata.get("sha256") == digest:
                    return ImportOutcome(entry.name, "up to date", source.describe(), str(existing.tag))
                progress(f"{entry.name}: checking weights")
                inspected = _inspect(entry, fetched.path.parent / fetched.entry)
                progress(f"{entry.name}: copying into the model store")
                with bentoml.models.create(
                    entry.name,
                    labels={"family": entry.family, "task": entry.task.value},
                    metadata={
                        "family": entry.family,
                        "task": entry.task.value,
                        "source": source.describe(),
                        "entry": fetched.entry,
                        "sha256": digest,
                        "files_sha256": digests,
                        **inspected,
                    },
                ) as model:
                    destination = Path(model.path) / fetched.path.name
                    if fetched.path.is_dir():
                        shutil.copytree(fetched.path, destination)
                    else:
                        shutil.copy2(fetched.path, destination)
                return ImportOutcome(entry.name, "imported", source.describe(), str(model.tag))
            except SourceUnavailable as exc:
                reasons.append(f"{source.describe()}: {exc}")
    return ImportOutcome(entry.name, "skipped", "; ".join(reasons))
