"""YOLO-Toys: the front service. Routing, validation and error answers; no model code.

Every task endpoint takes a multipart `image` plus options, picks the model (the task's default
if none is named), checks it, and hands the still-encoded bytes to the runner of the model's
family, which batches, decodes once, infers and answers in the shared schemas.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any, Literal

import aiohttp
import bentoml
from bentoml.validators import ContentType
from fastapi import FastAPI, WebSocket
from prometheus_client import Gauge
from pydantic import Field
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from guard import MULTIPART_OVERHEAD, BodyLimit, install_guards
from imaging import LIMITS, ImageError, ImageUpload, UploadedFile, check_upload
from runners.transformers import TransformersRunner
from runners.ultralytics import UltralyticsRunner
from schemas import (
    CaptionResult,
    Classes,
    ClassifyResult,
    Conf,
    DepthResult,
    DetectResult,
    ImgSz,
    InferenceJob,
    Iou,
    Labels,
    MaxDet,
    MaxNewTokens,
    ModelInfo,
    ModelName,
    ModelsResponse,
    ObbResult,
    Outcome,
    PoseResult,
    PredictOptions,
    Prefix,
    Prompts,
    Question,
    SegmentResult,
    Task,
    TopK,
    VqaResult,
    ZeroShotClassifyResult,
)
from streaming import (
    MAX_STREAMS,
    STREAM_TASKS,
    TRACKED_TASKS,
    Frame,
    StreamConfig,
    StreamSession,
    Tracker,
    VideoFrames,
    sse,
)

log = logging.getLogger("yolo_toys")
install_guards()

extras = FastAPI(title="YOLO-Toys", docs_url=None, redoc_url=None, openapi_url=None)
extras.mount("/demo", StaticFiles(directory=Path(__file__).parent / "demo", html=True, check_dir=False), name="demo")

VIDEO_WINDOW = 4  # frames of one video in inference at once, so they can share batches
Stride = Annotated[int, Field(ge=1, le=1000, description="Process every n-th frame.")]
MaxFrames = Annotated[int | None, Field(ge=1, le=1_000_000, description="Stop after this many frames.")]

OPEN_STREAMS = Gauge("yolo_toys_open_streams", "Open WebSocket streams.", multiprocess_mode="livesum")


RUNNER_CONNECTION_CLOSED = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "detail": self.detail}, status_code=self.status)


@bentoml.asgi_app(extras, path="/")
@bentoml.service(
    name="yolo_toys",
    traffic={"timeout": 120},
    labels={"project": "yolo-toys"},
)
class YoloToys:
    ultralytics = bentoml.depends(UltralyticsRunner)
    transformers = bentoml.depends(TransformersRunner)

    def __init__(self) -> None:
        self.runners = {"ultralytics": self.ultralytics, "transformers": self.transformers}
        self._status: dict[str, ModelInfo] | None = None
        self.open_streams = 0

    async def model_status(self) -> dict[str, ModelInfo]:
        """The runners' view of the catalog; fixed once they have started, so asked once."""
        if self._status is None:
            infos: list[ModelInfo] = []
            for runner in self.runners.values():
                infos += [ModelInfo.model_validate(i) for i in await runner.to_async.status()]
            self._status = {i.name: i for i in infos}
            loaded = [n for n, i in self._status.items() if i.loaded]
            missing = {n: i.reason for n, i in self._status.items() if not i.loaded}
            log.info("models loaded: %s; missing: %s", ", ".join(loaded) or "none", missing or "none")
        return self._status

    async def resolve(self, task: Task, name: str | None, options: PredictOptions) -> ModelInfo:
        status = await self.model_status()
        if name is None:
            candidates = [i for i in status.values() if i.task == task and i.loaded]
            candidates.sort(key=lambda i: not i.default)
            if not candidates:
                raise ApiError(404, "no model loaded for task", f"no {task.value} model is loaded; see GET /models")
            info = candidates[0]
        else:
            info = status.get(name)
            if info is None:
                raise ApiError(404, "unknown model", f"{name!r} is not in the catalog; known: {sorted(status)}")
            if not info.loaded:
                raise ApiError(404, "model not loaded", f"{name!r} is in the catalog but not loaded: {info.reason}")
            if info.task != task:
                raise ApiError(422, "wrong task for model", f"{name!r} serves {info.task.value}, not {task.value}")
        if options.imgsz is not None and info.fixed_imgsz and options.imgsz != info.imgsz:
            raise ApiError(422, "imgsz not supported", f"{info.name!r} has a fixed input size of {info.imgsz}")
        if task == Task.detect and info.open_vocabulary and not options.prompts:
            raise ApiError(422, "prompts required", f"{info.name!r} detects what `prompts` names; give a JSON list")
        if task == Task.detect and options.prompts and not info.open_vocabulary:
            raise ApiError(422, "prompts not supported", f"{info.name!r} has a fixed label set; see GET /models")
        if task == Task.zero_shot_classify and not options.prompts:
            raise ApiError(422, "labels required", "zero-shot classification scores the labels the caller gives")
        if task == Task.vqa and not options.text:
            raise ApiError(422, "question required", "`question` must be a non-blank string")
        if options.classes and info.labels:
            unknown = sorted(c for c in options.classes if c not in info.labels)
            if unknown:
                raise ApiError(422, "unknown class ids", f"{unknown}; {info.name!r} has ids 0..{max(info.labels)}")
        return info

    async def call_runner(self, family: str, job: InferenceJob) -> Outcome:
        """One runner call, sent again once if the pooled connection it went out on was closed.

        A runner's server closes a connection idle for 5 s (uvicorn's default, which BentoML does not
        let dependencies change); a request written just as that happens fails before the runner
        reads it (seen in bench/ after an idle pause). Predictions have no side effects.
        """
        call = self.runners[family].to_async.predict
        try:
            [outcome] = await call([job])
        except RUNNER_CONNECTION_CLOSED as exc:
            log.info("%s runner connection closed under the request (%s); sending it again", family, exc)
            try:
                [outcome] = await call([job])
            except RUNNER_CONNECTION_CLOSED as again:
                raise ApiError(503, "runner unavailable", f"{family} runner: {again}; retry later") from None
        return Outcome.model_validate(outcome)

    async def run(self, task: Task, image: UploadedFile, name: str | None, options: PredictOptions,
                  annotate: bool = False) -> Outcome:
        try:
            upload = check_upload(image.data)
        except ImageError as exc:
            raise ApiError(exc.status, exc.error, exc.detail) from None
        info = await self.resolve(task, name, options)
        job = InferenceJob(model=info.name, task=task, image=upload.data, options=options, annotate=annotate)
        outcome = await self.call_runner(info.family, job)
        if outcome.error is not None:
            raise ApiError(outcome.status, outcome.error.error, outcome.error.detail)
        return outcome

    async def answer(self, task: Task, image: UploadedFile, name: str | None, **options: Any) -> Any:
        started = time.perf_counter()
        try:
            outcome = await self.run(task, image, name, PredictOptions(**options))
        except ApiError as exc:
            return exc.response()
        result = outcome.result
        result.timings.total_ms = (time.perf_counter() - started) * 1000
        return result

    @bentoml.api(route="/detect")
    async def detect(self, image: ImageUpload, model: ModelName = None, conf: Conf = 0.25, iou: Iou = 0.7,
                     imgsz: ImgSz = None, max_det: MaxDet = 300, classes: Classes = None,
                     prompts: Prompts = None) -> DetectResult:
        """Boxes with score, class id and label. Open-vocabulary models (OWL-ViT) find the `prompts`."""
        return await self.answer(Task.detect, image, model, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det,
                                 classes=classes, prompts=prompts)

    @bentoml.api(route="/segment")
    async def segment(self, image: ImageUpload, model: ModelName = None, conf: Conf = 0.25, iou: Iou = 0.7,
                      imgsz: ImgSz = None, max_det: MaxDet = 300, classes: Classes = None) -> SegmentResult:
        """Instances with box, label and mask outline polygons."""
        return await self.answer(Task.segment, image, model, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det,
                                 classes=classes)

    @bentoml.api(route="/pose")
    async def pose(self, image: ImageUpload, model: ModelName = None, conf: Conf = 0.25, iou: Iou = 0.7,
                   imgsz: ImgSz = None, max_det: MaxDet = 300) -> PoseResult:
        """Persons with box and 17 named keypoints."""
        return await self.answer(Task.pose, image, model, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det)

    @bentoml.api(route="/classify")
    async def classify(self, image: ImageUpload, model: ModelName = None, imgsz: ImgSz = None,
                       top_k: TopK = 5) -> ClassifyResult:
        """The top-k labels of the whole image."""
        return await self.answer(Task.classify, image, model, imgsz=imgsz, top_k=top_k)

    @bentoml.api(route="/obb")
    async def obb(self, image: ImageUpload, model: ModelName = None, conf: Conf = 0.25, iou: Iou = 0.7,
                  imgsz: ImgSz = None, max_det: MaxDet = 300, classes: Classes = None) -> ObbResult:
        """Rotated boxes: center, size, angle and the 4 corners."""
        return await self.answer(Task.obb, image, model, conf=conf, iou=iou, imgsz=imgsz, max_det=max_det,
                                 classes=classes)

    @bentoml.api(route="/zero_shot_classify")
    async def zero_shot_classify(self, image: ImageUpload, labels: Labels, model: ModelName = None,
                                 top_k: TopK = 5) -> ZeroShotClassifyResult:
        """Scores of the caller's labels for the whole image (CLIP, SigLIP), best first."""
        return await self.answer(Task.zero_shot_classify, image, model, prompts=labels, top_k=top_k)

    @bentoml.api(route="/caption")
    async def caption(self, image: ImageUpload, model: ModelName = None, prefix: Prefix = None,
                      max_new_tokens: MaxNewTokens = 30) -> CaptionResult:
        """A sentence describing the image, optionally continuing `prefix`."""
        return await self.answer(Task.caption, image, model, text=prefix or None, max_new_tokens=max_new_tokens)

    @bentoml.api(route="/vqa")
    async def vqa(self, image: ImageUpload, question: Question, model: ModelName = None,
                  max_new_tokens: MaxNewTokens = 30) -> VqaResult:
        """The answer to a question about the image."""
        return await self.answer(Task.vqa, image, model, text=question, max_new_tokens=max_new_tokens)

    @bentoml.api(route="/depth")
    async def depth(self, image: ImageUpload, model: ModelName = None) -> DepthResult:
        """Relative depth map as a base64 16-bit PNG: depth = min + value * scale."""
        return await self.answer(Task.depth, image, model)

    @bentoml.api(route="/annotate")
    async def annotate(self, image: ImageUpload, task: Task = Task.detect, model: ModelName = None,
                       conf: Conf = 0.25, iou: Iou = 0.7, imgsz: ImgSz = None, max_det: MaxDet = 300,
                       classes: Classes = None, top_k: TopK = 5, prompts: Prompts = None, text: Prefix = None,
                       max_new_tokens: MaxNewTokens = 30) -> Annotated[Path, ContentType("image/jpeg")]:
        """The image as a JPEG with the task's results drawn on it (a colour map for depth).

        `prompts` are the open-vocabulary prompts or the zero-shot labels; `text` the caption
        prefix or the VQA question.
        """
        options = PredictOptions(conf=conf, iou=iou, imgsz=imgsz, max_det=max_det, classes=classes, top_k=top_k,
                                 prompts=prompts, text=text or None, max_new_tokens=max_new_tokens)  # fmt: skip
        try:
            outcome = await self.run(task, image, model, options, annotate=True)
        except ApiError as exc:
            return exc.response()
        return Response(outcome.annotated_jpeg, media_type="image/jpeg")

    @bentoml.api(route="/stream/video")
    async def stream_video(
        self, video: Annotated[Path, Field(description="A video file: mp4, webm, avi, ...")], task: Task = Task.detect,
        model: ModelName = None, conf: Conf = 0.25, iou: Iou = 0.7, imgsz: ImgSz = None, max_det: MaxDet = 300,
        classes: Classes = None, prompts: Prompts = None, stride: Stride = 1, max_frames: MaxFrames = None,
        tracking: bool = False, tracker: Literal["bytetrack", "botsort"] = "bytetrack",
    ) -> AsyncGenerator[str, None]:
        """Per-frame results of an uploaded video as server-sent events.

        Events: `result` (`frame`, `timestamp_ms`, `result`), then `end`; or `error` at the frame
        where the stream stops (a cut file, a model failure): never a silent truncation.
        """
        options = PredictOptions(conf=conf, iou=iou, imgsz=imgsz, max_det=max_det, classes=classes, prompts=prompts)
        try:
            if task not in STREAM_TASKS:
                raise ApiError(422, "task not streamable", f"choose one of {[t.value for t in STREAM_TASKS]}")
            await self.resolve(task, model, options)
            frames = await asyncio.to_thread(VideoFrames, str(video), stride, max_frames)
        except ApiError as exc:
            return exc.response()
        except ValueError as exc:
            return ApiError(400, "undecodable video", str(exc)).response()
        track = Tracker(tracker) if tracking and task in TRACKED_TASKS else None
        events = self.video_events(frames, task, model, options, track)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def video_events(self, frames: VideoFrames, task: Task, model: str | None, options: PredictOptions,
                           tracker: Tracker | None) -> AsyncGenerator[str, None]:
        pending: deque = deque()
        results = 0
        try:
            while True:
                while len(pending) < VIDEO_WINDOW and not frames.finished:
                    item = await asyncio.to_thread(frames.next)
                    if item is None:
                        break
                    index, timestamp, data = item
                    job = asyncio.ensure_future(self.run(task, UploadedFile(data), model, options))
                    pending.append((index, timestamp, job))
                if not pending:
                    break
                index, timestamp, job = pending.popleft()
                try:
                    result = (await job).result
                except ApiError as exc:
                    yield sse("error", {"frame": index, "error": exc.error, "detail": exc.detail})
                    return
                if tracker is not None:
                    await asyncio.to_thread(tracker.label, result)
                results += 1
                yield sse("result", {"frame": index, "timestamp_ms": timestamp, "result": result.model_dump(mode="json")})
            if frames.truncated():
                detail = f"read {frames.read_count} of the {frames.declared} frames the file declares"
                yield sse("error", {"frame": frames.read_count, "error": "video ended early", "detail": detail})
                return
            yield sse("end", {"frames_read": frames.read_count, "results": results})
        except Exception as exc:  # the stream says so instead of stopping silently
            log.exception("video stream failed")
            yield sse("error", {"frame": frames.read_count, "error": "internal error", "detail": f"{type(exc).__name__}"})
        finally:
            for _, _, job in pending:
                job.cancel()
            frames.close()

    @extras.websocket("/ws/stream")
    async def stream(self, websocket: WebSocket) -> None:
        """Frames in, results out, latest frame wins (docs/streaming.md)."""
        await websocket.accept()
        if self.open_streams >= MAX_STREAMS:
            await websocket.close(code=1013, reason=f"{MAX_STREAMS} streams are open; try again later")
            return
        self.open_streams += 1
        OPEN_STREAMS.inc()
        try:
            await StreamSession(websocket, self.stream_frame).run()
        finally:
            self.open_streams -= 1
            OPEN_STREAMS.dec()

    async def stream_frame(self, config: StreamConfig, frame: Frame) -> tuple[Any, dict | None]:
        try:
            outcome = await self.run(config.task, UploadedFile(frame.data), config.model, config.options())
        except ApiError as exc:
            return None, {"error": exc.error, "detail": exc.detail}
        return outcome.result, None

    @extras.get("/models", response_model=ModelsResponse, tags=["Service APIs"])
    async def list_models(self) -> ModelsResponse:
        """The catalog: each model's family, task, labels, batching and whether it is loaded."""
        return ModelsResponse(models=list((await self.model_status()).values()))


YoloToys.add_asgi_middleware(BodyLimit, max_bytes=LIMITS.max_upload_bytes + MULTIPART_OVERHEAD)
