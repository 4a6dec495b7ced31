"""The `/annotate` renderer: each task's drawing lands where its result says, and nowhere else."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from yolo_toys import drawing
from yolo_toys.schemas import (
    Box,
    Classification,
    ClassifyResult,
    Detection,
    DetectResult,
    ImageSize,
    Keypoint,
    ObbResult,
    OrientedDetection,
    PoseInstance,
    PoseResult,
    RotatedBox,
    SegmentInstance,
    SegmentResult,
    Timings,
)

W, H = 320, 240
GREY = 128
# Flat grey survives JPEG almost exactly; ringing next to drawn edges stays under this.
NOISE = 8


def grey(w: int = W, h: int = H) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def common(w: int = W, h: int = H) -> dict:
    return {"model": "test", "image": ImageSize(width=w, height=h), "timings": Timings()}


def decode(data: bytes, w: int = W, h: int = H) -> np.ndarray:
    """Check the bytes are a JPEG of the input's size and return its pixels as ints."""
    assert data[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        assert im.size == (w, h)
        assert im.mode == "RGB"
        return np.asarray(im).astype(np.int32)


def diff(px: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
    """Per-pixel largest channel distance from the grey background in a region."""
    return np.abs(px[ys, xs] - GREY).max(axis=2)


def assert_drawn(px: np.ndarray, ys: slice, xs: slice) -> None:
    assert diff(px, ys, xs).max() > 40, f"nothing drawn in rows {ys} cols {xs}"


def assert_grey(px: np.ndarray, ys: slice, xs: slice) -> None:
    assert diff(px, ys, xs).max() <= NOISE, f"unexpected drawing in rows {ys} cols {xs}"


def detection(x1: float, y1: float, x2: float, y2: float, class_id: int = 0) -> Detection:
    return Detection(box=Box(x1=x1, y1=y1, x2=x2, y2=y2), score=0.87, class_id=class_id, label="person")


def det_fields(x1: float, y1: float, x2: float, y2: float, class_id: int = 0) -> dict:
    """Detection fields, to build the instance types that extend Detection."""
    return detection(x1, y1, x2, y2, class_id).model_dump()


def coco_keypoints(low: frozenset[str] = frozenset()) -> list[Keypoint]:
    """A standing figure inside the box (100, 40)-(220, 230); names in `low` get score 0.2."""
    xy = {
        "nose": (160, 60), "left_eye": (166, 55), "right_eye": (154, 55), "left_ear": (172, 58),
        "right_ear": (148, 58), "left_shoulder": (190, 90), "right_shoulder": (130, 90),
        "left_elbow": (200, 130), "right_elbow": (120, 130), "left_wrist": (205, 165),
        "right_wrist": (115, 165), "left_hip": (180, 160), "right_hip": (140, 160),
        "left_knee": (182, 195), "right_knee": (138, 195),
        "left_ankle": (184, 222), "right_ankle": (136, 222),
    }
    return [Keypoint(name=n, x=x, y=y, score=0.2 if n in low else 0.9) for n, (x, y) in xy.items()]


# ---- detect ------------------------------------------------------------------------------------


def test_detect_draws_box_outline_and_label_only() -> None:
    result = DetectResult(**common(), detections=[detection(40, 60, 160, 200)])
    px = decode(drawing.render(grey(), result))
    assert_drawn(px, slice(100, 180), slice(38, 44))  # left edge
    assert_drawn(px, slice(100, 180), slice(156, 162))  # right edge
    assert_drawn(px, slice(196, 202), slice(60, 140))  # bottom edge
    assert_drawn(px, slice(45, 58), slice(42, 80))  # label tag above the box
    assert_grey(px, slice(80, 180), slice(55, 145))  # outline only: inside stays grey
    assert_grey(px, slice(0, 40), slice(200, W))
    assert_grey(px, slice(210, H), slice(180, W))


def test_detect_colour_follows_class_id() -> None:
    def edge_colour(class_id: int) -> np.ndarray:
        big = common(1000, 800)
        result = DetectResult(**big, detections=[detection(100, 200, 600, 700, class_id=class_id)])
        px = decode(drawing.render(grey(1000, 800), result, quality=100), 1000, 800)
        return px[300:600, 101:103].reshape(-1, 3).mean(axis=0)

    red = edge_colour(0)
    assert np.abs(red - drawing.PALETTE[0]).max() < 30
    assert np.abs(edge_colour(len(drawing.PALETTE)) - red).max() < 3  # palette wraps around
    assert np.abs(edge_colour(14) - drawing.PALETTE[14]).max() < 30
    assert drawing.color_for(3) == drawing.color_for(3 + len(drawing.PALETTE)) != drawing.color_for(4)


def test_detect_label_moves_inside_when_box_touches_top() -> None:
    result = DetectResult(**common(), detections=[detection(40, 0, 160, 200)])
    px = decode(drawing.render(grey(), result))
    assert_drawn(px, slice(3, 12), slice(45, 80))


# ---- segment -----------------------------------------------------------------------------------


def test_segment_fills_polygon_translucently() -> None:
    square = [(60.0, 60.0), (140.0, 60.0), (140.0, 140.0), (60.0, 140.0)]
    inst = SegmentInstance(**det_fields(50, 50, 150, 150, class_id=2), polygons=[square])
    px = decode(drawing.render(grey(), SegmentResult(**common(), instances=[inst])))
    expected = (1 - drawing.SEGMENT_ALPHA) * GREY + drawing.SEGMENT_ALPHA * np.array(drawing.PALETTE[2])
    inside = px[75:125, 75:125].reshape(-1, 3).mean(axis=0)
    assert np.abs(inside - expected).max() < 10
    assert_drawn(px, slice(70, 130), slice(48, 54))  # box edge
    assert_grey(px, slice(60, 140), slice(180, W))
    assert_grey(px, slice(170, H), slice(0, W))


def test_segment_skips_degenerate_polygons() -> None:
    degenerate = [[], [(80.0, 80.0)], [(80.0, 80.0), (120.0, 120.0)]]
    inst = SegmentInstance(**det_fields(50, 50, 150, 150), polygons=degenerate)
    px = decode(drawing.render(grey(), SegmentResult(**common(), instances=[inst])))
    assert_grey(px, slice(70, 130), slice(70, 130))
    assert_drawn(px, slice(70, 130), slice(48, 54))


# ---- pose --------------------------------------------------------------------------------------


def test_pose_draws_confident_keypoints_and_skeleton() -> None:
    tail = Keypoint(name="tail", x=260, y=200, score=0.95)
    keypoints = [*coco_keypoints(low=frozenset({"left_elbow"})), tail]
    inst = PoseInstance(**det_fields(100, 40, 220, 230), keypoints=keypoints)
    px = decode(drawing.render(grey(W + 40, H), PoseResult(**common(W + 40, H), instances=[inst])), W + 40, H)
    assert_drawn(px, slice(88, 93), slice(158, 163))  # shoulder-shoulder limb, midway
    assert_drawn(px, slice(87, 94), slice(187, 194))  # left shoulder dot
    assert_drawn(px, slice(128, 133), slice(117, 124))  # right elbow dot
    assert_drawn(px, slice(196, 205), slice(255, 266))  # unknown name: dot, no limb
    assert_grey(px, slice(125, 136), slice(196, 205))  # left elbow below threshold: no dot
    assert_grey(px, slice(108, 112), slice(193, 197))  # ... and no limb to it
    assert_grey(px, slice(180, 190), slice(240, 250))  # nothing links the unknown keypoint
    assert_drawn(px, slice(100, 200), slice(98, 104))  # box edge


# ---- obb ---------------------------------------------------------------------------------------


def test_obb_draws_closed_rotated_outline() -> None:
    corners = [(160.0, 60.0), (220.0, 120.0), (160.0, 180.0), (100.0, 120.0)]
    rbox = RotatedBox(cx=160, cy=120, width=84.85, height=84.85, angle=45, corners=corners)
    det = OrientedDetection(rbox=rbox, score=0.7, class_id=5, label="ship")
    px = decode(drawing.render(grey(), ObbResult(**common(), detections=[det])))
    for x, y in [(190, 90), (190, 150), (130, 150), (130, 90)]:  # midpoints of all 4 sides
        assert_drawn(px, slice(y - 3, y + 4), slice(x - 3, x + 4))
    assert_grey(px, slice(105, 135), slice(145, 175))
    assert_grey(px, slice(0, 40), slice(0, 60))
    assert_grey(px, slice(190, H), slice(240, W))
    assert_drawn(px, slice(40, 58), slice(162, 190))  # label above the top corner


# ---- classify ----------------------------------------------------------------------------------


def test_classify_panel_in_top_left_corner() -> None:
    top_k = [Classification(class_id=i, label=f"class{i}", score=0.5 - 0.1 * i) for i in range(3)]
    px = decode(drawing.render(grey(), ClassifyResult(**common(), top_k=top_k)))
    assert_drawn(px, slice(0, 12), slice(0, 40))
    assert np.median(px[0:10, 0:40]) < GREY - 30  # darkened panel under the text
    assert_grey(px, slice(120, H), slice(0, W))
    assert_grey(px, slice(0, H), slice(200, W))


# ---- edge cases --------------------------------------------------------------------------------


EMPTY = [
    DetectResult(**common(), detections=[]),
    SegmentResult(**common(), instances=[]),
    PoseResult(**common(), instances=[]),
    ClassifyResult(**common(), top_k=[]),
    ObbResult(**common(), detections=[]),
]


@pytest.mark.parametrize("result", EMPTY, ids=lambda r: r.task)
def test_zero_instances_leave_image_as_is(result) -> None:
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], axis=2).astype(np.uint8)
    delta = np.abs(decode(drawing.render(rgb, result)) - rgb.astype(np.int32))
    assert delta.mean() < 1.5
    assert delta.max() <= NOISE


def test_input_array_is_not_modified() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    before = rgb.copy()
    inst = SegmentInstance(
        **det_fields(20, 20, 200, 200), polygons=[[(30.0, 30.0), (190.0, 40.0), (100.0, 190.0)]]
    )
    drawing.render(rgb, SegmentResult(**common(), instances=[inst]))
    pose = PoseInstance(**det_fields(100, 40, 220, 230), keypoints=coco_keypoints())
    drawing.render(rgb, PoseResult(**common(), instances=[pose]))
    top_k = [Classification(class_id=1, label="cat", score=0.9)]
    drawing.render(rgb, ClassifyResult(**common(), top_k=top_k))
    assert np.array_equal(rgb, before)


def test_non_contiguous_input() -> None:
    rgb = grey(W * 2, H)[:, ::2]
    assert not rgb.flags.c_contiguous
    px = decode(drawing.render(rgb, DetectResult(**common(), detections=[detection(40, 60, 160, 200)])))
    assert_drawn(px, slice(100, 180), slice(38, 44))


def test_tiny_image_with_every_task() -> None:
    size = common(8, 8)
    triangle = [(1.0, 1.0), (6.0, 1.0), (3.0, 6.0)]
    square = [(2.0, 2.0), (6.0, 2.0), (6.0, 6.0), (2.0, 6.0)]
    results = [
        DetectResult(**size, detections=[detection(1, 1, 6, 6)]),
        SegmentResult(**size, instances=[SegmentInstance(**det_fields(1, 1, 6, 6), polygons=[triangle])]),
        PoseResult(**size, instances=[PoseInstance(**det_fields(0, 0, 8, 8), keypoints=coco_keypoints())]),
        ClassifyResult(**size, top_k=[Classification(class_id=0, label="a rather long label", score=0.99)]),
        ObbResult(
            **size,
            detections=[
                OrientedDetection(
                    rbox=RotatedBox(cx=4, cy=4, width=4, height=4, angle=0, corners=square),
                    score=0.5, class_id=1, label="x",
                )
            ],
        ),
    ]
    for result in results:
        decode(drawing.render(grey(8, 8), result), 8, 8)
    decode(drawing.render(grey(1, 1), results[0]), 1, 1)


def test_coordinates_outside_image() -> None:
    huge, inf, nan = 1e12, math.inf, math.nan
    detections = [
        detection(-huge, 50, 100, huge),  # only the right edge is inside the image
        detection(-huge, -huge, -huge / 2, -10),  # entirely outside
        detection(1000, 1000, 2000, 2000),
        detection(inf, 0, 10, 10),
        detection(nan, nan, nan, nan),
    ]
    px = decode(drawing.render(grey(), DetectResult(**common(), detections=detections)))
    assert_drawn(px, slice(100, 200), slice(96, 102))
    assert_grey(px, slice(100, 200), slice(110, W))

    far_poly = [(-huge, -huge), (huge, -huge), (huge, huge), (-huge, huge)]
    polygons = [far_poly, [(inf, 0), (1, 1), (2, 2)]]
    inst = SegmentInstance(**det_fields(-huge, -huge, huge, huge), polygons=polygons)
    px = decode(drawing.render(grey(), SegmentResult(**common(), instances=[inst])))
    assert diff(px, slice(100, 140), slice(100, 200)).min() > 30  # covering polygon fills everything

    keypoints = [
        Keypoint(name="left_shoulder", x=-huge, y=-huge, score=1.0),
        Keypoint(name="right_shoulder", x=huge, y=huge, score=1.0),
        Keypoint(name="nose", x=nan, y=5, score=1.0),
        Keypoint(name="left_eye", x=5, y=inf, score=1.0),
    ]
    pose = PoseInstance(**det_fields(0, 0, W, H), keypoints=keypoints)
    px = decode(drawing.render(grey(), PoseResult(**common(), instances=[pose])))
    assert_drawn(px, slice(118, 123), slice(118, 123))  # the limb runs along y = x across the image
    assert_grey(px, slice(150, 200), slice(40, 80))

    corners = [(-huge, 0.0), (huge, 0.0), (huge, 100.0), (-huge, 100.0)]
    rbox = RotatedBox(cx=0, cy=50, width=2 * huge, height=100, angle=0, corners=corners)
    det = OrientedDetection(rbox=rbox, score=0.5, class_id=0, label="long")
    px = decode(drawing.render(grey(), ObbResult(**common(), detections=[det])))
    assert_drawn(px, slice(97, 102), slice(100, 200))  # bottom side, across the image


def test_coordinates_rescaled_to_a_resized_image() -> None:
    result = DetectResult(**common(2 * W, 2 * H), detections=[detection(80, 120, 320, 400)])
    px = decode(drawing.render(grey(), result))
    assert_drawn(px, slice(100, 180), slice(38, 44))
    assert_grey(px, slice(100, 180), slice(70, 150))


def test_rejects_bad_input() -> None:
    result = DetectResult(**common(), detections=[])
    with pytest.raises(ValueError):
        drawing.render(grey()[..., 0], result)
    with pytest.raises(ValueError):
        drawing.render(grey().astype(np.float32), result)
    with pytest.raises(ValueError):
        drawing.render(np.zeros((0, 5, 3), np.uint8), result)
    with pytest.raises(ValueError):
        drawing.render(grey(), result, quality=0)
