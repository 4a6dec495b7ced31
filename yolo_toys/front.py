"""What the front service does behind its routes: pick and check the model, call the family runner,
turn errors into answers. service.py's class inherits it and stays the table of contents of the API.

The front never decodes an image: it checks the upload's size and signature, resolves the model
(yolo_toys/tasks.py) and sends the still-encoded bytes to the runner of the model's family. Nor does it
parse a result: the runner answers each image's HTTP body, which the route sends as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import bentoml
from _bentoml_impl.client import RemoteProxy
from fastapi import UploadFile, WebSocket
from prometheus_client import Counter, Gauge, Histogram
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response, StreamingResponse

from models.catalog import load_catalog
from yolo_toys import workarounds
from yolo_toys.errors import ServiceError
from yolo_toys.health import Health
from yolo_toys.imaging import EncodedImage, UploadedFile, check_upload
from yolo_toys.replicas import Replica, ReplicaSet
from yolo_toys.schemas import (
    RESULT,
    Answer,
    InferenceJob,
    ManageOutcome,
    ManageResult,
    ModelAction,
    ModelDetail,
    ModelInfo,
    ModelsResponse,
    PredictOptions,
    RegisterJob,
    Task,
    batch_body,
    unpack_answers,
)
from yolo_toys.settings import settings
from yolo_toys.shutdown import before_sigterm
from yolo_toys.streaming import Frame, StreamConfig, StreamSession, Tracker
from yolo_toys.tasks import TRACKED_TASKS, AnnotateRequest, BatchRequest, ImageRequest, VideoRequest, resolve
from yolo_toys.video import VideoFrames, video_events

log = logging.getLogger("yolo_toys")

OPEN_STREAMS = Gauge("yolo_toys_open_streams", "Open WebSocket streams.", multiprocess_mode="livesum")

# Per model version, what an A/B test or a canary compares: answered requests and their latency in the front.
VERSION_REQUESTS = Counter("yolo_toys_model_version_requests_total", "Requests answered, per model version.",
                           ["model", "version"])  # fmt: skip
VERSION_LATENCY = Histogram("yolo_toys_model_version_latency_seconds", "Front-to-answer latency, per model version.",
                            ["model", "version"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip

R = TypeVar("R", bound=ImageRequest)


def split_version(name: str | None) -> tuple[str | None, int | None]:
    """`yolo11n:2` is version 2 of yolo11n; `yolo11n` is its default version (or its traffic split)."""
    if name is None or ":" not in name:
        return name, None
    base, _, number = name.rpartition(":")
    if not number.isdigit() or int(number) < 1 or not base:
        raise ServiceError(400, "invalid model version", f"{name!r}: name a version as `model:N`, N from 1")
    return base, int(number)


class Front:
    """The front service's machinery; `families` are the runner dependencies service.py declares."""

    families: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        workarounds.install()
        listed = settings().replicas
        self.runners = {name: self._replicas(name, listed.get(name)) for name in self.families}
        self.health = Health(self.runners)
        self.catalog = load_catalog()
        self._answers: dict[str, dict[str, ModelDetail]] = {}  # family -> its runner's `status`
        self._status: dict[str, ModelDetail] | None = None  # all of them, once every family has answered
        self._asked = 0.0  # when `_status` was asked for (monotonic)
        self._asking = asyncio.Lock()
        self.open_streams = 0

    @bentoml.on_startup
    async def _probe_runners(self) -> None:
        self.health.start()
        before_sigterm(self._stop_probing)

    async def _stop_probing(self) -> None:
        """At SIGTERM: calls in flight finish on their open connections (yolo_toys/shutdown.py)."""
        self.health.stop(shutting_down=True)

    @bentoml.on_shutdown
    async def _stop_probes(self) -> None:
        self.health.stop()
        for replicas in self.runners.values():
            await replicas.close()

    def _replicas(self, family: str, urls: list[str] | None) -> ReplicaSet:
        """The family's replicas: those `YOLO_TOYS_REPLICAS` lists, else the one BentoML resolved the
        dependency to (only looked up then: an unresolved dependency is served inside this process)."""
        if urls is None:
            return ReplicaSet.single(family, getattr(self, family))
        runner = getattr(type(self), family).on  # the runner service of the `bentoml.depends`
        return ReplicaSet(family, urls, lambda url: Replica(family, url, RemoteProxy(url, service=runner)))

    # ---- models ------------------------------------------------------------------------------------

    async def model_status(self, fresh: bool = False) -> dict[str, ModelDetail]:
        """The runners' view of their models. Asked again when `fresh` (GET /models, a management call) or
        when older than YOLO_TOYS_MODELS_REFRESH_S (what another front or worker was asked), one refresh at a
        time while the others use the last view. Until every family has answered, each request asks those
        that have not; one with no ready replica is listed from the catalog as not loaded, with its runner's
        state as the reason, and the others serve meanwhile."""
        due = time.monotonic() - self._asked >= settings().models_refresh_s
        if self._status is not None and not fresh and (not due or self._asking.locked()):
            return self._status
        async with self._asking:
            if self._status is not None and not fresh and time.monotonic() - self._asked < settings().models_refresh_s:
                return self._status
            everyone = fresh or self._status is not None
            return await self._ask([f for f in self.runners if everyone or f not in self._answers])

    async def _ask(self, families: list[str]) -> dict[str, ModelDetail]:
        started = time.monotonic()
        for family in families:
            if not self.runners[family].ready:
                continue
            try:
                details = [ModelDetail.model_validate(i) for i in await self.runners[family].call("status")]
            except ServiceError:  # its replicas went down meanwhile: the last answer stands
                continue
            if family not in self._answers:
                log.info("%s models loaded: %s", family, ", ".join(d.name for d in details if d.loaded) or "none")
            self._answers[family] = {d.name: d for d in details}
        status: dict[str, ModelDetail] = {}
        for family, replicas in self.runners.items():
            status.update(self._answers.get(family) or self._unanswered(family, replicas.unavailable().detail))
        if len(self._answers) == len(self.runners):
            self._status, self._asked = status, started
        return status

    def _unanswered(self, family: str, reason: str) -> dict[str, ModelDetail]:
        return {e.name: ModelDetail(name=e.name, family=family, task=e.task, default=e.default, loaded=False,
                                    reason=reason, batching=self.catalog.batching(e)) for e in self.catalog.family(family)}  # fmt: skip

    def resolve(self, models: dict[str, ModelDetail], task: Task, name: str | None, options: PredictOptions) -> ModelDetail:
        """`tasks.resolve`, except that the named model, or the task's default, of a family whose runner
        has not answered yet is that runner's 503 with Retry-After: not a 404, nor another family's model."""
        if self._status is not None:  # every family has answered: nothing to wait for
            return resolve(models, task, name, options)
        entries = [e for e in self.catalog.models if (e.name == name if name is not None else e.task == task)]
        waiting = [e for e in entries if e.family not in self._answers]
        if first := next((e for e in waiting if name is not None or e.default), None):
            raise self.runners[first.family].unavailable()
        try:
            return resolve(models, task, name, options)
        except ServiceError as exc:
            if exc.status == 404 and waiting:
                raise self.runners[waiting[0].family].unavailable() from None
            raise

    async def models_response(self) -> ModelsResponse | Response:
        async def listing() -> ModelsResponse:
            models = await self.model_status(fresh=True)
            return ModelsResponse(models=[ModelInfo.model_validate(d.model_dump(exclude={"labels"})) for d in models.values()])

        return await self._respond(listing)

    async def model_detail(self, name: str) -> ModelDetail | Response:
        async def detail() -> ModelDetail:
            found = (await self.model_status(fresh=True)).get(name)
            if found is None:
                raise ServiceError(404, "unknown model", f"{name!r} is not in the catalog; see GET /models")
            return found

        return await self._respond(detail)

    # ---- model management (admin keys: yolo_toys/access.py) -------------------------------------------

    async def manage(self, name: str, action: str, request: BaseModel) -> ManageResult | Response:
        """Load, unload, set the default or a split of a model, on every replica of its runner (runners/manage.py)."""

        async def call() -> ManageResult:
            info = (await self.model_status(fresh=True)).get(name)
            if info is None:
                raise ServiceError(404, "unknown model", f"{name!r} is not a model of this server; see GET /models")
            return await self._managed(info.family, "manage", ModelAction(action=action, name=name, **request.model_dump()))

        return await self._respond(call)

    async def register(self, form: dict[str, Any], artifact: UploadFile) -> Response:
        """A new model, or a new version of one, from an uploaded artifact; 201 with the model as it now is."""

        async def call() -> JSONResponse:
            family, name = form["family"], form["name"]
            if family not in self.runners:
                raise ServiceError(422, "unknown family", f"{family!r}; this server runs {sorted(self.runners)}")
            existing = (await self.model_status(fresh=True)).get(name)
            if existing is not None and existing.family != family:
                raise ServiceError(409, "model exists", f"{name} is a {existing.family} model, not {family}")
            job = RegisterJob(**form, filename=artifact.filename or "artifact", artifact=await artifact.read())
            result = await self._managed(family, "register", job)
            return JSONResponse(result.model_dump(mode="json"), status_code=201)

        return await self._respond(call)

    async def _managed(self, family: str, method: str, job: BaseModel) -> ManageResult:
        replicas = self.runners[family]
        answers = [ManageOutcome.model_validate(a) for a in await replicas.broadcast(method, job)]
        self._asked = 0.0  # the next request asks the runners again
        refused = next((a for a in answers if a.error is not None), None)
        if refused is not None:
            raise ServiceError.from_body(refused.status, refused.error)
        result = answers[0].result
        assert result is not None
        if len(replicas.replicas) > 1:
            result.message += f" (on {len(answers)} of {len(replicas.replicas)} replicas)"
        return result

    # ---- images, through their runner ------------------------------------------------------------------

    async def call_runner(self, family: str, jobs: list[InferenceJob]) -> list[Answer]:
        """Predictions on a ready replica of the family's runner (yolo_toys/replicas.py): sent again
        elsewhere if its replica's connection failed, 503 at once while no replica is ready. Each answer's
        body is already the route's answer: it is not parsed here (`Answer`, yolo_toys/schemas.py)."""
        return unpack_answers(await self.runners[family].call("predict", jobs))

    async def run(self, task: Task, image: UploadedFile, name: str | None, options: PredictOptions,
                  annotate: bool = False) -> Answer:  # fmt: skip
        """One image: its upload checks first, as the whole request's (raises ServiceError), then its answer."""
        [answer] = await self._run(task, [check_upload(image.data)], name, options, annotate)
        return answer

    async def run_batch(self, task: Task, images: list[UploadedFile], name: str | None,
                        options: PredictOptions) -> list[Answer]:  # fmt: skip
        """Several images: an image that fails its upload checks answers its own error, the others go on."""
        limit = settings().max_request_images
        if len(images) > limit:
            raise ServiceError(413, "too many images", f"{len(images)} images; the limit is {limit} per request")
        return await self._run(task, [_checked(image) for image in images], name, options)

    async def _run(self, task: Task, uploads: list[EncodedImage | Answer], name: str | None, options: PredictOptions,
                   annotate: bool = False) -> list[Answer]:  # fmt: skip
        """Resolve, infer: one answer per upload, in order, from one runner call (one adaptive batch)."""
        started = time.perf_counter()
        name, version = split_version(name)
        info = self.resolve(await self.model_status(), task, name, options)
        jobs = [InferenceJob(model=info.name, version=version, task=task, image=upload.data, options=options,
                             annotate=annotate) for upload in uploads if isinstance(upload, EncodedImage)]  # fmt: skip
        answered = iter(await self.call_runner(info.family, jobs) if jobs else [])
        answers = [upload if isinstance(upload, Answer) else next(answered) for upload in uploads]
        elapsed = time.perf_counter() - started
        for answer in answers:
            if answer.status == 200:
                served_by = {"model": info.name, "version": str(answer.version)}
                VERSION_REQUESTS.labels(**served_by).inc()
                VERSION_LATENCY.labels(**served_by).observe(elapsed)
        return answers

    async def answer(self, task: Task, request: type[R], form: dict[str, Any]) -> Response:
        """A task route's answer: the runner's bytes as they are, or the error as JSON."""
        started = time.perf_counter()

        async def send() -> Response:
            fields = request.model_construct(**form)
            answer = await self.run(task, fields.image, fields.model, fields.options())
            return _reply(answer.status, answer.body, started)

        return await self._respond(send)

    async def annotated(self, form: dict[str, Any]) -> Response:
        """The image with the task's results drawn on it, as a JPEG."""
        started = time.perf_counter()
        request = AnnotateRequest.model_construct(**form)

        async def jpeg() -> Response:
            answer = await self.run(request.task, request.image, request.model, request.options(), annotate=True)
            if answer.status != 200 or answer.jpeg is None:
                return _reply(answer.status, answer.body, started)
            return _reply(200, answer.jpeg, started, "image/jpeg")

        return await self._respond(jpeg)

    async def answer_batch(self, form: dict[str, Any]) -> Response:
        """`POST /batch`: every image's answer in upload order, joined from the runner's bytes unparsed."""
        started = time.perf_counter()
        request = BatchRequest.model_construct(**form)

        async def send() -> Response:
            answers = await self.run_batch(request.task, request.images, request.model, request.options())
            return _reply(200, batch_body(answers), started)

        return await self._respond(send)

    @staticmethod
    def result(answer: Answer) -> Any:
        """The result object of an answer, for the streams (tracking, events); its error raised."""
        if answer.status != 200:
            raise ServiceError.from_json(answer.status, answer.body)
        return RESULT.validate_json(answer.body)

    @staticmethod
    async def _respond(make: Callable[[], Any]) -> Any:
        """The one place an API route's `ServiceError` becomes its answer."""
        try:
            return await make()
        except ServiceError as exc:
            return exc.response()

    # ---- streams -----------------------------------------------------------------------------------

    async def video(self, form: dict[str, Any]) -> Response:
        """Per-frame results of an uploaded video as server-sent events (yolo_toys/video.py)."""
        request = VideoRequest.model_construct(**form)

        async def stream() -> Response:
            request.check_streamable()
            options = request.options()
            self.resolve(await self.model_status(), request.task, request.model, options)
            frames = await asyncio.to_thread(VideoFrames, str(request.video), request.stride, request.max_frames)
            tracker = Tracker(request.tracker) if request.tracking and request.task in TRACKED_TASKS else None

            async def infer(data: bytes) -> Any:
                return self.result(await self.run(request.task, UploadedFile(data), request.model, options))

            events = video_events(frames, infer, tracker)
            return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        return await self._respond(stream)

    async def stream(self, websocket: WebSocket) -> None:
        """One WebSocket stream (docs/streaming.md), within the open-stream limit."""
        await websocket.accept()
        limit = settings().max_streams
        if self.open_streams >= limit:
            await websocket.close(code=1013, reason=f"{limit} streams are open; try again later")
            return
        self.open_streams += 1
        OPEN_STREAMS.inc()
        try:
            await StreamSession(websocket, self.stream_frame).run()
        finally:
            self.open_streams -= 1
            OPEN_STREAMS.dec()

    async def stream_frame(self, config: StreamConfig, frame: Frame) -> Any:
        return self.result(await self.run(config.task, UploadedFile(frame.data), config.model, config.options()))


def _checked(image: UploadedFile) -> EncodedImage | Answer:
    try:
        return check_upload(image.data)
    except ServiceError as exc:
        return exc.answer()


def _reply(status: int, body: bytes, started: float, media_type: str = "application/json") -> Response:
    """A route's answer from the runner's bytes, unparsed. `Server-Timing` is the front's wall time (the
    result's `timings.total_ms` is the runner's); a runner's 503 (overloaded) says when to retry."""
    headers = {"Server-Timing": f"total;dur={(time.perf_counter() - started) * 1000:.2f}"}
    if status == 503:
        headers["Retry-After"] = str(settings().retry_after_s)
    return Response(body, status_code=status, headers=headers, media_type=media_type)
