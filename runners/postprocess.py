"""Task logic every family shares: label lookup, top-k, detections, mask outlines.

A family turns its raw outputs into the shared schemas with these, so that the same field means
the same thing whichever family answers (e.g. a mask in several parts has several outlines).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import cv2
import numpy as np

from yolo_toys.schemas import Box, Classification, Detection, Point, PredictOptions

LabelOf = Callable[[int], str]
D = TypeVar("D", bound=Detection)


def label_lookup(labels: Mapping[int, str]) -> LabelOf:
    """A class id's label; the id itself for ids the model has no name for."""
    return lambda class_id: labels.get(class_id, str(class_id))


def probability(score: float) -> float:
    return min(max(float(score), 0.0), 1.0)


def top_k(probs: np.ndarray, k: int, label_of: LabelOf) -> list[Classification]:
    """The k best classes, best first; equal scores keep class order."""
    order = np.argsort(-probs, kind="stable")[: min(k, probs.shape[0])]
    return [Classification(class_id=int(i), label=label_of(int(i)), score=float(probs[i])) for i in order]


def detections(xyxy: Iterable, scores: Iterable, class_ids: Iterable, label_of: LabelOf) -> list[Detection]:
    """Boxes in original-image pixels, in the order given."""
    return [
        Detection(box=Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]), score=probability(s), class_id=int(c), label=label_of(int(c)))
        for b, s, c in zip(np.asarray(xyxy).tolist(), np.asarray(scores).tolist(), np.asarray(class_ids).tolist(), strict=True)
    ]


def keep(items: list[D], options: PredictOptions) -> list[D]:
    """What the options ask for, for models that do not apply them themselves: classes, score order, max_det."""
    kept = [d for d in items if d.score >= options.conf and (options.classes is None or d.class_id in options.classes)]
    kept.sort(key=lambda d: -d.score)
    return kept[: options.max_det]


def polygons(mask: np.ndarray) -> list[list[Point]]:
    """The outer outlines of a binary mask, one polygon per part, in the mask's pixels."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[(float(x), float(y)) for x, y in c.reshape(-1, 2)] for c in contours if len(c) >= 3]
