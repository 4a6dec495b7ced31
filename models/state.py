"""The desired state of the served models, on disk: what the management API asked for, kept across restarts.

A management call lands on one worker process of one runner; the other workers (and the processes
that start later) learn it from this file, which each worker polls (runners/serving.py). The file
holds only what was asked: models registered at runtime, and per model the versions to keep loaded,
the default version and a traffic split. What each worker actually has is in its own report
(`workers/<family>-<pid>.json`), which `status` reads to say whether every worker has converged.

Where: `$YOLO_TOYS_STATE_DIR`, else `yolo_toys/` in the BentoML home (beside the model store, whose
versions it refers to). A Kubernetes pod keeps it across container restarts only on a volume.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, Field

from models.catalog import ModelEntry
from yolo_toys.schemas import VersionState
from yolo_toys.settings import settings


class ModelWish(BaseModel):
    """What was asked of one model; `None` fields follow the catalog (the version policy, the newest version)."""

    versions: list[int] | None = Field(None, description="The versions to keep loaded; none: the version policy.")
    default: int | None = None
    split: dict[int, int] | None = None
    changed: int = Field(0, description="The generation this wish last changed in: a failed load is retried after it.")


class Desired(BaseModel):
    generation: int = 0
    registered: dict[str, ModelEntry] = Field(default_factory=dict)
    models: dict[str, ModelWish] = Field(default_factory=dict)

    def wish(self, name: str) -> ModelWish:
        return self.models.get(name) or ModelWish()


class SlotReport(BaseModel):
    state: VersionState
    reason: str | None = None
    load_s: float | None = None
    memory_bytes: int | None = None


class WorkerReport(BaseModel):
    """What one worker process serves now: per model, per version, and the version it routes to."""

    pid: int
    generation: int
    versions: dict[str, dict[int, SlotReport]] = Field(default_factory=dict)
    default: dict[str, int] = Field(default_factory=dict)


def bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def state_dir() -> Path:
    explicit = settings().state_dir
    return explicit if explicit is not None else bentoml_home() / "yolo_toys"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path`, shared by every process of this machine that uses it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class StateFile:
    """`state.json` (read-modify-write under an advisory lock, replaced atomically) and the workers' reports."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or state_dir()
        self.path = self.directory / "state.json"
        self._seen: tuple[int, int] | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def changed(self) -> bool:
        """Whether the file changed since this object last read it (one `stat`)."""
        return self._stamp() != self._seen

    def read(self) -> Desired:
        self._seen = self._stamp()
        try:
            return Desired.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return Desired()

    def update(self, change: Callable[[Desired], None]) -> Desired:
        """Apply `change` to the current desired state and write it as the next generation."""
        with file_lock(self.directory / "state.lock"):
            desired = self.read()
            change(desired)
            desired.generation += 1
            _write(self.path, desired.model_dump_json(indent=1).encode())
        return desired

    # ---- the workers' reports ----------------------------------------------------------------------

    def report(self, family: str, report: WorkerReport) -> None:
        _write(self.directory / "workers" / f"{family}-{report.pid}.json", report.model_dump_json().encode())

    def reports(self, family: str) -> list[WorkerReport]:
        """The reports of the family's live workers on this machine; a dead worker's report is removed."""
        found = []
        for path in sorted((self.directory / "workers").glob(f"{family}-*.json")):
            try:
                report = WorkerReport.model_validate_json(path.read_bytes())
            except (OSError, ValueError):
                continue  # being replaced, or gone
            if _alive(report.pid):
                found.append(report)
            else:
                path.unlink(missing_ok=True)
        return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)

