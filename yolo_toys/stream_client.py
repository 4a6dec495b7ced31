"""Stream a video file or a camera through `WS /ws/stream` and print one JSON result per line.

    python -m yolo_toys.stream_client video.mp4 --url ws://127.0.0.1:3000/ws/stream --model yolo11n --tracking
    python -m yolo_toys.stream_client 0 --task pose            # camera 0

The sender reads frames at the source's pace (or `--fps`), the receiver prints results as they come;
the server drops frames it cannot keep up with (latest frame wins) and says how many.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import cv2
from websockets.sync.client import connect


def frames(source: str, fps: float | None = None, jpeg_quality: int = 85) -> Iterator[bytes]:
    """JPEG-encoded frames of a video file, or of a camera given by its index ("0")."""
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise SystemExit(f"cannot open video source {source!r}")
    pace = 1.0 / fps if fps else (1.0 / capture.get(cv2.CAP_PROP_FPS) if capture.get(cv2.CAP_PROP_FPS) > 0 else 0.0)
    try:
        while True:
            started = time.perf_counter()
            ok, image = capture.read()
            if not ok:
                return
            encoded, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if encoded:
                yield buf.tobytes()
            time.sleep(max(0.0, pace - (time.perf_counter() - started)))
    finally:
        capture.release()


def stream(source: str, url: str, config: dict[str, Any], fps: float | None = None, linger: float = 5.0,
           api_key: str | None = None) -> Iterator[dict]:  # fmt: skip
    """Send `config`, then the source's frames; yield every message the server answers.

    After the last frame, wait up to `linger` seconds for the results still in flight. `api_key` is
    sent as `Authorization: Bearer` (servers with `YOLO_TOYS_API_KEYS`).
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    with connect(url, max_size=None, additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "config", **config}))
        yield json.loads(ws.recv())
        done = threading.Event()
        sent = [0]

        def send_all() -> None:
            try:
                for frame in frames(source, fps):
                    ws.send(frame)
                    sent[0] += 1
            finally:
                done.set()

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        deadline = None
        while True:
            if done.is_set() and deadline is None:
                deadline = time.monotonic() + linger
            timeout = 0.5 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = json.loads(ws.recv(timeout=timeout))
            except TimeoutError:
                if deadline is not None:
                    return
                continue
            yield message
            if done.is_set() and message.get("frame_id") == sent[0] - 1:
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolo_toys.stream_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("source", help="video file, or camera index such as 0")
    parser.add_argument("--url", default="ws://127.0.0.1:3000/ws/stream")
    parser.add_argument("--model")
    parser.add_argument("--task", default="detect", choices=["detect", "segment", "pose", "classify", "obb"])
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--tracking", action="store_true")
    parser.add_argument("--tracker", default="bytetrack", choices=["bytetrack", "botsort"])
    parser.add_argument("--fps", type=float, help="send at most this many frames per second")
    parser.add_argument("--api-key", default=os.environ.get("YOLO_TOYS_API_KEY"),
                        help="the server's API key (default: $YOLO_TOYS_API_KEY)")  # fmt: skip
    args = parser.parse_args(argv)
    config = {"task": args.task, "conf": args.conf, "tracking": args.tracking, "tracker": args.tracker}
    if args.model:
        config["model"] = args.model
    for message in stream(args.source, args.url, config, args.fps, api_key=args.api_key):
        print(json.dumps(message), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
