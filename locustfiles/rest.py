"""Load test of the REST endpoints with real photos, YOLO and transformers routes alike.

    locust -f locustfiles/rest.py --host http://127.0.0.1:3000
    locust -f locustfiles/rest.py --host http://127.0.0.1:3000 --headless -u 16 -r 4 -t 60s

At start it reads `GET /models` and exercises only the routes whose task has a loaded model
(set YOLO_TOYS_LOCUST_ROUTES=detect,caption to choose). Every non-200 answer is a failure; so is
a `/detect` answer on these photos without a single detection.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable

import httpx
from locust import HttpUser, between, events
from ultralytics.utils import ASSETS

PHOTOS = {name: (ASSETS / name).read_bytes() for name in ("bus.jpg", "zidane.jpg")}

# route -> (task it needs, weight, form fields)
ROUTES: dict[str, tuple[str, int, dict[str, str]]] = {
    "detect": ("detect", 6, {}),
    "segment": ("segment", 2, {}),
    "pose": ("pose", 2, {}),
    "classify": ("classify", 2, {"top_k": "5"}),
    "annotate": ("detect", 1, {"task": "detect"}),
    "zero_shot_classify": ("zero_shot_classify", 2, {"labels": '["a bus", "a person", "a cat", "a street"]'}),
    "caption": ("caption", 1, {"max_new_tokens": "20"}),
    "vqa": ("vqa", 1, {"question": "What vehicle is in the picture?", "max_new_tokens": "10"}),
    "depth": ("depth", 1, {}),
}


def _post(user: HttpUser, route: str) -> None:
    name, data = random.choice(list(PHOTOS.items()))
    with user.client.post(
        f"/{route}", files={"image": (name, data, "image/jpeg")}, data=ROUTES[route][2], name=f"/{route}",
        catch_response=True,
    ) as resp:  # fmt: skip
        if resp.status_code != 200:
            resp.failure(f"{resp.status_code}: {resp.text[:200]}")
        elif route == "detect" and not resp.json().get("detections"):
            resp.failure("no detections on a photo full of people")
        else:
            resp.success()


def _task(route: str) -> Callable[[HttpUser], None]:
    def run(user: HttpUser) -> None:
        _post(user, route)

    run.__name__ = route
    return run


def _served_routes(host: str) -> list[str]:
    chosen = os.environ.get("YOLO_TOYS_LOCUST_ROUTES")
    if chosen:
        return [r for r in chosen.split(",") if r in ROUTES]
    models = httpx.get(f"{host}/models", timeout=30).json()["models"]
    tasks = {m["task"] for m in models if m["loaded"] and not m.get("open_vocabulary")}
    return [route for route, (task, _, _) in ROUTES.items() if task in tasks]


class VisionUser(HttpUser):
    wait_time = between(0.0, 0.05)
    tasks = {_task(route): weight for route, (_, weight, _) in ROUTES.items()}


@events.test_start.add_listener
def _pick_routes(environment, **_kwargs) -> None:
    routes = _served_routes(environment.host)
    logging.info("load-testing %s", ", ".join(f"/{r}" for r in routes))
    VisionUser.tasks = [t for route in routes for t in [_task(route)] * ROUTES[route][1]]
