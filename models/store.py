"""Put catalog models into the BentoML model store, and find them there.

Each stored model holds the weights exactly as obtained (a file, or a whole export folder) plus
metadata: family, task, class names, source, the entry path to load and sha256 digests.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from models.catalog import ModelEntry, Source, load_catalog, weights_dir
from models.state import bentoml_home, file_lock
from runners.family import Family, SourceUnavailable

log = logging.getLogger("yolo_toys.models")

__all__ = ["ImportOutcome", "SourceUnavailable", "StoredVersion", "import_model", "store_upload", "stored", "versions"]


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


def _fetch(entry: ModelEntry, family: Family, source: Source, workdir: Path, progress: Callable[[str], None]) -> Fetched:
    """The weights of one source, as the family stores them (an export, say)."""
    if source.local is not None:
        fetched = _fetch_local(entry, source)
    else:
        path = family.download(entry, str(source.hub), workdir)
        fetched = Fetched(path=path, entry=path.name, source=source)
    weights = fetched.path.parent / fetched.entry
    prepared = family.prepare(entry, weights, workdir)
    if prepared != weights:
        progress(f"{entry.name}: prepared {prepared.name}")
        fetched = Fetched(path=prepared, entry=prepared.name, source=source)
    return fetched


def _store(entry: ModelEntry, fetched: Fetched, digests: dict[str, str], inspected: dict) -> bentoml.Model:
    """A new model-store version holding the weights as obtained, with what the import learned."""
    metadata = {"family": entry.family, "task": entry.task.value, "source": fetched.source.describe(),
                "entry": fetched.entry, "sha256": combined_digest(digests), "files_sha256": digests, **inspected}  # fmt: skip
    with bentoml.models.create(entry.name, labels={"family": entry.family, "task": entry.task.value},
                               metadata=metadata) as model:  # fmt: skip
        destination = Path(model.path) / fetched.path.name
        if fetched.path.is_dir():
            shutil.copytree(fetched.path, destination)
        else:
            shutil.copy2(fetched.path, destination)
    return model


def stored(name: str) -> bentoml.Model | None:
    try:
        return bentoml.models.get(f"{name}:latest")
    except NotFound:
        return None


@dataclass(frozen=True)
class StoredVersion:
    """One version of a model in the store: numbered from 1 in the order the versions were stored."""

    number: int
    model: bentoml.Model

    @property
    def weights(self) -> Path:
        return Path(self.model.path) / self.model.info.metadata["entry"]

    @property
    def source(self) -> str:
        return str(self.model.info.metadata.get("source", ""))

    @property
    def sha256(self) -> str:
        return str(self.model.info.metadata.get("sha256", ""))


def versions(name: str) -> list[StoredVersion]:
    """Every stored version of `name`, oldest first. BentoML's own versions are random strings; the numbers
    here are what requests (`model=name:2`), the version policy and the management API use."""
    try:
        found = bentoml.models.list(name)
    except NotFound:
        return []
    ordered = sorted(found, key=lambda m: m.info.creation_time)
    return [StoredVersion(number, model) for number, model in enumerate(ordered, 1)]


def store_upload(entry: ModelEntry, family: Family, path: Path, load: str) -> tuple[StoredVersion, bool]:
    """An uploaded artifact (models/artifacts.py) as a new version, with the metadata and sha256 of an import,
    and whether it is new: a version with the same sha256 is that version. The family's `inspect` loads it
    once first, so weights that do not load are never stored."""
    [source] = entry.sources
    digests = sha256_tree(path)
    # One registration at a time per store: replicas that share a store (and get the same upload) must
    # find each other's version instead of storing it twice.
    with file_lock(bentoml_home() / "models" / ".yolo-toys-register.lock"):
        same = next((v for v in versions(entry.name) if v.sha256 == combined_digest(digests)), None)
        if same is not None:
            return same, False
        inspected = family.inspect(entry, path.parent / load)
        model = _store(entry, Fetched(path=path, entry=load, source=source), digests, inspected)
    return next(v for v in versions(entry.name) if v.model.tag == model.tag), True


def import_model(
    entry: ModelEntry, family: Family | None = None, *, force: bool = False, progress: Callable[[str], None] = log.info
) -> ImportOutcome:
    """Try the entry's sources in order; the first that works is stored, unless the store has it already."""
    family = family or load_catalog().family_module(entry.family)
    reasons = []
    with tempfile.TemporaryDirectory(prefix="yolo-toys-import-") as tmp:
        for source in entry.sources:
            try:
                progress(f"{entry.name}: trying {source.describe()}")
                fetched = _fetch(entry, family, source, Path(tmp), progress)
                digests = sha256_tree(fetched.path)
                existing = stored(entry.name)
                if existing is not None and not force and existing.info.metadata.get("sha256") == combined_digest(digests):
                    return ImportOutcome(entry.name, "up to date", source.describe(), str(existing.tag))
                progress(f"{entry.name}: checking weights")
                inspected = family.inspect(entry, fetched.path.parent / fetched.entry)
                progress(f"{entry.name}: copying into the model store")
                model = _store(entry, fetched, digests, inspected)
                return ImportOutcome(entry.name, "imported", source.describe(), str(model.tag))
            except SourceUnavailable as exc:
                reasons.append(f"{source.describe()}: {exc}")
    return ImportOutcome(entry.name, "skipped", "; ".join(reasons))
