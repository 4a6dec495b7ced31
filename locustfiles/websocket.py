"""Load test of `WS /ws/stream`: many concurrent streams, each a camera sending frames.

    locust -f locustfiles/websocket.py --host http://127.0.0.1:3000 --headless -u 32 -r 8 -t 60s

Each user opens one WebSocket, configures it (YOLO_TOYS_LOCUST_MODEL, default: the detect
default; tracking on), then sends a frame, waits for its result and sends the next, like a client
that sends as fast as results come back. A result is a success (its response time is the round
trip); an `error` message or a closed socket is a failure. Frames dropped by the server show as
the `frames dropped` entry.
"""

from __future__ import annotations

import io
import json
import os
import time

from locust import User, between, events, task
from PIL import Image
from ultralytics.utils import ASSETS
from websockets.sync.client import connect  # not `websocket`: this file's own name would shadow it


def _frames() -> list[bytes]:
    """A camera tilting down bus.jpg, 640 px wide JPEG frames."""
    photo = Image.open(ASSETS / "bus.jpg").convert("RGB")
    frames = []
    for i in range(10):
        buf = io.BytesIO()
        photo.crop((0, 200 + i * 8, 810, 800 + i * 8)).resize((640, 474)).save(buf, format="JPEG", quality=85)
        frames.append(buf.getvalue())
    return frames


FRAMES = _frames()


class StreamUser(User):
    wait_time = between(0.0, 0.02)

    def on_start(self) -> None:
        url = self.host.replace("http://", "ws://").replace("https://", "wss://") + "/ws/stream"
        self.ws = connect(url, max_size=None, open_timeout=120)
        config = {"type": "config", "tracking": True}
        if os.environ.get("YOLO_TOYS_LOCUST_MODEL"):
            config["model"] = os.environ["YOLO_TOYS_LOCUST_MODEL"]
        self.ws.send(json.dumps(config))
        self.ws.recv()
        self.sent = 0
        self.dropped = 0

    def on_stop(self) -> None:
        self.ws.close()

    @task
    def frame(self) -> None:
        started = time.perf_counter()
        exception = None
        length = 0
        try:
            self.ws.send(FRAMES[self.sent % len(FRAMES)])
            self.sent += 1
            message = json.loads(self.ws.recv(timeout=120))
            length = len(json.dumps(message))
            if message.get("type") != "result":
                exception = RuntimeError(f"{message.get('error')}: {message.get('detail')}")
            elif message["dropped"] > self.dropped:
                events.request.fire(request_type="WS", name="frames dropped", response_time=0,
                                    response_length=message["dropped"] - self.dropped, exception=None)  # fmt: skip
                self.dropped = message["dropped"]
        except Exception as exc:  # a closed socket, a timeout
            exception = exc
        events.request.fire(request_type="WS", name="/ws/stream result", response_time=(time.perf_counter() - started) * 1000,
                            response_length=length, exception=exception)  # fmt: skip
