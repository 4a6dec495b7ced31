"""How calls spread over two Ultralytics runner replicas: balanced by the front per request
(`YOLO_TOYS_REPLICAS`, the default of deploy/kubernetes/) or by a TCP balancer per connection (what a
Kubernetes ClusterIP Service does to the keep-alive connections of BentoML's client).

`python -m bench.replicas` (~4 min; run it alone on the machine) writes docs/replicas.{md,json}.
Each replica's share is counted by the replicas themselves (`yolo_toys_runner_batch_size_sum`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import limits
from bench.cluster import Role, cluster
from bench.loadgen import Upload, closed_loop, prime
from bench.photos import photos
from bench.servers import ROOT, free_port

LEVELS = (1, 2, 4, 8)
OUT = ROOT / "docs" / "replicas"


@dataclass(frozen=True)
class Spec:
    args: list[str]
    env: dict[str, str]


def specs() -> dict[str, Spec]:
    """The roles' container arguments, as in deploy/kubernetes/ (tests/test_roles.py runs those)."""
    runner = lambda name: Spec(["start-http-server", "--service-name", name, "--port", "3000"], {})  # noqa: E731
    front = ["start-http-server", "--service-name", "yolo_toys", "--port", "3000",
             "--depends", "ultralytics=http://ultralytics:3000", "--depends", "transformers=http://transformers:3000"]  # fmt: skip
    return {"ultralytics": runner("ultralytics"), "transformers": runner("transformers"), "front": Spec(front, {})}


class PerConnection:
    """A TCP balancer that picks the next backend for each new connection, as kube-proxy does."""

    def __init__(self, backends: list[int]) -> None:
        self.port, self.backends = free_port(), itertools.cycle(backends)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result()

    async def _listen(self) -> None:
        await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", next(self.backends))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def images(role: Role) -> float:
    """Images the replica has run, from its own /metrics."""
    for line in httpx.get(f"{role.url}/metrics", timeout=30).text.splitlines():
        if line.startswith('yolo_toys_runner_batch_size_sum{runner="ultralytics"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextmanager
def two_replicas(mode: str, logs: Path) -> Iterator[tuple[str, list[Role]]]:
    env = {**os.environ, "YOLO_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "True"}
    route = None
    if mode == "per connection":
        def route(runners: dict[str, list[Role]]) -> dict[str, str]:
            proxy = PerConnection([r.port for r in runners["ultralytics"]])
            return {"ultralytics": f"http://127.0.0.1:{proxy.port}", "transformers": runners["transformers"][0].url}
    with cluster(specs(), env, logs, replicas={"ultralytics": 2}, route=route) as started:
        yield started.front.url, started.runners["ultralytics"]


def measure(mode: str, seconds: float, logs: Path) -> list[dict]:
    uploads = [Upload("image", f"photo{i}.jpg", data) for i, data in enumerate(photos())]
    rows = []
    with two_replicas(mode, logs) as (url, replicas):
        prime(f"{url}/detect", uploads, n=8)
        for c in LEVELS:
            before = [images(r) for r in replicas]
            point = closed_loop(f"{url}/detect", uploads, c, seconds, warmup_s=0)
            ran = [images(r) - b for r, b in zip(replicas, before, strict=True)]
            share = ran[0] / max(sum(ran), 1)
            rows.append({"mode": mode, "concurrency": c, "img_s": point.throughput, "p50_ms": point.p50_ms,
                         "p99_ms": point.p99_ms, "failures": point.failures, "images": ran,
                         "share_first": share})  # fmt: skip
            print(f"{mode:>15} c={c}: {point.throughput:5.1f} img/s, replicas ran {ran} ({share:.0%} / {1 - share:.0%})")
    return rows


def write(rows: list[dict], seconds: float) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    about = limits.machine()
    machine = f"{about['cpu']}, {about['cores']} cores, bentoml {about['versions'].get('bentoml')}"
    OUT.with_suffix(".json").write_text(json.dumps({"machine": machine, "seconds": seconds, "rows": rows}, indent=2))
    lines = [
        "# Balance over runner replicas", "",
        "Generated by `python -m bench.replicas` (`make bench-replicas`); do not edit by hand.", "",
        f"- **Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; **machine:** {machine}; every server on the same cores.",
        "- **Setup:** the front, one transformers runner and two Ultralytics runner replicas, each a `start-http-server`",
        "  process; `/detect` (yolo11n INT8 OpenVINO) with bus.jpg and zidane.jpg in turn, closed loop,"
        f" {seconds:g} s per level.",
        "- **Per request:** `YOLO_TOYS_REPLICAS` lists both replicas; the front sends each call to the ready one with",
        "  the fewest calls in flight. **Per connection:** the front's `--depends` points at a TCP balancer that",
        "  gives each new connection the next replica (what a Kubernetes ClusterIP Service does). That balancer is a",
        "  Python relay in the benchmark's own process, on the same 2 cores: it costs CPU the servers then lack, so",
        "  compare the shares across modes, not the img/s.", "",
        "| balancing | clients | img/s | p50 ms | p99 ms | failures | images on replica 1 / 2 | share of replica 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['img_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{r['failures']} | {r['images'][0]:.0f} / {r['images'][1]:.0f} | {r['share_first']:.0%} |")  # fmt: skip
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    seconds = parser.parse_args().seconds
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        rows = [row for mode in ("per request", "per connection")
                for row in measure(mode, seconds, Path(tmp) / mode.replace(" ", "-"))]  # fmt: skip
    write(rows, seconds)
    print(f"wrote {OUT.with_suffix('.md')}")


if __name__ == "__main__":
    main()
