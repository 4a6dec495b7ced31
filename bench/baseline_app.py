"""The app a user would write by hand instead of YOLO-Toys: FastAPI, one process, the model loaded at start-up.

Decode and predict run in the handler. The handler is a plain `def`, so FastAPI runs it in its thread
pool and the event loop stays free; a lock serialises the model, which is not thread-safe. Serves
`/detect` (Ultralytics) or `/classify` (transformers) with the same multipart field as YOLO-Toys.

    BASELINE_FAMILY=ultralytics BASELINE_MODEL=path/to/weights uvicorn bench.baseline_app:app
"""

from __future__ import annotations

import io
import os
import threading
from typing import Annotated

from fastapi import FastAPI, File, UploadFile
from PIL import Image

FAMILY = os.environ.get("BASELINE_FAMILY", "ultralytics")
WEIGHTS = os.environ["BASELINE_MODEL"]

app = FastAPI(title="hand-written baseline")
lock = threading.Lock()

if FAMILY == "ultralytics":
    from ultralytics import YOLO

    model = YOLO(WEIGHTS, task="detect")

    @app.post("/detect")
    def detect(image: Annotated[UploadFile, File()]) -> dict:
        picture = Image.open(io.BytesIO(image.file.read())).convert("RGB")
        with lock:
            result = model.predict(picture, verbose=False)[0]
        boxes = result.boxes
        return {"detections": [
            {"box": box, "score": score, "class_id": int(c), "label": result.names[int(c)]}
            for box, score, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True)
        ]}  # fmt: skip

else:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(WEIGHTS)
    classifier = AutoModelForImageClassification.from_pretrained(WEIGHTS).eval()

    @app.post("/classify")
    def classify(image: Annotated[UploadFile, File()]) -> dict:
        picture = Image.open(io.BytesIO(image.file.read())).convert("RGB")
        with lock, torch.inference_mode():
            probs = classifier(**processor(images=picture, return_tensors="pt")).logits.softmax(-1)[0]
        top = probs.topk(5)
        labels = classifier.config.id2label
        return {"top_k": [{"class_id": int(i), "label": labels[int(i)], "score": float(p)}
                          for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]}  # fmt: skip


@app.get("/health")
def health() -> dict:
    return {"ok": True}
