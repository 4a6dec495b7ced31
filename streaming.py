"""Per-connection state of the streaming routes: messages, the latest-frame mailbox, tracking.

The protocol is in docs/streaming.md. Nothing here touches a model: frames go through the same
runners (and their adaptive batching) as REST requests; this module only decides which frame goes
next and gives detections stable track ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from schemas import Classes, Conf, ImgSz, Iou, MaxDet, ModelName, PredictOptions, Prompts, Task

MAX_STREAMS = int(os.environ.get("YOLO_TOYS_MAX_STREAMS") or 64)
# Below the server's WebSocket message limit (16 MiB in uvicorn), so an oversize frame gets an
# error message instead of a closed connection.
MAX_FRAME_BYTES = int(os.environ.get("YOLO_TOYS_MAX_FRAME_BYTES") or 8 * 1024 * 1024)
STREAM_TASKS = (Task.detect, Task.segment, Task.pose, Task.classify, Task.obb)
TRACKED_TASKS = (Task.detect, Task.segment, Task.pose)


class StreamConfig(BaseModel):
    """The settings of one stream; a `config` message replaces them as a whole."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["config"] = "config"
    model: ModelName = None
    task: Task = Task.detect
    conf: Conf = 0.25
    iou: Iou = 0.7
    imgsz: ImgSz = None
    max_det: MaxDet = 300
    classes: Classes = None
    prompts: Prompts = None
    tracking: bool = False
    tracker: Literal["bytetrack", "botsort"] = "bytetrack"

    def options(self) -> PredictOptions:
        return PredictOptions(conf=self.conf, iou=self.iou, imgsz=self.imgsz, max_det=self.max_det,
                              classes=self.classes, prompts=self.prompts)  # fmt: skip


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


def queue_ms(frame: Frame) -> float:
    return (time.perf_counter() - frame.received) * 1000


class StreamSession:
    """One WebSocket stream: a receiver fills the mailbox, a worker serves the newest frame.

    `infer(config, frame)` returns `(result, None)` or `(None, error_body)`; it is the front
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

    async def error(self, error: str, detail: Any = None, frame_id: int | None = None) -> None:
        message = {"type": "error", "error": error, "detail": detail}
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
                if len(data) > MAX_FRAME_BYTES:
                    await self.error("frame too large", f"{len(data)} bytes; the limit is {MAX_FRAME_BYTES}", frame_id)
                else:
                    self.mailbox.put(Frame(frame_id, data, time.perf_counter()))
            elif message.get("text") is not None:
                await self._control(message["text"])

    async def _control(self, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError as exc:
            await self.error("invalid JSON", str(exc))
            return
        try:
            message = CLIENT_MESSAGE.validate_python(payload)
        except ValidationError as exc:
            await self.error("invalid message", exc.errors(include_url=False, include_context=False, include_input=False))
            return
        if isinstance(message, Ping):
            await self.send({"type": "pong", "t": message.t, "server_time": time.time()})
        elif isinstance(message, FrameTag):
            self.next_id = message.id
        elif message.task not in STREAM_TASKS:
            await self.error("task not streamable", f"{message.task.value}; choose one of {[t.value for t in STREAM_TASKS]}")
        elif message.tracking and message.task not in TRACKED_TASKS:
            await self.error("tracking not supported", f"tracking follows boxes: {[t.value for t in TRACKED_TASKS]}")
        else:
            try:
                tracker = self._tracker_for(message)
            except Exception as exc:  # a tracker's missing dependency must not end the stream
                await self.error("tracker unavailable", f"{message.tracker}: {exc}")
                return
            self.config, self.tracker = message, tracker
            await self.send({"type": "config", "config": message.model_dump(mode="json", exclude={"type"})})

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
            result, error = await self.infer(config, frame)
            if error is not None:
                await self.error(error["error"], error.get("detail"), frame.id)
                continue
            if tracker is not None and config.task in TRACKED_TASKS:
                await asyncio.to_thread(tracker.label, result)
            await self.send({
                "type": "result", "frame_id": frame.id, "result": result.model_dump(mode="json"),
                "queue_ms": waited, "server_ms": queue_ms(frame), "dropped": self.mailbox.dropped,
            })  # fmt: skip


# ---- server-sent events over an uploaded video ---------------------------------------------------


def sse(event: str, data: dict) -> str:
    """One server-sent event: `event:` and `data:` lines, then a blank line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class VideoFrames:
    """Frames of an uploaded video file (OpenCV: mp4, webm, avi, ...), JPEG-encoded for the runners."""

    def __init__(self, path: str, stride: int = 1, max_frames: int | None = None) -> None:
        import cv2

        self._cv2 = cv2
        self.capture = cv2.VideoCapture(path)
        if not self.capture.isOpened():
            self.capture.release()
            raise ValueError("the file is not a video OpenCV can read (mp4, webm, avi, ...)")
        self.declared = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.stride = stride
        self.max_frames = max_frames
        self.read_count = 0
        self.finished = False

    def next(self) -> tuple[int, float, bytes] | None:
        """The next selected frame as (index, timestamp in ms, JPEG bytes); None at the end."""
        while self.max_frames is None or self.read_count < self.max_frames:
            ok, image = self.capture.read()
            if not ok:
                self.finished = True
                return None
            index = self.read_count
            self.read_count += 1
            if index % self.stride:
                continue
            timestamp = float(self.capture.get(self._cv2.CAP_PROP_POS_MSEC) or 0.0)
            if timestamp == 0.0 and index and self.fps > 0:
                timestamp = index * 1000.0 / self.fps
            ok, buf = self._cv2.imencode(".jpg", image, [self._cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise ValueError(f"frame {index} could not be encoded")
            return index, timestamp, buf.tobytes()
        self.finished = True
        return None

    def truncated(self) -> bool:
        """Fewer frames than the container declares: a cut or corrupt file, not a normal end."""
        return self.max_frames is None and self.declared > 0 and self.read_count < self.declared

    def close(self) -> None:
        self.capture.release()
