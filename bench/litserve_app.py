"""The LitServe peer: the same Ultralytics model served as LitServe's docs write an API (issue 13).

`decode_request` -> `predict` -> `encode_response` in a `LitAPI`, one inference worker on the given
cores, LitServe's defaults otherwise (no batching). Serves `/detect` with the same multipart field as
YOLO-Toys and the hand-written baseline.

    BASELINE_MODEL=path/to/weights python -m bench.litserve_app --port 8000

No `from __future__ import annotations` here: LitServe compares `decode_request`'s annotation with
FastAPI's `Request` class to hand it the parsed form; as a string it hands over the request itself,
which cannot be queued to the worker process (a 500 for every upload).
"""

import argparse
import os
from typing import Any

import litserve as ls
from fastapi import Request


class YoloAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        from ultralytics import YOLO

        self.model = YOLO(os.environ["BASELINE_MODEL"], task="detect")

    def decode_request(self, request: Request) -> Any:
        import cv2
        import numpy as np

        return cv2.imdecode(np.frombuffer(request["image"].file.read(), np.uint8), cv2.IMREAD_COLOR)

    def predict(self, image: Any) -> Any:
        return self.model.predict(image, verbose=False)[0]

    def encode_response(self, result: Any) -> dict:
        boxes = result.boxes
        return {"detections": [
            {"box": box, "score": score, "class_id": int(c), "label": result.names[int(c)]}
            for box, score, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True)
        ]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ls.LitServer(YoloAPI(api_path="/detect"), accelerator="cpu", workers_per_device=1, timeout=300)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
