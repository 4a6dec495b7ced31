"""Settings read from the environment: once, on first use, never at import.

Every `YOLO_TOYS_*` variable the service reads is here. Tests that change the environment call
`settings.cache_clear()` afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = PROJECT_ROOT / "models" / "catalog.yaml"


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    return int(value) if value else default


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    value = environ.get(name)
    return float(value) if value else default


def _choice(environ: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = environ.get(name) or choices[0]
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in environ.get(name, "").split(",") if item.strip())


def parse_replicas(value: str) -> dict[str, list[str]]:
    """`family=URL[,URL...]` entries separated by spaces or semicolons."""
    replicas: dict[str, list[str]] = {}
    for entry in value.replace(";", " ").split():
        family, sep, urls = entry.partition("=")
        if not sep or not urls.strip(","):
            raise ValueError(f"YOLO_TOYS_REPLICAS: {entry!r} is not family=URL[,URL...]")
        replicas[family] = [u.strip() for u in urls.split(",") if u.strip()]
    return replicas


@dataclass(frozen=True)
class Settings:
    max_upload_bytes: int = 20 * 1024 * 1024  # YOLO_TOYS_MAX_UPLOAD_BYTES: one uploaded image
    max_pixels: int = 40_000_000  # YOLO_TOYS_MAX_PIXELS: decoded width x height
    # YOLO_TOYS_MAX_REQUEST_IMAGES: images of one `POST /batch`; all of them share the one request body
    # limit (YOLO_TOYS_MAX_UPLOAD_BYTES + 1 MiB, yolo_toys/guards.py), as one image of another route does.
    max_request_images: int = 64
    max_streams: int = 64  # YOLO_TOYS_MAX_STREAMS: open WebSocket streams per front process
    # YOLO_TOYS_MAX_FRAME_BYTES: one WebSocket frame; below uvicorn's 16 MiB message limit, so an
    # oversize frame gets an error message instead of a closed connection.
    max_frame_bytes: int = 8 * 1024 * 1024
    # YOLO_TOYS_BODY_TIMEOUT_S + YOLO_TOYS_BODY_S_PER_MIB x the declared size: the time a client has
    # to send its request body; then the answer is 408 and the connection is closed.
    body_timeout_s: float = 10.0
    body_s_per_mib: float = 3.0
    max_uploads: int = 64  # YOLO_TOYS_MAX_UPLOADS: request bodies being received at once, per front process
    # YOLO_TOYS_RUNNER_PROBE_TIMEOUT_S: a runner that does not answer its /readyz within this twice in
    # a row (probed once a second), or once after a call's connection broke, is down: 503 until it is back.
    runner_probe_timeout_s: float = 2.0
    # YOLO_TOYS_REPLICAS: several servers of a runner family, `family=URL[,URL...]` separated by spaces;
    # a `dns+http://NAME:PORT` URL is every address NAME resolves to (yolo_toys/replicas.py).
    replicas: dict[str, list[str]] = field(default_factory=dict)
    # YOLO_TOYS_READY_WHEN: the front's /readyz is 200 when `all` runner families have a ready replica
    # (one server: nothing to route around), or `any` (a cluster: a front whose one family is down still
    # serves the others, and answers that family's calls 503 with Retry-After, instead of leaving the
    # load balancer with no front at all).
    ready_when: str = "all"
    retry_after_s: int = 5  # YOLO_TOYS_RETRY_AFTER_S: the Retry-After of a 503
    catalog: Path = DEFAULT_CATALOG  # YOLO_TOYS_CATALOG
    weights: Path | None = None  # YOLO_TOYS_WEIGHTS, else ../shared/weights beside the project
    # YOLO_TOYS_API_KEYS: comma-separated; with any, every path but the health probes and the open
    # paths needs one (yolo_toys/access.py). Kept out of repr so that a logged Settings shows none.
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # YOLO_TOYS_ADMIN_KEYS: comma-separated keys of the model-management routes (POST /models...); without
    # any those routes answer 403. An admin key is also accepted wherever an API key is.
    admin_keys: tuple[str, ...] = field(default=(), repr=False)
    allow_pickle: bool = False  # YOLO_TOYS_ALLOW_PICKLE=1: accept `.pt` uploads (loading a PyTorch pickle runs its code)
    max_artifact_bytes: int = 2 * 1024**3  # YOLO_TOYS_MAX_ARTIFACT_BYTES: one uploaded model artifact (and its unpacked files)
    state_dir: Path | None = None  # YOLO_TOYS_STATE_DIR: the models' desired state (models/state.py); default: in BENTOML_HOME
    # YOLO_TOYS_MODELS_REFRESH_S: how old the front's view of the runners' models may get before a request
    # refreshes it (what another front or worker was asked meanwhile); GET /models always asks.
    models_refresh_s: float = 2.0
    cors_origins: tuple[str, ...] = ()  # YOLO_TOYS_CORS_ORIGINS: browser origins allowed cross-origin and on the WebSocket
    open_paths: tuple[str, ...] = ()  # YOLO_TOYS_OPEN_PATHS: paths (and what is under them) that need no key
    # What one image may make a model's preprocessing allocate (docs/limits.md, measured by `make bench-limits`).
    # YOLO_TOYS_MAX_INPUT_ASPECT: the most elongated image a model's resize takes as it is; beyond it a
    # centre-cropping classifier gets the image's central part and an aspect-keeping model (Depth
    # Anything) a smaller copy, whose answers stay in the image's coordinates.
    max_input_aspect: float = 2.0
    max_imgsz: int = 1280  # YOLO_TOYS_MAX_IMGSZ: the largest `imgsz` a request may ask of an Ultralytics model
    max_mask_pixels: int = 300 * 640 * 640  # YOLO_TOYS_MAX_MASK_PIXELS: max_det x imgsz² of an instance segmentation
    # YOLO_TOYS_MAX_CLASS_SCORES: classes x pixels of a semantic segmentation's upsampled scores; the map
    # of a larger image is made at a lower resolution and its outlines scaled to the image.
    max_class_scores: int = 1 << 27
    # YOLO_TOYS_MAX_ROTATED_NMS: candidates of a rotated (OBB) NMS, whose cost is their count squared.
    max_rotated_nms: int = 3000
    # YOLO_TOYS_LEAN_PATH=0: OpenVINO and ONNX exports go through Ultralytics' `predict` instead of runners/exported.py.
    lean_path: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        weights = environ.get("YOLO_TOYS_WEIGHTS")
        shared = PROJECT_ROOT.parent / "shared" / "weights"
        return cls(
            max_upload_bytes=_int(environ, "YOLO_TOYS_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            max_pixels=_int(environ, "YOLO_TOYS_MAX_PIXELS", cls.max_pixels),
            max_request_images=_int(environ, "YOLO_TOYS_MAX_REQUEST_IMAGES", cls.max_request_images),
            max_streams=_int(environ, "YOLO_TOYS_MAX_STREAMS", cls.max_streams),
            max_frame_bytes=_int(environ, "YOLO_TOYS_MAX_FRAME_BYTES", cls.max_frame_bytes),
            body_timeout_s=_float(environ, "YOLO_TOYS_BODY_TIMEOUT_S", cls.body_timeout_s),
            body_s_per_mib=_float(environ, "YOLO_TOYS_BODY_S_PER_MIB", cls.body_s_per_mib),
            max_uploads=_int(environ, "YOLO_TOYS_MAX_UPLOADS", cls.max_uploads),
            runner_probe_timeout_s=_float(environ, "YOLO_TOYS_RUNNER_PROBE_TIMEOUT_S", cls.runner_probe_timeout_s),
            replicas=parse_replicas(environ.get("YOLO_TOYS_REPLICAS", "")),
            ready_when=_choice(environ, "YOLO_TOYS_READY_WHEN", ("all", "any")),
            retry_after_s=_int(environ, "YOLO_TOYS_RETRY_AFTER_S", cls.retry_after_s),
            catalog=Path(environ.get("YOLO_TOYS_CATALOG") or DEFAULT_CATALOG),
            weights=Path(weights).expanduser().resolve() if weights else (shared if shared.is_dir() else None),
            api_keys=_list(environ, "YOLO_TOYS_API_KEYS"),
            admin_keys=_list(environ, "YOLO_TOYS_ADMIN_KEYS"),
            allow_pickle=environ.get("YOLO_TOYS_ALLOW_PICKLE", "") in ("1", "true", "yes"),
            max_artifact_bytes=_int(environ, "YOLO_TOYS_MAX_ARTIFACT_BYTES", cls.max_artifact_bytes),
            state_dir=Path(environ["YOLO_TOYS_STATE_DIR"]) if environ.get("YOLO_TOYS_STATE_DIR") else None,
            models_refresh_s=_float(environ, "YOLO_TOYS_MODELS_REFRESH_S", cls.models_refresh_s),
            cors_origins=_list(environ, "YOLO_TOYS_CORS_ORIGINS"),
            open_paths=_list(environ, "YOLO_TOYS_OPEN_PATHS"),
            max_input_aspect=_float(environ, "YOLO_TOYS_MAX_INPUT_ASPECT", cls.max_input_aspect),
            max_imgsz=_int(environ, "YOLO_TOYS_MAX_IMGSZ", cls.max_imgsz),
            max_mask_pixels=_int(environ, "YOLO_TOYS_MAX_MASK_PIXELS", cls.max_mask_pixels),
            max_class_scores=_int(environ, "YOLO_TOYS_MAX_CLASS_SCORES", cls.max_class_scores),
            max_rotated_nms=_int(environ, "YOLO_TOYS_MAX_ROTATED_NMS", cls.max_rotated_nms),
            lean_path=environ.get("YOLO_TOYS_LEAN_PATH", "1") != "0",
        )


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()
