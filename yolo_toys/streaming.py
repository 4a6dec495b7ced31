"""Per-connection state of the streaming routes: messages, the latest-frame mailbox, tracking.

The protocol is in docs/streaming.md. Nothing here touches a model: frames go through the same
runners (and their adaptive batching) as REST requests; this module only decides which frame goes
next and gives detections stable track ids.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from yolo_toys.errors import ServiceError
from yolo_toys.settings import settings
from yolo_toys.tasks import TRACKED_TASKS, StreamOptions


class StreamConfig(StreamOptions):
    """The settings of one stream; a `config` message replaces them as a whole."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["config"] = "config"


class FrameTag(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["frame"]
    id: int = Field(ge=0)


class Ping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["ping"]
    t: Any = None


ClientMessage = Annotated[StreamConfig | FrameTag | Ping, Field(discriminator="type")]
CLIENT_MESSAGE: TypeAdapter[StreamConfig | FrameTag | Ping] = TypeAdapter(ClientMessage)


@dataclass
class Frame:
    id: int
    data: bytes
    received: float  # time.perf_counter() at receipt


class LatestFrame:
    """A one-slot mailbox: a frame that arrives while another waits replaces it, and counts a drop."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, frame: Frame) -> None:
        if self._frame is not None:
            self.dropped += 1
        self._frame = frame
        self._ready.set()

    async def take(self) -> Frame:
        await self._ready.wait()
        frame, self._frame = self._frame, None
        self._ready.clear()
        assert frame is not None
        return frame


class Tracker:
    """Ultralytics' ByteTrack or BoT-SORT (motion only: no camera-motion model, no ReID) over our boxes."""

    def __init__(self, kind: str) -> None:
        from ultralytics.trackers.bot_sort import BOTSORT
        from ultralytics.trackers.byte_tracker import BYTETracker
        from ultralytics.utils import YAML
        from ultralytics.utils.checks import check_yaml

        args = SimpleNamespace(**YAML.load(check_yaml(f"{kind}.yaml")))
        if kind == "botsort":
            args.gmc_method, args.with_reid = "none", False
        self.kind = kind
        self._tracker = (BOTSORT if kind == "botsort" else BYTETracker)(args)

    def update(self, items: list[Any], width: int, height: int) -> list[int | None]:
        """Track ids for `items` (detections or instances with `box`, `score`, `class_id`), in order."""
        from ultralytics.engine.results import Boxes

        rows = np.array(
            [[d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score, d.class_id] for d in items], dtype=np.float32
        ).reshape(-1, 6)
        tracks = self._tracker.update(Boxes(rows, (height, width)))
        ids: list[int | None] = [None] * len(items)
        for row in tracks:
            ids[int(row[-1])] = int(row[4])
        return ids

    def label(self, result: Any) -> None:
        """Set `track_id` on the detections or instances of one frame's result."""
        items = getattr(result, "detections", None) or getattr(result, "instances", None) or []
        for item, track_id in zip(items, self.update(items, result.image.width, result.image.height), strict=True):
            item.track_id = track_id


def parse_message(text: str) -> StreamConfig | FrameTag | Ping:
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ServiceError(400, "invalid JSON", str(exc)) from None
    try:
        return CLIENT_MESSAGE.validate_python(payload)
    except ValidationError as exc:
        detail = exc.errors(include_url=False, include_context=False, include_input=False)
        raise ServiceError(400, "invalid message", detail) from None


def queue_ms(frame: Frame) -> float:
    return (time.perf_counter() - frame.received) * 1000


class StreamSession:
    """One WebSocket stream: a receiver fills the mailbox, a worker serves the newest frame.

    `infer(config, frame)` returns the frame's result or raises a `ServiceError`; it is the front
    service's own routing, so a frame meets the same checks and runners as a REST upload.
    """

    def __init__(self, websocket: Any, infer: Any) -> None:
        self.ws = websocket
        self.infer = infer
        self.config = StreamConfig()
        self.tracker: Tracker | None = None
        self.mailbox = LatestFrame()
        self.next_id = 0
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        tasks = {asyncio.create_task(self._receive()), asyncio.create_task(self._work())}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None and type(exc).__name__ not in ("WebSocketDisconnect", "ClientDisconnected"):
                raise exc

    async def send(self, message: dict) -> None:
        async with self._send_lock:
            await self.ws.send_json(message)

    async def error(self, exc: ServiceError, frame_id: int | None = None) -> None:
        message = {"type": "error", **exc.body()}
        if frame_id is not None:
            message["frame_id"] = frame_id
        await self.send(message)

    async def _receive(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                frame_id, data = self.next_id, message["bytes"]
                self.next_id += 1
                limit = settings().max_frame_bytes
                if len(data) > limit:
                    await self.error(ServiceError(413, "frame too large", f"{len(data)} bytes; the limit is {limit}"), frame_id)
                else:
                    self.mailbox.put(Frame(frame_id, data, time.perf_counter()))
            elif message.get("text") is not None:
                await self._control(message["text"])

    async def _control(self, text: str) -> None:
        try:
            message = parse_message(text)
            if isinstance(message, Ping):
                await self.send({"type": "pong", "t": message.t, "server_time": time.time()})
            elif isinstance(message, FrameTag):
                self.next_id = message.id
            else:
                await self._configure(message)
        except ServiceError as exc:
            await self.error(exc)

    async def _configure(self, config: StreamConfig) -> None:
        config.check_streamable()
        if config.tracking and config.task not in TRACKED_TASKS:
            raise ServiceError(422, "tracking not supported", f"tracking follows boxes: {[t.value for t in TRACKED_TASKS]}")
        try:
            tracker = self._tracker_for(config)
        except Exception as exc:  # a tracker's missing dependency must not end the stream
            raise ServiceError(503, "tracker unavailable", f"{config.tracker}: {exc}") from None
        self.config, self.tracker = config, tracker
        await self.send({"type": "config", "config": config.model_dump(mode="json", exclude={"type"})})

    def _tracker_for(self, new: StreamConfig) -> Tracker | None:
        """Keep the tracks (and their ids) while the same model keeps tracking the same task."""
        old = self.config
        same = self.tracker is not None and (old.model, old.task, old.tracker) == (new.model, new.task, new.tracker)
        if not new.tracking:
            return None
        return self.tracker if same else Tracker(new.tracker)

    async def _work(self) -> None:
        while True:
            frame = await self.mailbox.take()
            config, tracker = self.config, self.tracker
            waited = queue_ms(frame)
            try:
                result = await self.infer(config, frame)
            except ServiceError as exc:
                await self.error(exc, frame.id)
                continue
            if tracker is not None and config.task in TRACKED_TASKS:
                await asyncio.to_thread(tracker.label, result)
            await self.send({
                "type": "result", "frame_id": frame.id, "result": result.model_dump(mode="json"),
                "queue_ms": waited, "server_ms": queue_ms(frame), "dropped": self.mailbox.dropped,
            })  # fmt: skip
