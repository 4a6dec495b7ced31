"""YOLO-Toys, the front service: the table of contents of the API.

Each image route takes a multipart form (yolo_toys/tasks.py) and answers its task's result schema
(yolo_toys/schemas.py) or `{"error", "detail"}` (yolo_toys/errors.py). Behind the routes
(yolo_toys/front.py) the front checks the upload and the model and hands the still-encoded bytes to
the runner of the model's family (runners/), which batches, decodes once and infers. One runner
service per family of the catalog (models/catalog.yaml). How it fits together: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles

from runners.runner import with_runners
from yolo_toys import openapi, tasks
from yolo_toys import schemas as result
from yolo_toys.access import Access
from yolo_toys.errors import STATUSES, ServiceError
from yolo_toys.front import Front
from yolo_toys.guards import BodyLimit, ErrorBodies, FormsOnly
from yolo_toys.health import Probes
from yolo_toys.schemas import (
    DefaultRequest,
    ErrorBody,
    LoadRequest,
    ManageResult,
    ModelDetail,
    ModelsResponse,
    SplitRequest,
    Task,
    UnloadRequest,
)

extras = FastAPI(title="YOLO-Toys", docs_url=None, redoc_url=None, openapi_url=None)
extras.mount("/demo", StaticFiles(directory=Path(__file__).parent / "demo", html=True, check_dir=False), name="demo")
ERRORS = {404: {"model": ErrorBody, "description": "Unknown model"}}
ADMIN = {status: {"model": ErrorBody, "description": STATUSES[status]} for status in (400, 401, 403, 404, 409, 413, 415, 422, 504)}


@extras.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """A management call's malformed form or JSON: the service's 400 with every field's problem."""
    return ServiceError(400, "invalid request", [f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors()]).response()


@extras.get("/", include_in_schema=False)
async def swagger_page() -> HTMLResponse:
    return openapi.page()


@extras.get("/docs.json", include_in_schema=False)
async def openapi_document() -> JSONResponse:
    return JSONResponse(openapi.document(YoloToys))


@bentoml.asgi_app(extras, path="/")
@bentoml.service(name="yolo_toys", traffic={"timeout": 120}, labels={"project": "yolo-toys"})
@with_runners
class YoloToys(Front):
    @bentoml.api(route="/detect", input_spec=tasks.DetectRequest)
    async def detect(self, **form: Any) -> result.DetectResult:
        """Boxes with score, class id and label. Open-vocabulary models (OWL-ViT) find the `prompts`."""
        return await self.answer(Task.detect, tasks.DetectRequest, form)

    @bentoml.api(route="/segment", input_spec=tasks.SegmentRequest)
    async def segment(self, **form: Any) -> result.SegmentResult:
        """Instances with box, label and mask outline polygons (one per part of the mask)."""
        return await self.answer(Task.segment, tasks.SegmentRequest, form)

    @bentoml.api(route="/pose", input_spec=tasks.PoseRequest)
    async def pose(self, **form: Any) -> result.PoseResult:
        """Persons with box and 17 named keypoints."""
        return await self.answer(Task.pose, tasks.PoseRequest, form)

    @bentoml.api(route="/classify", input_spec=tasks.ClassifyRequest)
    async def classify(self, **form: Any) -> result.ClassifyResult:
        """The top-k labels of the whole image."""
        return await self.answer(Task.classify, tasks.ClassifyRequest, form)

    @bentoml.api(route="/obb", input_spec=tasks.ObbRequest)
    async def obb(self, **form: Any) -> result.ObbResult:
        """Rotated boxes: center, size, angle and the 4 corners."""
        return await self.answer(Task.obb, tasks.ObbRequest, form)

    @bentoml.api(route="/zero_shot_classify", input_spec=tasks.ZeroShotClassifyRequest)
    async def zero_shot_classify(self, **form: Any) -> result.ZeroShotClassifyResult:
        """Scores of the caller's labels for the whole image (CLIP, SigLIP), best first."""
        return await self.answer(Task.zero_shot_classify, tasks.ZeroShotClassifyRequest, form)

    @bentoml.api(route="/caption", input_spec=tasks.CaptionRequest)
    async def caption(self, **form: Any) -> result.CaptionResult:
        """A sentence describing the image, optionally continuing `prefix`."""
        return await self.answer(Task.caption, tasks.CaptionRequest, form)

    @bentoml.api(route="/vqa", input_spec=tasks.VqaRequest)
    async def vqa(self, **form: Any) -> result.VqaResult:
        """The answer to a question about the image."""
        return await self.answer(Task.vqa, tasks.VqaRequest, form)

    @bentoml.api(route="/depth", input_spec=tasks.DepthRequest)
    async def depth(self, **form: Any) -> result.DepthResult:
        """Relative depth map as a base64 16-bit PNG: depth = min + value * scale."""
        return await self.answer(Task.depth, tasks.DepthRequest, form)

    @bentoml.api(route="/annotate", input_spec=tasks.AnnotateRequest)
    async def annotate(self, **form: Any) -> Annotated[Path, ContentType("image/jpeg")]:
        """The image as a JPEG with the task's results drawn on it (a colour map for depth).

        `prompts` are the open-vocabulary prompts or the zero-shot labels; `text` the caption
        prefix or the VQA question.
        """
        return await self.annotated(form)

    @bentoml.api(route="/batch", input_spec=tasks.BatchRequest)
    async def batch(self, **form: Any) -> result.BatchResult:
        """Several images for one task in one request, and in one adaptive batch: each image's result (as
        its own route answers it) or its own `{"error", "detail", "status"}`, in upload order.

        `-F images=@a.jpg -F images=@b.jpg`; the options are `/annotate`'s.
        """
        return await self.answer_batch(form)

    @bentoml.api(route="/stream/video", input_spec=tasks.VideoRequest)
    async def stream_video(self, **form: Any) -> AsyncGenerator[str, None]:
        """Per-frame results of an uploaded video as server-sent events.

        Events: `result` (`frame`, `timestamp_ms`, `result`), then `end`; or `error` at the frame
        where the stream stops (a cut file, a model failure): never a silent truncation.
        """
        return await self.video(form)

    @extras.websocket("/ws/stream")
    async def ws_stream(self, websocket: WebSocket) -> None:
        """Frames in, results out, latest frame wins (docs/streaming.md)."""
        await self.stream(websocket)

    @extras.get("/models", response_model=ModelsResponse, tags=["Service APIs"])
    async def list_models(self) -> ModelsResponse:
        """The catalog: each model's family, task, batching, and whether it is loaded (or why not)."""
        return await self.models_response()

    @extras.get("/models/{name}", response_model=ModelDetail, responses=ERRORS, tags=["Service APIs"])
    async def get_model(self, name: str) -> Any:
        """One model, with its versions and their state in every worker, and its class labels."""
        return await self.model_detail(name)

    # ---- model management: admin keys (YOLO_TOYS_ADMIN_KEYS), docs/models.md ----

    @extras.post("/models", response_model=ManageResult, status_code=201, responses=ADMIN, tags=["Model management"])
    async def register_model(
        self,
        artifact: Annotated[UploadFile, File(description="An ONNX file; a zipped OpenVINO export, TensorRT engine or "
                                             "transformers save_pretrained folder; `.pt` if YOLO_TOYS_ALLOW_PICKLE=1.")],
        name: Annotated[str, Form(pattern=r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$", max_length=63)],
        family: Annotated[str, Form(examples=["ultralytics"])],
        task: Annotated[Task, Form()],
        hf_task: Annotated[str, Form(description="transformers family: the task handler (e.g. `object-detection`).")] = "",
        description: Annotated[str, Form(max_length=500)] = "",
        load: Annotated[bool, Form(description="Load the new version once stored.")] = True,
        default: Annotated[bool, Form(description="Make it the default version (an upgrade).")] = False,
        timeout_s: Annotated[float, Form(ge=1, le=110)] = 100.0,
    ) -> Any:
        """Register a new model, or a new version of one, from an artifact: checked by loading it, then stored."""
        form = {"name": name, "family": family, "task": task, "hf_task": hf_task or None, "description": description,
                "load": load, "default": default, "timeout_s": timeout_s}  # fmt: skip
        return await self.register(form, artifact)

    @extras.post("/models/{name}/load", response_model=ManageResult, responses=ADMIN, tags=["Model management"])
    async def load_model(self, name: str, request: LoadRequest) -> Any:
        """Load a version (the default, else the newest); answers once every worker has it, or it failed."""
        return await self.manage(name, "load", request)

    @extras.post("/models/{name}/unload", response_model=ManageResult, responses=ADMIN, tags=["Model management"])
    async def unload_model(self, name: str, request: UnloadRequest) -> Any:
        """Unload a version, or all of them; its memory is returned once its requests in flight are done."""
        return await self.manage(name, "unload", request)

    @extras.post("/models/{name}/default", response_model=ManageResult, responses=ADMIN, tags=["Model management"])
    async def set_default(self, name: str, request: DefaultRequest) -> Any:
        """Upgrade: load and warm the version, switch to it atomically, unload the previous one once idle."""
        return await self.manage(name, "default", request)

    @extras.post("/models/{name}/split", response_model=ManageResult, responses=ADMIN, tags=["Model management"])
    async def split_traffic(self, name: str, request: SplitRequest) -> Any:
        """Split the requests that name no version between versions by weight (A/B, canary); null clears it."""
        return await self.manage(name, "split", request)


YoloToys.add_asgi_middleware(Access)  # outermost: a refused request costs nothing else
YoloToys.add_asgi_middleware(ErrorBodies)
YoloToys.add_asgi_middleware(Probes)
YoloToys.add_asgi_middleware(FormsOnly, routes=tuple(api.route for api in YoloToys.apis.values()))
YoloToys.add_asgi_middleware(BodyLimit)
