"""The phases after the rounds, on the running YOLO-Toys: several images in one request, the soak, memory growth."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from bench import multi
from bench.loadgen import Point, counted
from bench.photos import photos
from bench.rounds import Server, measure, uploads
from bench.servers import rss_mb


class MemoryGrowth(BaseModel):
    """The server's resident memory (all its processes together) after the first requests and at the end."""

    model: str
    concurrency: int
    requests: int
    first: int  # requests before the first reading
    rss_first_mb: float
    rss_end_mb: float
    growth_pct: float
    by_process_first_mb: dict[str, float]
    by_process_end_mb: dict[str, float]
    failures: int
    seconds: float


def _by_process(server: Server) -> dict[str, float]:
    return {name: round(rss_mb([p]), 1) for name, p in server.workers().items()}


def memory_growth(server: Server, requests: int, first: int, c: int, log: Callable[[str], None]) -> MemoryGrowth:
    """`requests` requests at `c` clients: the RSS after `first` of them and after all."""
    model = server.fields.get("model", "")
    log(f"memory  {model}: {requests} requests at c={c}, RSS after {first} and at the end")
    start: Point = counted(server.url + server.route, uploads(), c, first, server.fields)
    rss_first, by_first = rss_mb(server.processes()), _by_process(server)
    rest: Point = counted(server.url + server.route, uploads(), c, requests - first, server.fields)
    rss_end, by_end = rss_mb(server.processes()), _by_process(server)
    growth = MemoryGrowth(model=model, concurrency=c, requests=requests, first=first, rss_first_mb=round(rss_first, 1),
                          rss_end_mb=round(rss_end, 1), growth_pct=round((rss_end - rss_first) * 100 / rss_first, 2),
                          by_process_first_mb=by_first, by_process_end_mb=by_end,
                          failures=start.failures + rest.failures,
                          seconds=round(start.seconds + rest.seconds, 1))  # fmt: skip
    log(f"memory  {model}: {growth.rss_first_mb:.0f} MB after {first}, {growth.rss_end_mb:.0f} MB after {requests} "
        f"({growth.growth_pct:+.2f} %), {growth.failures} failures, {growth.seconds:.0f} s")  # fmt: skip
    return growth


def soak(server: Server, c: int, seconds: float, warmup: float, log: Callable[[str], None]) -> dict:
    """`c` clients for `seconds`: every answer must be a 200."""
    model = server.fields.get("model", "")
    log(f"soak    {model}: c={c} for {seconds:.0f} s")
    point = measure(server, [], c, seconds, warmup)
    log(f"soak    {model}: {point.requests} requests, {point.failures + point.failures_warmup} failures")
    return {"model": model, **point.model_dump()}


def multi_images(server: Server, rounds: int, log: Callable[[str], None]) -> dict:
    """The 16 images sent each of `multi.MODES` ways, the order turned each round; `/batch` left out from the
    first 404 on (the route is not there)."""
    model, pictures = server.fields["model"], list(zip(("bus.jpg", "zidane.jpg"), photos(), strict=True))
    available, out = True, []
    for turn in range(rounds):
        k, points = turn % len(multi.MODES), []
        for mode in [*multi.MODES[k:], *multi.MODES[:k]]:
            if mode == multi.MODES[0] and not available:
                continue
            point = multi.measure(mode, server.url, server.route, pictures, model)
            log(f"round {turn + 1} multi    {model}: {mode}: {point.throughput:.2f} images/s, answers {point.statuses}")
            if multi.available(point):
                points.append(point.model_dump())
            else:
                available = False
                log(f"multi   {model}: POST /batch answered {point.statuses}: not available")
        out.append(points)
    return {"available": available, "images": multi.IMAGES, "rounds": out}
