"""Load test of the REST endpoints with real photos.

    locust -f locustfiles/rest.py --host http://127.0.0.1:3000
    locust -f locustfiles/rest.py --host http://127.0.0.1:3000 --headless -u 16 -r 4 -t 60s

Every non-200 answer counts as a failure; a wrong-looking answer (no detections on bus.jpg) too.
Set YOLO_TOYS_LOCUST_ROUTES=detect,segment to limit the routes exercised.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between
from ultralytics.utils import ASSETS

PHOTOS = {name: (ASSETS / name).read_bytes() for name in ("bus.jpg", "zidane.jpg")}
ROUTES = set(os.environ.get("YOLO_TOYS_LOCUST_ROUTES", "detect,segment,pose,classify,annotate").split(","))


WEIGHTS = {"detect": 6, "segment": 2, "pose": 2, "classify": 2, "annotate": 1}
FIELDS = {"classify": {"top_k": "5"}, "annotate": {"task": "detect"}}


def _post(user: HttpUser, route: str) -> None:
    name, data = random.choice(list(PHOTOS.items()))
    with user.client.post(
        f"/{route}", files={"image": (name, data, "image/jpeg")}, data=FIELDS.get(route, {}), name=f"/{route}",
        catch_response=True,
    ) as resp:  # fmt: skip
        if resp.status_code != 200:
            resp.failure(f"{resp.status_code}: {resp.text[:200]}")
        elif route == "detect" and not resp.json().get("detections"):
            resp.failure("no detections on a photo full of people")
        else:
            resp.success()


def _task(route: str):
    def run(user: HttpUser) -> None:
        _post(user, route)

    run.__name__ = route
    return run


class VisionUser(HttpUser):
    wait_time = between(0.0, 0.05)
    tasks = {_task(route): weight for route, weight in WEIGHTS.items() if route in ROUTES}
