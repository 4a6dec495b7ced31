"""What one runner worker process serves: every stored version of its family's models, their states,
and where a request goes (the default version, or a traffic split).

The desired state (models/state.py) says what was asked; `reconcile` makes this process match it,
always in the same order, so that no request fails on the way: load what is wanted (the new default
first), switch the route when the new version is ready, then unload what is no longer wanted. A
version that fails to load leaves the route where it was. A batch that already took the old version
finishes on it: unloading only drops the route's reference, and the memory goes when the batch does.

Every worker polls the desired state (`Poller`) and writes what it has to its report, so that any
worker can say whether all of them have converged.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from models.catalog import Catalog, ModelEntry
from models.state import Desired, ModelWish, SlotReport, StateFile, WorkerReport
from models.store import StoredVersion, versions
from runners.family import Family, LoadedModel
from yolo_toys.errors import ServiceError
from yolo_toys.schemas import ModelDetail, VersionInfo, VersionState

log = logging.getLogger("yolo_toys.runners")

POLL_S = 0.5  # how often a worker looks at the desired state (one stat() when nothing changed)
EVICTED = "evicted (least recently used, max_loaded_models); loads again on its next request"
WAITING = "not loaded yet (max_loaded_models); loads on its first request"


def release_memory() -> None:
    """Give freed model memory back to the OS: Python's cycles, CUDA's cache, glibc's free lists."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's most for it on 64-bit
TRIM_THRESHOLD = 256 * 2**20


def keep_freed_memory() -> None:
    """Keep the blocks a request frees in glibc's heap for the next request, instead of handing them
    back to the OS at once.

    glibc unmaps a freed block over its mmap threshold and trims the heap's top over its trim
    threshold, so each request page-faulted its decoded photo (2.6 MB for bus.jpg) and its model
    input and outputs in again: bus.jpg's decode took 3.4 ms after a lean-path inference instead of
    2.6 ms in-process, and 4.3 ms instead of 2.3 ms served on one core. The heap now keeps up to
    TRIM_THRESHOLD freed at its top; unloading a model still gives everything back (`release_memory`).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):  # not glibc
        pass


def _memory() -> int:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return int(torch.cuda.memory_allocated())
    return int(psutil.Process().memory_info().rss)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


@dataclass(eq=False)
class Slot:
    """One stored version in this process."""

    stored: StoredVersion
    state: VersionState = "unloaded"
    reason: str | None = None
    model: LoadedModel | None = None
    load_s: float | None = None
    memory_bytes: int | None = None
    used: float = 0.0  # when a request last took it (monotonic): the LRU order
    failed_at: int = -1  # the desired-state generation it failed in: retried only when the model's wish changes
    detail: dict[str, Any] | None = None  # what GET /models says of it, kept from its last load

    def report(self) -> SlotReport:
        return SlotReport(state=self.state, reason=self.reason, load_s=self.load_s, memory_bytes=self.memory_bytes)


def _describe(m: LoadedModel) -> dict[str, Any]:
    return {"source": m.source, "format": m.format, "device": m.device, "half": m.half, "imgsz": m.imgsz,
            "fixed_imgsz": m.fixed_imgsz, "open_vocabulary": m.open_vocabulary, "labels": m.labels,
            "label_count": len(m.labels)}  # fmt: skip


class Served:
    """The versions of one family's models in this worker, and the routing tables the inference thread reads.

    The inference thread only reads `default`, `splits` and a slot's `model` (each replaced whole), so
    it never waits for a load; loads and unloads happen under `_lock`, one at a time.
    """

    def __init__(self, family: Family, catalog: Catalog, state: StateFile, release: Callable[[], None],
                 cap: int | None = None) -> None:  # fmt: skip
        self.family, self.catalog, self.state, self.release, self.cap = family, catalog, state, release, cap
        self.entries: dict[str, ModelEntry] = {}
        self.slots: dict[str, dict[int, Slot]] = {}
        self.targets: dict[str, set[int]] = {}
        self.default: dict[str, int] = {}
        self.splits: dict[str, tuple[list[int], list[int]]] = {}
        self.desired = Desired(generation=-1)
        self.on_gpu = False
        self._lock = threading.RLock()

    # ---- the desired state, made real -------------------------------------------------------------

    def reconcile(self, desired: Desired) -> None:
        with self._lock:
            self.desired = desired
            self._refresh(desired)
            for name in self.entries:
                self._reconcile_model(name, desired.wish(name))
            self.on_gpu = any(s.model.device.startswith("cuda") for s in self._loaded())
            self._report()

    def _refresh(self, desired: Desired) -> None:
        """The family's entries (the catalog's and those registered at runtime) and every stored version."""
        entries = {e.name: e for e in self.catalog.family(self.family.name)}
        entries.update({n: e for n, e in desired.registered.items() if e.family == self.family.name})
        slots = dict(self.slots)  # replaced whole: `status` may be reading the old ones in another thread
        for name in entries:
            known = dict(slots.get(name, {}))
            for stored in versions(name):
                known.setdefault(stored.number, Slot(stored))
            slots[name] = known
        self.entries, self.slots = entries, slots

    def refresh(self) -> None:
        """Look at the store again (a version imported by `python -m models import` meanwhile)."""
        with self._lock:
            self._refresh(self.desired)

    def target(self, name: str, wish: ModelWish) -> list[int]:
        """The versions to keep loaded: those asked for, else the catalog's version policy."""
        stored = sorted(self.slots.get(name, {}))
        chosen = wish.versions if wish.versions is not None else self.entries[name].version_policy.select(stored)
        return [v for v in chosen if v in stored]

    def _reconcile_model(self, name: str, wish: ModelWish) -> None:
        slots, target = self.slots[name], self.target(name, wish)
        self.targets[name] = set(target)
        wanted = wish.default if wish.default in target else (max(target) if target else None)
        for version in sorted(target, key=lambda v: v != wanted):  # the default first: it may evict to get in
            slot = slots[version]
            if slot.model is not None or (slot.state == "failed" and slot.failed_at >= wish.changed):
                continue
            if version == wanted or self._room():
                self._load(name, slot, evict=version == wanted)
            else:
                slot.reason = WAITING
        self._route(name, wanted, wish)
        keep = {self.default.get(name), *self.splits.get(name, ([], []))[0]}
        for version, slot in slots.items():
            if slot.model is not None and version not in target and version not in keep:
                self._unload(slot, "unloaded by request")

    def _route(self, name: str, wanted: int | None, wish: ModelWish) -> None:
        """Switch to `wanted` once it is ready (or loadable on demand); a failed one leaves the route as it was."""
        slots, current = self.slots[name], self.default.get(name)
        serving = current in slots and slots[current].state == "ready"
        if wanted is None:
            self.default.pop(name, None)
        elif slots[wanted].state == "ready" or (slots[wanted].state != "failed" and not serving):
            self.default[name] = wanted
        elif not serving:  # the wanted version failed and nothing serves: the newest that is ready, if any
            ready = [v for v in self.targets[name] if slots[v].state == "ready"]
            if ready:
                self.default[name] = max(ready)
            else:
                self.default.pop(name, None)
        split = {v: w for v, w in (wish.split or {}).items() if v in slots and slots[v].state != "failed" and w > 0}
        if split:
            self.splits[name] = (list(split), list(split.values()))
        else:
            self.splits.pop(name, None)

    # ---- loading and unloading ---------------------------------------------------------------------

    def _loaded(self) -> list[Slot]:
        return [s for slots in self.slots.values() for s in slots.values() if s.model is not None]

    def _room(self) -> bool:
        return self.cap is None or len(self._loaded()) < self.cap

    def _load(self, name: str, slot: Slot, evict: bool) -> None:
        if evict and self.cap is not None:
            loaded = sorted(self._loaded(), key=lambda s: s.used)
            for victim in loaded[: max(0, len(loaded) - self.cap + 1)]:
                self._unload(victim, EVICTED)
        slot.state, slot.reason = "loading", None
        self._report()
        before, started = _memory(), time.perf_counter()
        try:
            model = self.family.load(self.entries[name], slot.stored.weights)
        except Exception as exc:
            slot.state, slot.reason, slot.failed_at = "failed", _first_line(exc), self.desired.generation
            log.warning("%s version %d failed to load: %s", name, slot.stored.number, slot.reason)
            return
        model.source, model.version = slot.stored.source, slot.stored.number
        slot.load_s, slot.memory_bytes = time.perf_counter() - started, max(0, _memory() - before)
        slot.model, slot.state, slot.used, slot.detail = model, "ready", time.monotonic(), _describe(model)
        log.info("loaded %s version %d (%s) in %.1f s, +%.0f MiB", name, slot.stored.number, model.describe(),
                 slot.load_s, slot.memory_bytes / 2**20)  # fmt: skip

    def _unload(self, slot: Slot, reason: str) -> None:
        slot.model, slot.state, slot.reason = None, "unloaded", reason
        log.info("%s version %d unloaded: %s", slot.stored.model.tag.name, slot.stored.number, reason)
        self.release()

    # ---- the inference thread's side ---------------------------------------------------------------

    def resolve(self, name: str, version: int | None) -> tuple[LoadedModel, float]:
        """The loaded model a job goes to, and the milliseconds spent loading it for this job (a cold start)."""
        slots = self.slots.get(name)
        if slots is None:
            raise ServiceError(404, "model not loaded", f"unknown model {name!r}")
        version = self._pick(name) if version is None else version
        slot = slots.get(version)
        if slot is None:
            raise ServiceError(404, "unknown version", f"{name} has no version {version}; it has {sorted(slots)}")
        model, cold_ms = slot.model, 0.0
        if model is None:
            model, cold_ms = self._on_demand(name, slot)
        slot.used = time.monotonic()
        return model, cold_ms

    def _pick(self, name: str) -> int:
        split = self.splits.get(name)
        if split is not None:
            return random.choices(split[0], split[1])[0]
        version = self.default.get(name)
        if version is None:
            raise ServiceError(404, "model not loaded", self.why(name))
        return version

    def why(self, name: str) -> str:
        """Why a model serves nothing, for a 404 and for `GET /models`."""
        slots = self.slots.get(name, {})
        if not slots:
            return f"not in the model store; run `python -m models import {name}` or register it (POST /models)"
        failed = [f"version {v}: {s.reason}" for v, s in sorted(slots.items()) if s.state == "failed"]
        if failed:
            return "; ".join(failed)
        return f"unloaded; load it with POST /models/{name}/load"

    def _on_demand(self, name: str, slot: Slot) -> tuple[LoadedModel, float]:
        with self._lock:
            if slot.model is None:
                if slot.stored.number not in self.targets.get(name, ()) or slot.state == "failed":
                    raise ServiceError(404, "model not loaded", f"version {slot.stored.number} of {name} is "
                                       f"{slot.state}: {slot.reason or 'load it with POST /models/' + name + '/load'}")  # fmt: skip
                self._load(name, slot, evict=True)
                self._report()
            model = slot.model
        if model is None:
            raise ServiceError(503, "model load failed", f"version {slot.stored.number} of {name}: {slot.reason}")
        return model, (slot.load_s or 0.0) * 1000

    # ---- what the workers report -------------------------------------------------------------------

    def _report(self) -> None:
        versions_ = {name: {v: s.report() for v, s in slots.items()} for name, slots in self.slots.items()}
        self.state.report(self.family.name, WorkerReport(pid=os.getpid(), generation=self.desired.generation,
                                                         versions=versions_, default=dict(self.default)))  # fmt: skip

    def details(self) -> list[ModelDetail]:
        reports = self.state.reports(self.family.name)
        return [self.detail(name, reports) for name in self.entries]

    def detail(self, name: str, reports: list[WorkerReport]) -> ModelDetail:
        entry, slots = self.entries[name], self.slots.get(name, {})
        default, split = self.default.get(name), self.desired.wish(name).split
        shown = [default, *sorted(slots, reverse=True)]
        info = next((slots[v].detail for v in shown if v in slots and slots[v].detail), {})
        total = sum((split or {}).values()) or 1
        infos = [self._version(v, s, reports, name, default, split, total) for v, s in sorted(slots.items())]
        loaded = default is not None or name in self.splits
        return ModelDetail(name=name, family=entry.family, task=entry.task, default=entry.default, loaded=loaded,
                           reason=None if loaded else self.why(name), batching=self.catalog.batching(entry, self.on_gpu),
                           default_version=default, split=split, versions=infos, **info)  # fmt: skip

    def _version(self, version: int, slot: Slot, reports: list[WorkerReport], name: str, default: int | None,
                 split: dict[int, int] | None, total: int) -> VersionInfo:  # fmt: skip
        """The same answer whichever worker gives it: every worker's report in pid order, this one's live."""
        live = {r.pid: r.versions.get(name, {}).get(version) for r in reports}
        live[os.getpid()] = slot.report()
        states = [live[pid] or SlotReport(state="unloaded") for pid in sorted(live)]
        state, reason, workers = aggregate(states)
        weight = round(100 * split[version] / total) if split and version in split else None
        load_s = max((s.load_s for s in states if s.load_s is not None), default=None)
        memory = max((s.memory_bytes for s in states if s.memory_bytes is not None), default=None)
        return VersionInfo(version=version, tag=str(slot.stored.model.tag), state=state, reason=reason,
                           default=version == default and not split, weight=weight, load_s=load_s,
                           memory_bytes=memory, workers=workers, source=slot.stored.source,
                           sha256=slot.stored.sha256)  # fmt: skip


def aggregate(states: list[SlotReport]) -> tuple[VersionState, str | None, str]:
    """One version's state over the workers: failed if any failed, loading if any loads, ready if any serves."""
    for state in ("failed", "loading", "ready", "unloaded"):
        matching = [s for s in states if s.state == state]
        if matching:
            return state, matching[0].reason, f"{len(matching)}/{len(states)}"  # type: ignore[return-value]
    return "unloaded", None, f"0/{len(states)}"


class Poller:
    """A daemon thread that reconciles this worker whenever the desired state file changes."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.thread = threading.Thread(target=self._run, name=f"{served.family.name}-state", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        state = self.served.state
        while True:
            time.sleep(POLL_S)
            try:
                if state.changed():
                    self.served.reconcile(state.read())
            except Exception:  # a bad write by hand, a full disk: keep serving what is loaded
                log.exception("reconciling with %s failed", state.path)
