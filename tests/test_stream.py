"""`WS /ws/stream` through a real `bentoml serve`: ids and order, latest-frame-wins drops, tracking,
recovery from bad messages, disconnects, the connection limit and cross-socket batching."""

from __future__ import annotations

import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import Server, bus_jpg

pytestmark = pytest.mark.serve


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/ws/stream"


def recv(ws: ClientConnection, timeout: float = 120) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def configure(ws: ClientConnection, **config) -> dict:
    ws.send(json.dumps({"type": "config", **config}))
    answer = recv(ws)
    assert answer["type"] == "config", answer
    return answer["config"]


def pan_frames(n: int = 10, step: int = 8) -> list[bytes]:
    """A camera tilting down bus.jpg: full-width 810x600 crops moving down, the whole bus in view."""
    photo = Image.open(io.BytesIO(bus_jpg())).convert("RGB")
    frames = []
    for i in range(n):
        buf = io.BytesIO()
        photo.crop((0, 200 + i * step, 810, 800 + i * step)).save(buf, format="JPEG", quality=90)
        frames.append(buf.getvalue())
    return frames


def open_streams(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    values = [float(v) for v in re.findall(r"^yolo_toys_open_streams(?:\{[^}]*\})? (\S+)$", text, re.M)]
    return sum(values)


def test_config_ping_and_ordered_frame_ids(server: Server) -> None:
    with connect(ws_url(server), max_size=None) as ws:
        config = configure(ws, model="yolo11n", conf=0.3)
        assert config["model"] == "yolo11n" and config["conf"] == 0.3 and config["tracking"] is False
        ws.send(json.dumps({"type": "ping", "t": 42}))
        pong = recv(ws)
        assert pong["type"] == "pong" and pong["t"] == 42 and pong["server_time"] > 0
        frame = pan_frames(1)[0]
        for expected in range(3):
            ws.send(frame)
            message = recv(ws)
            assert message["type"] == "result" and message["frame_id"] == expected, message
            assert message["result"]["task"] == "detect" and message["result"]["model"] == "yolo11n"
            assert "bus" in {d["label"] for d in message["result"]["detections"]}
            assert message["dropped"] == 0 and message["server_ms"] >= message["queue_ms"] >= 0
            timings = message["result"]["timings"]
            assert message["server_ms"] >= timings["total_ms"] >= timings["inference_ms"] > 0  # filled, as on REST
        ws.send(json.dumps({"type": "frame", "id": 100}))
        ws.send(frame)
        assert recv(ws)["frame_id"] == 100
        ws.send(frame)
        assert recv(ws)["frame_id"] == 101


def test_fast_sender_latest_frame_wins(server: Server) -> None:
    frames = pan_frames(1) * 30
    with connect(ws_url(server), max_size=None) as ws:
        configure(ws, model="yolo11n")
        for frame in frames:
            ws.send(frame)
        results = []
        while not results or results[-1]["frame_id"] != len(frames) - 1:
            message = recv(ws)
            assert message["type"] == "result", message
            results.append(message)
    ids = [m["frame_id"] for m in results]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[0] == 0  # the first frame finds the worker idle
    dropped = results[-1]["dropped"]
    assert dropped > 0, "30 frames sent at once and none dropped: frames are queueing"
    assert len(results) + dropped == len(frames)
    # every answered frame waited at most for the one inference ahead of it, not for a queue
    assert max(m["queue_ms"] for m in results[1:]) < 20 * min(m["server_ms"] for m in results)


def test_tracking_keeps_ids_across_a_panning_sequence(server: Server) -> None:
    with connect(ws_url(server), max_size=None) as ws:
        configure(ws, model="yolo11n", tracking=True, tracker="bytetrack")
        per_frame = []
        for frame in pan_frames(10):
            ws.send(frame)
            message = recv(ws)
            assert message["type"] == "result", message
            per_frame.append(message["result"]["detections"])
        # a new config for the same model and task keeps the tracks; another model starts fresh ones
        configure(ws, model="yolo11n", tracking=True, tracker="bytetrack", conf=0.3)
        ws.send(pan_frames(10)[-1])
        per_frame.append(recv(ws)["result"]["detections"])
        configure(ws, model="yolov8n", tracking=True)
        ws.send(pan_frames(10)[-1])
        fresh = recv(ws)["result"]["detections"]
    bus_ids = [d["track_id"] for dets in per_frame for d in dets if d["label"] == "bus"]
    assert len(bus_ids) == len(per_frame) and len(set(bus_ids)) == 1 and None not in bus_ids, per_frame
    persons = [sorted(d["track_id"] for d in dets if d["label"] == "person") for dets in per_frame]
    assert len(persons[0]) >= 3 and None not in persons[0] and all(ids == persons[0] for ids in persons), persons
    assert max(d["track_id"] or 0 for d in fresh) <= len(fresh)  # ids restart at 1 for the new tracker


def test_botsort_tracker_and_fresh_state_per_connection(server: Server) -> None:
    for _ in range(2):
        with connect(ws_url(server), max_size=None) as ws:
            configure(ws, model="yolo11n", tracking=True, tracker="botsort")
            ws.send(pan_frames(1)[0])
            ids = [d["track_id"] for d in recv(ws)["result"]["detections"] if d["track_id"] is not None]
            assert ids and min(ids) == 1  # a new connection starts its own track ids


def test_bad_messages_get_errors_and_the_socket_stays_open(server: Server) -> None:
    with connect(ws_url(server), max_size=None) as ws:
        cases = [
            ("not json", "invalid JSON"),
            (json.dumps([1, 2]), "invalid message"),
            (json.dumps({"type": "shout"}), "invalid message"),
            (json.dumps({"type": "config", "colour": "red"}), "invalid message"),
            (json.dumps({"type": "config", "conf": 2}), "invalid message"),
            (json.dumps({"type": "config", "tracker": "sort"}), "invalid message"),
            (json.dumps({"type": "config", "task": "caption"}), "task not streamable"),
            (json.dumps({"type": "config", "task": "classify", "tracking": True}), "tracking not supported"),
            (json.dumps({"type": "frame", "id": -1}), "invalid message"),
        ]
        for text, error in cases:
            ws.send(text)
            message = recv(ws)
            assert message["type"] == "error" and message["error"] == error, (text, message)
        configure(ws, model="nope")
        ws.send(pan_frames(1)[0])
        message = recv(ws)
        assert message == {"type": "error", "error": "unknown model", "detail": message["detail"], "frame_id": 0}
        configure(ws, model="yolo11n")
        for frame, error in [(b"garbage", "unsupported image format"), (b"\xff\xd8\xff" + bytes(100), "undecodable image"),
                             (b"\xff\xd8\xff" + bytes(9 * 1024 * 1024), "frame too large")]:  # fmt: skip
            ws.send(frame)
            message = recv(ws)
            assert message["type"] == "error" and message["error"] == error, message
            assert isinstance(message["frame_id"], int)
        ws.send(pan_frames(1)[0])
        assert recv(ws)["type"] == "result"


def test_disconnect_mid_inference_leaves_nothing_behind(server: Server) -> None:
    for _ in range(3):
        with connect(ws_url(server), max_size=None) as ws:
            configure(ws, model="yolo11n-seg")
            ws.send(pan_frames(1)[0])
        # closed while the frame is in inference
    deadline = time.monotonic() + 30
    while open_streams(server) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_streams(server) == 0
    assert server.healthy()
    with connect(ws_url(server), max_size=None) as ws:
        configure(ws)
        ws.send(pan_frames(1)[0])
        assert recv(ws)["type"] == "result"
    log = server.log_text()
    assert "Traceback" not in log, log[-3000:]


def test_connection_limit_closes_with_1013(server: Server) -> None:
    limit = 8  # YOLO_TOYS_MAX_STREAMS in the test environment
    with ExitStack() as stack:
        sockets = [stack.enter_context(connect(ws_url(server), max_size=None)) for _ in range(limit)]
        for ws in sockets:
            ws.send(json.dumps({"type": "ping"}))
            assert recv(ws)["type"] == "pong"
        extra = stack.enter_context(connect(ws_url(server), max_size=None))
        with pytest.raises(ConnectionClosed) as info:
            extra.recv(timeout=30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        assert "try again" in info.value.rcvd.reason
    time.sleep(0.5)
    with connect(ws_url(server), max_size=None) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert recv(ws)["type"] == "pong"


def _batch_sum(server: Server, model: str) -> tuple[float, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    total = [0.0, 0.0]
    for kind, value in re.findall(rf'^yolo_toys_model_batch_size_(sum|count)\{{model="{model}"\}} (\S+)$', text, re.M):
        total[0 if kind == "sum" else 1] += float(value)
    return total[0], total[1]


def test_many_sockets_share_batches(server: Server) -> None:
    frame = pan_frames(1)[0]

    def one_stream(_: int) -> list[dict]:
        with connect(ws_url(server), max_size=None) as ws:
            configure(ws, model="yolov8n")
            answers = []
            for _ in range(4):
                ws.send(frame)
                answers.append(recv(ws))
            return answers

    with ThreadPoolExecutor(6) as pool:  # warm the dispatcher
        list(pool.map(one_stream, range(6)))
    before = _batch_sum(server, "yolov8n")
    with ThreadPoolExecutor(6) as pool:
        streams = list(pool.map(one_stream, range(6)))
    after = _batch_sum(server, "yolov8n")
    assert all(m["type"] == "result" for answers in streams for m in answers)
    images, calls = after[0] - before[0], after[1] - before[1]
    assert images == 24 and calls < images, (images, calls)
    sizes = {m["result"]["timings"]["batch_size"] for answers in streams for m in answers}
    assert max(sizes) > 1
    first = np.array([[d["box"]["x1"], d["box"]["y1"]] for d in streams[0][0]["result"]["detections"]])
    for answers in streams:  # batch-mates do not change a result
        other = np.array([[d["box"]["x1"], d["box"]["y1"]] for d in answers[-1]["result"]["detections"]])
        np.testing.assert_allclose(other, first, atol=1e-3)


# ---- server-sent events over an uploaded video ---------------------------------------------------


def make_video(path, n: int = 20, fps: float = 10.0) -> bytes:
    """An MJPG AVI of the camera tilt above (OpenCV writes it without any codec of the system)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (810, 600))
    for frame in pan_frames(n, step=8):
        writer.write(cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR))
    writer.release()
    return path.read_bytes()


def sse_events(body: str) -> list[tuple[str, dict]]:
    """Parse text/event-stream framing strictly: every block is `event:` then `data:`, blank-line separated."""
    assert body.endswith("\n\n"), body[-200:]
    events = []
    for block in body.strip("\n").split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][len("event: "):], json.loads(lines[1][len("data: "):])))
    return events


def post_video(server: Server, data: bytes, **fields) -> httpx.Response:
    form = {k: json.dumps(v) if isinstance(v, (list, bool)) else str(v) for k, v in fields.items()}
    return httpx.post(f"{server.url}/stream/video", files={"video": ("clip.avi", data, "video/x-msvideo")},
                      data=form, timeout=300)  # fmt: skip


def test_video_sse_framing_stride_and_tracking(server: Server, tmp_path) -> None:
    resp = post_video(server, make_video(tmp_path / "clip.avi"), model="yolo11n", stride=3, tracking=True)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    kinds = [kind for kind, _ in events]
    assert kinds == ["result"] * 7 + ["end"], kinds
    frames = [data["frame"] for kind, data in events if kind == "result"]
    assert frames == list(range(0, 20, 3))
    stamps = [data["timestamp_ms"] for kind, data in events if kind == "result"]
    assert stamps == pytest.approx([f * 100.0 for f in frames], abs=1.0)  # 10 fps
    assert events[-1][1] == {"frames_read": 20, "results": 7}
    for _, data in events[:-1]:
        timings = data["result"]["timings"]
        assert timings["total_ms"] >= timings["inference_ms"] > 0  # filled, as on REST
    bus_ids = {d["track_id"] for kind, data in events if kind == "result" for d in data["result"]["detections"]
               if d["label"] == "bus"}  # fmt: skip
    assert len(bus_ids) == 1 and None not in bus_ids


def test_video_cut_short_ends_with_an_error_event(server: Server, tmp_path) -> None:
    data = make_video(tmp_path / "clip.avi")
    resp = post_video(server, data[: len(data) // 2], model="yolo11n", stride=4)
    assert resp.status_code == 200
    events = sse_events(resp.text)
    assert [k for k, _ in events][-1] == "error" and "end" not in [k for k, _ in events]
    error = events[-1][1]
    assert error["error"] == "video ended early" and 0 < error["frame"] < 20 and "of the 20 frames" in error["detail"]
    assert all(kind == "result" for kind, _ in events[:-1]) and len(events) > 1


@pytest.mark.parametrize(
    ("fields", "payload", "status", "error"),
    [
        ({}, b"not a video at all", 400, "undecodable video"),
        ({"task": "caption"}, None, 422, "task not streamable"),
        ({"model": "nope"}, None, 404, "unknown model"),
        ({"stride": 0}, None, 400, None),
    ],
)
def test_video_bad_requests(server: Server, tmp_path, fields: dict, payload: bytes | None, status: int, error) -> None:
    resp = post_video(server, payload if payload is not None else make_video(tmp_path / "clip.avi", n=3), **fields)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail"} and (error is None or body["error"] == error)
