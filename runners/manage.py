"""Model management in a runner: each API action as a change of the desired state (models/state.py),
registration of an uploaded artifact, and the wait until every worker of this runner has the result.

The worker a call lands on writes the change, reconciles itself, and answers once every live worker
of the runner reports the new generation with nothing left loading (or the call's timeout passes).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from models.artifacts import unpack
from models.catalog import ModelEntry, Source
from models.state import Desired, ModelWish
from models.store import SourceUnavailable, store_upload
from runners.serving import Served
from yolo_toys.errors import ServiceError
from yolo_toys.schemas import ManageResult, ModelAction, RegisterJob
from yolo_toys.settings import settings

Change = Callable[[Desired], None]


def _load(wish: ModelWish, target: set[int], action: ModelAction, version: int, current: int | None) -> None:
    target.add(version)
    if action.default:
        _default(wish, target, action, version, current)
    else:  # another version loaded beside the default does not take its place
        wish.default = wish.default or current


def _unload(wish: ModelWish, target: set[int], action: ModelAction, version: int | None, current: int | None) -> None:
    if version is None:
        target.clear()
        wish.default, wish.split = None, None
        return
    target.discard(version)
    wish.default = None if wish.default == version else wish.default or (current if current != version else None)
    if wish.split and version in wish.split:
        wish.split = {v: w for v, w in wish.split.items() if v != version}
        wish.split = wish.split if len(wish.split) > 1 else None


def _default(wish: ModelWish, target: set[int], action: ModelAction, version: int, current: int | None) -> None:
    """An upgrade: the new default is loaded and warmed, the route switches, then the previous one goes."""
    target.add(version)
    if current not in (None, version) and not action.keep_previous:
        target.discard(current)
    wish.default, wish.split = version, None


def _split(wish: ModelWish, target: set[int], action: ModelAction, version: int | None, current: int | None) -> None:
    if action.weights is None:
        wish.split = None
        return
    target.update(action.weights)
    wish.default = wish.default or current
    wish.split = dict(action.weights)


ACTIONS = {"load": _load, "unload": _unload, "default": _default, "split": _split}


def plan(action: ModelAction, served: Served) -> tuple[Change, int | None]:
    """The change `action` makes to the desired state, and the version it concerns; 4xx for what cannot be."""
    name = action.name
    if name not in served.entries:
        raise ServiceError(404, "unknown model", f"{name!r} is not a {served.family.name} model; see GET /models")
    stored = sorted(served.slots.get(name, {}))
    asked = [action.version] if action.version is not None else list(action.weights or {})
    if unknown := [v for v in asked if v not in stored]:
        raise ServiceError(404, "unknown version", f"{name} has no version {unknown[0]}; it has {stored}")
    if action.weights is not None and (not action.weights or min(action.weights.values()) < 0 or not sum(action.weights.values())):
        raise ServiceError(422, "invalid split", "weights are one or more versions with weights >= 0 and a positive sum")
    version = action.version
    if action.action == "load" and version is None:
        version = served.default.get(name) or (stored[-1] if stored else None)
        if version is None:
            raise ServiceError(404, "model not loaded", served.why(name))
    current = served.default.get(name)

    def change(desired: Desired) -> None:
        wish = desired.models.setdefault(name, ModelWish())
        target = set(served.target(name, wish))
        ACTIONS[action.action](wish, target, action, version, current)
        wish.versions, wish.changed = sorted(target), desired.generation + 1

    return change, version


async def apply(served: Served, change: Change, name: str, timeout_s: float) -> Desired:
    """Write the change, reconcile this worker, and wait for every worker of the runner."""
    deadline = time.monotonic() + timeout_s
    desired = await asyncio.to_thread(served.state.update, change)
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.to_thread(served.reconcile, desired)), timeout_s)
        while not _converged(served, desired.generation):
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.1)
    except TimeoutError:
        raise ServiceError(504, "timed out", f"not every worker reached the requested state of {name} within "
                           f"{timeout_s:g} s; it goes on: see GET /models/{name}") from None  # fmt: skip
    return desired


def _converged(served: Served, generation: int) -> bool:
    reports = served.state.reports(served.family.name)
    return all(r.generation >= generation and all(s.state != "loading" for v in r.versions.values() for s in v.values())
               for r in reports)  # fmt: skip


def result(served: Served, name: str, version: int | None, message: str, check: bool = True) -> ManageResult:
    """The model as it now is; a version asked to load that failed is a 422 with the reason."""
    detail = served.detail(name, served.state.reports(served.family.name))
    info = next((v for v in detail.versions if v.version == version), None)
    if check and info is not None and info.state == "failed":
        raise ServiceError(422, "load failed", f"{name} version {version}: {info.reason}; the serving state is unchanged")
    return ManageResult(model=detail, version=version, message=message)


async def act(served: Served, action: ModelAction) -> ManageResult:
    await asyncio.to_thread(served.refresh)
    change, version = plan(action, served)
    await apply(served, change, action.name, action.timeout_s)
    what = f"version {version}" if version is not None else "every version"
    done = {"load": f"{what} loaded", "unload": f"{what} unloaded", "default": f"version {version} is the default",
            "split": "traffic split set" if action.weights else "traffic split cleared"}[action.action]  # fmt: skip
    return result(served, action.name, version, f"{action.name}: {done}", check=action.action != "unload")


# ---- registration -------------------------------------------------------------------------------------


def entry_for(job: RegisterJob, served: Served) -> ModelEntry:
    """The model the upload is a version of: an existing one (same family and task), or a new entry."""
    source = Source(upload=job.filename)
    existing = served.entries.get(job.name) or served.catalog.get(job.name)
    if existing is not None:
        if existing.family != job.family or existing.task != job.task:
            raise ServiceError(409, "model exists", f"{job.name} is a {existing.family} {existing.task.value} model; "
                               "a new version must have the same family and task")  # fmt: skip
        return existing.model_copy(update={"sources": [source]})
    try:
        entry = ModelEntry(name=job.name, family=job.family, task=job.task, hf_task=job.hf_task,
                           description=job.description, sources=[source])  # fmt: skip
        served.family.check_entry(entry)
    except (ValidationError, ValueError) as exc:
        raise ServiceError(422, "invalid model", str(exc).splitlines()[0] if not isinstance(exc, ValidationError)
                           else exc.errors()[0]["msg"]) from None  # fmt: skip
    return entry


def _store(job: RegisterJob, entry: ModelEntry, served: Served) -> tuple[int, bool]:
    """Unpack, check by loading once, and store: nothing reaches the store (or the serving state) otherwise."""
    limits = settings()
    with tempfile.TemporaryDirectory(prefix="yolo-toys-upload-") as tmp:
        upload = Path(tmp) / "upload"
        upload.write_bytes(job.artifact)
        (Path(tmp) / "unpacked").mkdir()
        unpacked = unpack(upload, job.filename, job.family, job.name, Path(tmp) / "unpacked",
                          allow_pickle=limits.allow_pickle, max_unpacked_bytes=2 * limits.max_artifact_bytes)  # fmt: skip
        try:
            stored, new = store_upload(entry, served.family, unpacked.path, unpacked.entry)
        except SourceUnavailable as exc:
            raise ServiceError(422, "artifact does not fit", str(exc)) from None
        except Exception as exc:
            detail = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ServiceError(422, "cannot load artifact", f"the {unpacked.kind} artifact did not load: {detail}") from None
    return stored.number, new


async def register(served: Served, job: RegisterJob) -> ManageResult:
    entry = entry_for(job, served)
    version, new = await asyncio.to_thread(_store, job, entry, served)
    current = served.default.get(job.name)
    registered = served.catalog.get(job.name) is None

    def change(desired: Desired) -> None:
        if registered:
            desired.registered[job.name] = entry.model_copy(update={"default": False})
        wish = desired.models.setdefault(job.name, ModelWish())
        target = set(served.target(job.name, wish)) if job.name in served.entries else set()
        if job.default:
            _default(wish, target, ModelAction(action="default", name=job.name), version, current)
        elif job.load:
            _load(wish, target, ModelAction(action="load", name=job.name), version, current)
        wish.versions, wish.changed = sorted(target), desired.generation + 1

    await apply(served, change, job.name, job.timeout_s)
    what = "stored as" if new else "already stored (same sha256) as"
    return result(served, job.name, version, f"{job.name}: {what} version {version}", check=job.load or job.default)
