"""Server-sent events over an uploaded video (`POST /stream/video`): one event per frame's result.

Frames are read and JPEG-encoded in a thread; up to `WINDOW` of them are in inference at once so
that they can share the runners' batches; results go out in frame order. A cut file or a failure
ends the stream with an `error` event naming the frame: never a silent truncation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from yolo_toys.errors import ServiceError
from yolo_toys.schemas import VideoEndEvent, VideoErrorEvent, VideoEvent, VideoResultEvent
from yolo_toys.streaming import Tracker

log = logging.getLogger("yolo_toys.video")

WINDOW = 4  # frames of one video in inference at once, so they can share batches

Infer = Callable[[bytes], Awaitable[Any]]  # encoded frame -> its result, or raises ServiceError
Pending = deque[tuple[int, float, "asyncio.Future[Any]"]]


EVENT_NAMES: dict[type[VideoEvent], str] = {VideoResultEvent: "result", VideoErrorEvent: "error", VideoEndEvent: "end"}


def sse(event: VideoEvent) -> str:
    """One server-sent event: `event:` and `data:` lines, then a blank line."""
    return f"event: {EVENT_NAMES[type(event)]}\ndata: {event.model_dump_json()}\n\n"


class VideoFrames:
    """Frames of an uploaded video file (OpenCV: mp4, webm, avi, ...), JPEG-encoded for the runners."""

    def __init__(self, path: str, stride: int = 1, max_frames: int | None = None) -> None:
        import cv2

        self._cv2 = cv2
        self.capture = cv2.VideoCapture(path)
        if not self.capture.isOpened():
            self.capture.release()
            raise ServiceError(400, "undecodable video", "the file is not a video OpenCV can read (mp4, webm, avi, ...)")
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


async def _fill(frames: VideoFrames, infer: Infer, pending: Pending) -> bool:
    """Start inference on frames until `WINDOW` are in flight; False when nothing is left."""
    while len(pending) < WINDOW and not frames.finished:
        item = await asyncio.to_thread(frames.next)
        if item is None:
            break
        index, timestamp, data = item
        pending.append((index, timestamp, asyncio.ensure_future(infer(data))))
    return bool(pending)


def _ending(frames: VideoFrames, results: int) -> str:
    if frames.truncated():
        detail = f"read {frames.read_count} of the {frames.declared} frames the file declares"
        return sse(VideoErrorEvent(frame=frames.read_count, **ServiceError(400, "video ended early", detail).body()))
    return sse(VideoEndEvent(frames_read=frames.read_count, results=results))


async def video_events(frames: VideoFrames, infer: Infer, tracker: Tracker | None) -> AsyncGenerator[str, None]:
    """`result` events in frame order, then `end`; or `error` at the frame where the stream stops."""
    pending: Pending = deque()
    results = 0
    try:
        while await _fill(frames, infer, pending):
            index, timestamp, job = pending.popleft()
            try:
                result = await job
            except ServiceError as exc:
                yield sse(VideoErrorEvent(frame=index, **exc.body()))
                return
            if tracker is not None:
                await asyncio.to_thread(tracker.label, result)
            results += 1
            yield sse(VideoResultEvent(frame=index, timestamp_ms=timestamp, result=result))
        yield _ending(frames, results)
    except Exception as exc:  # the stream says so instead of stopping silently
        log.exception("video stream failed")
        yield sse(VideoErrorEvent(frame=frames.read_count, **ServiceError(500, "internal error", type(exc).__name__).body()))
    finally:
        for _, _, job in pending:
            job.cancel()
        frames.close()
