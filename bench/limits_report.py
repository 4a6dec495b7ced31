"""docs/limits.md from the JSON that `python -m bench.limits` writes.

    python -m bench.limits_report docs/limits.json   # re-render without re-measuring
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LIMITS = [  # setting, environment variable, what it bounds
    ("max_upload_bytes", "YOLO_TOYS_MAX_UPLOAD_BYTES", "the uploaded file (the front refuses more with 413, before reading on)"),
    ("max_pixels", "YOLO_TOYS_MAX_PIXELS", "width x height of the decoded image, read from the header before decoding (413); "
     "also the pixels one inference call takes at once, and half of what a batch holds decoded at once"),
    ("max_input_aspect", "YOLO_TOYS_MAX_INPUT_ASPECT", "the most elongated image a model's resize takes as it is: "
     "beyond it a centre-cropping classifier gets the central part, Depth Anything a smaller copy, a model that "
     "resizes the short side without cropping refuses it (422)"),
    ("max_imgsz", "YOLO_TOYS_MAX_IMGSZ", "the `imgsz` a request may ask of an Ultralytics model (422 beyond)"),
    ("max_mask_pixels", "YOLO_TOYS_MAX_MASK_PIXELS", "`max_det` x imgsz² of an Ultralytics instance segmentation (422 beyond)"),
    ("max_class_scores", "YOLO_TOYS_MAX_CLASS_SCORES", "classes x pixels of a semantic segmentation's upsampled scores: "
     "the class map of a larger image is made at a lower resolution, its outlines scaled to the image"),
    ("max_rotated_nms", "YOLO_TOYS_MAX_ROTATED_NMS", "candidates entering an OBB model's rotated NMS (the best ones)"),
]  # fmt: skip

RULES = """\
## The rule per task

Every request is checked in the runner, after the header is read and before any model work: the
image is decoded only within the pixel limit, then the family's `fit` (runners/family.py) looks at
what the task's preprocessing would make of it and gives the model the image, a part of it, or a
smaller copy, or answers a 4xx that names the limit. Results always describe the uploaded image: its
size, and boxes, outlines, depth maps and annotated images in its coordinates.

| task | model family | what the preprocessing does | rule |
|---|---|---|---|
| detect, pose, obb | Ultralytics | letterbox: the long side to `imgsz`, any aspect | `imgsz` at most `max_imgsz`; OBB: the best `max_rotated_nms` candidates enter its NMS, whose cost is their count squared (Ultralytics takes 30,000: 8,400 candidates cost 12 s and 1.6 GB at 640 px, 30,000 over 20 GB) |
| segment | Ultralytics | letterbox, then one mask per detection at the letterboxed size | also `max_det` x imgsz² at most `max_mask_pixels` (the defaults, 300 at 640, are at the limit) |
| classify | Ultralytics | short side to 224, centre crop | an image more elongated than `max_input_aspect` is cut to its central part of that aspect first: the same answer (the crop only ever saw it), without the 224 x 4,480,000 resize of a 1 x 20,000 image |
| detect (DETR) | transformers | short side to 800, long side at most 1,333 | bounded; an image so thin that a side would become 0 pixels is refused (422, with the aspect ratio it can take) |
| detect (OWL-ViT), classify (ViT), caption, vqa (BLIP), segment (SegFormer) | transformers | a fixed size (768, 224, 384, 512) | bounded; a side longer than the resize can hold between its two passes is shrunk first (a 1 x 40,000,000 image resized to 224 x 224 width first holds 40,000,000 x 224 pixels between them) |
| zero_shot_classify (CLIP) | transformers | short side to 224, centre crop | as Ultralytics classify: the central part (the processor's pixels are the same, bit for bit) |
| depth (Depth Anything) | transformers | keeps the aspect ratio, scales as little as possible, multiple of 14 | an input over `max_input_aspect` x 518² (a 2,000 x 20,000 image would be 518 x 5,180, 13,690 tokens) gets a copy within 518 x 518; a side that would become 0 is refused (422); the depth PNG is at the image's size |
| segment (SegFormer) | transformers | fixed 512 | the class map is upsampled to at most `max_class_scores` / classes pixels (and 4.2 MP), outlines scaled to the image (150 classes at 40 MP would be 24 GB) |
| annotate | both | draws the results on the uploaded image | an image longer than 8,192 px is drawn on a copy scaled down to it (filling an outline costs a pass per row: 300 masks on a 1 x 40,000,000 image took 47 s; JPEG holds 65,500 px a side at most) |

In a batch, the runner decodes at most 2 x `max_pixels` before running what it has decoded, and one
inference call takes at most `max_pixels` (or one image): a batch of 32 images of 40 MP would
otherwise hold 7.7 GB decoded, and a transformers processor converts a whole call's images at once.

Before these limits (measured on this machine, one request or one call at a time):

| request | before | now |
|---|---|---|
| `/classify` (yolo11n-cls) 1 x 20,000 PNG (165 bytes) | +3.9 GB runner memory, 5-17 s, the requests behind it 503 | the central 1 x 2 part: 0.04 s, nothing added, the same answer |
| `/zero_shot_classify` (CLIP B/32) 1 x 20,000 | the processor alone: +7 GB, 7.6 s | the central part: 1.4 s (the first CLIP request) |
| `/depth` (Depth Anything small) 2,000 x 20,000 | a 518 x 5,180 input, 13,690 tokens (518 x 2,072 alone took 20 s) | a 518 x 56 input |
| `/segment` (SegFormer-B0, 150 classes) 6,324 x 6,324 | 150 x 40 MP upsampled scores: 24 GB, the runner killed (OOM) | a 945 x 945 class map: 2.5 s |
| `/segment` (yolo11n-seg) `imgsz=4096` | over 23 GB, the runner killed (OOM) | 422 |
| `/segment` (yolo11n-seg) conf 0, `max_det=1000` | +2 GB, 7-11 s (1,280 px: 8.4 GB, 48 s) | 422 |
| `/obb` conf 0 (640 px; 1,280 px) | 12 s, +1.6 GB (183 s, +20.7 GB) | 1.5 s, +0.4 GB (2.2 s, +0.45 GB) |
| `/detect` (OWL-ViT) 1 x 40,000,000 | the tests' 64 px model: 47 s in the processor's resize (7.7 GB between its two passes; 92 GB at 768 px) | 5.4 s (B/32, 768 px) |
| `/annotate` segment, conf 0, 1 x 40,000,000 | 47 s holding the runner (its probe failed: 503 for every request) | 5.2 s |
| `/annotate` of an image longer than 65,500 px | 500 (JPEG cannot hold it) | 200, drawn at 8,192 px |

What stays, by design: the decode of an image within the pixel limit (a 40 MP PNG: 120 MB of RGB
and as much again in the other channel order; a 1 x 40,000,000 one several times that, as PIL keeps a
pointer per row), and a model's own cost at its input size (BLIP's generation grows with
`max_new_tokens`). The first request to a model also pages its weights in (the runner's memory grows
once by the model's size): "over before" is what the request added to the runner's memory just
before it.
"""


def _mb(value: float) -> str:
    return f"{value:,.0f}"


def _answer(row: dict) -> str:
    if row["concurrent"] > 1:
        return ", ".join(f"{n} x {s}" for s, n in sorted(row["statuses"].items()))
    return str(row["status"]) if row["status"] == 200 else f"{row['status']}: {row['detail']}"


def _task_table(task: str, rows: list[dict]) -> list[str]:
    lines = [f"### {task}", "",
             "| model | options | image | answer | time (s) | runner peak (MB) | over before (MB) | front peak (MB) | load |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        image = f"{r['concurrent']} x {r['shape']} at once" if r["concurrent"] > 1 else r["shape"]
        lines.append(f"| {r['model']} | {r['options']} | {image} | {_answer(r)} | {r['seconds']:.2f} | "
                     f"{_mb(r['runner_peak_mb'])} | {_mb(r['runner_peak_mb'] - r['runner_idle_mb'])} | {_mb(r['front_peak_mb'])} | "
                     f"{r.get('load', 0):.1f} |")  # fmt: skip
    return [*lines, ""]


def _worst(rows: list[dict]) -> list[str]:
    """One line per task and model: the worst of its requests sent alone."""
    models: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["concurrent"] == 1:
            models.setdefault((row["task"], row["model"]), []).append(row)
    lines = ["| task | model | runner | worst time (s) | most one request added (MB) | runner peak (MB) | answers |",
             "|---|---|---|---:|---:|---:|---|"]  # fmt: skip
    for (task, model), group in models.items():
        statuses = sorted({str(r["status"]) for r in group})
        lines.append(f"| {task} | {model} | {group[0]['runner']} | {max(r['seconds'] for r in group):.1f} | "
                     f"{_mb(max(r['runner_peak_mb'] - r['runner_idle_mb'] for r in group))} | "
                     f"{_mb(max(r['runner_peak_mb'] for r in group))} | {', '.join(statuses)} |")  # fmt: skip
    return lines


def _processes(rows: list[dict], idle: dict) -> list[str]:
    """The most memory each process held during the whole run (every request, the batches included)."""
    peaks: dict[str, float] = {"yolo_toys": max(r["front_peak_mb"] for r in rows)}
    for row in rows:
        peaks[row["runner"]] = max(peaks.get(row["runner"], 0), row["runner_peak_mb"])
    return ["| process | RSS at start-up (MB) | peak during the run (MB) |", "|---|---:|---:|",
            *[f"| {name} | {_mb(idle.get(name, 0))} | {_mb(peak)} |" for name, peak in sorted(peaks.items())]]  # fmt: skip


def _summary(results: dict) -> list[str]:
    by_task: dict[str, list[dict]] = {}
    for row in results["rows"]:
        by_task.setdefault(row["task"], []).append(row)
    return ["## Worst case per task", "",
            "Each request sent alone, on the machine above; \"added\" is the runner's peak during the request "
            "over its memory just before it (the first request to a model also pages its weights in). The most "
            "any one request can take is its task's line; a batch adds its images' decodes (bounded, see above).", "",
            *_worst(results["rows"]), "",
            "## Per process", "",
            "The most each process held at any time of the run, batches included and every model's weights paged "
            "in (at start-up they are mapped, not yet read): the memory to provision for this catalog.", "",
            *_processes(results["rows"], results["idle_mb"]), "",
            "## Every request", "",
            *[line for task, rows in by_task.items() for line in _task_table(task, rows)]]  # fmt: skip


def _header(results: dict) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    limits = [f"| `{env}` | {results['limits'][name]:,} | {what} |" for name, env, what in LIMITS]
    return [
        "# Bounded cost per request: limits and their measured worst cases", "",
        "Generated by `make bench-limits` (`python -m bench.limits`); re-render with "
        "`python -m bench.limits_report docs/limits.json`.", "",
        f"- Date: {results['date']}; command: `{results['command'].strip()}`; {results['seconds_total']} s in all",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {versions}",
        "- Idle RSS with the models loaded (MB): " + ", ".join(f"{k} {v:,}" for k, v in results["idle_mb"].items()),
        "- Models: the default catalog's Ultralytics INT8 exports (yolo11n, yolo11n-seg, yolov8n-pose OpenVINO; "
        "yolo11n-cls TFLite), yolov8n and yolov8n-obb PyTorch with random weights, and real-size transformers "
        "architectures with random weights (bench/realsize.py: DETR ResNet-50, OWL-ViT B/32, ViT-B/16, CLIP B/32, "
        "BLIP base, Depth Anything small, SegFormer-B0 with 150 classes) with their checkpoints' processor settings",
        "- Images: bench/hostile.py (a 1 x 20,000 PNG is 165 bytes, a 40 MP one ~150 KB)", "",
        "## Limits", "", "| environment variable | value here | what it bounds |", "|---|---:|---|", *limits, "",
    ]  # fmt: skip


def render(results: dict) -> str:
    return "\n".join([*_header(results), RULES, *_summary(results)]).rstrip() + "\n"


def write(results: dict, path: Path) -> None:
    path.write_text(render(results))


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/limits.json")
    write(json.loads(source.read_text()), source.with_suffix(".md"))
