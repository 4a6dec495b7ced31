"""One Bento in three roles, and runner replicas that fail over with nothing lost (issue 11).

Each role runs with the container arguments of the Kubernetes manifests (tests/manifests.py), as a
`start-http-server` process of its own on a loopback port, wired by `--depends` and
`YOLO_TOYS_REPLICAS`: what the cluster runs, on one machine.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.cluster import Cluster, cluster
from bench.servers import free_port
from conftest import Server, bus_jpg
from load import Load, detect, killed_replica_costs_no_request, series, wait_for
from manifests import role_specs

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def roles(test_env: dict[str, str], imported: subprocess.CompletedProcess, tmp_path_factory) -> Iterator[Cluster]:
    with cluster(role_specs("cpu"), test_env, tmp_path_factory.mktemp("roles")) as started:
        yield started


def test_each_role_has_its_own_probes(roles: Cluster) -> None:
    for role in [roles.front, *(r for rs in roles.runners.values() for r in rs)]:
        for probe in ("/livez", "/readyz"):
            assert httpx.get(f"{role.url}{probe}", timeout=10).status_code == 200, (role.name, probe)


def test_three_roles_answer_as_the_single_process_service(roles: Cluster, server: Server) -> None:
    assert detect(roles.front.url) == detect(server.url)
    assert {"bus", "person"} <= {label for label, _ in detect(roles.front.url)}
    models = [httpx.get(f"{url}/models", timeout=30).json() for url in (roles.front.url, server.url)]
    for listing in models:  # what each process measured of its own loads differs
        for version in (v for m in listing["models"] for v in m["versions"]):
            load_s, memory = version.pop("load_s"), version.pop("memory_bytes")
            assert (load_s is None) == (memory is None), version
    assert models[0] == models[1]
    photo = {"image": ("bus.jpg", bus_jpg(), "image/jpeg")}
    answers = [httpx.post(f"{url}/classify", files=photo, data={"model": "tiny-vit"}, timeout=120)
               for url in (roles.front.url, server.url)]  # fmt: skip
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["top_k"] == answers[1].json()["top_k"]


def test_runner_metrics_are_scrapable_from_its_own_server(roles: Cluster) -> None:
    detect(roles.front.url)
    [runner] = roles.runners["ultralytics"]
    text = httpx.get(f"{runner.url}/metrics", timeout=30).text
    assert 'yolo_toys_runner_inflight{runner="ultralytics"}' in text
    assert 'yolo_toys_runner_batch_size_count{runner="ultralytics"}' in text
    assert "bentoml_service_request_total" not in text  # the front's series stay on the front


def test_a_family_without_replicas_leaves_the_front_serving_the_others(roles: Cluster) -> None:
    """With the manifests' YOLO_TOYS_READY_WHEN=any: the transformers runner hangs (SIGSTOP); the front
    stays ready, answers /detect, and answers the transformers family 503 + Retry-After at once."""
    assert role_specs("cpu")["front"].env.get("YOLO_TOYS_READY_WHEN") == "any"
    [runner] = roles.runners["transformers"]
    worker = runner.worker()
    photo = {"image": ("bus.jpg", bus_jpg(), "image/jpeg")}
    worker.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        while (r := httpx.post(f"{roles.front.url}/classify", files=photo, data={"model": "tiny-vit"}, timeout=30)).status_code == 200:
            assert time.monotonic() < deadline, "the hung runner was never seen"
            time.sleep(0.5)
        assert r.status_code == 503 and r.json()["error"] == "runner unavailable" and r.headers["retry-after"], r.text
        assert httpx.get(f"{roles.front.url}/readyz", timeout=5).status_code == 200
        assert {"bus", "person"} <= {label for label, _ in detect(roles.front.url)}
    finally:
        worker.send_signal(signal.SIGCONT)
    assert wait_for(lambda: httpx.post(f"{roles.front.url}/classify", files=photo, data={"model": "tiny-vit"},
                                    timeout=30).status_code == 200, 30, every=0.5)  # fmt: skip


# ---- replicas ---------------------------------------------------------------------------------------------


@pytest.fixture()
def replicated(test_env: dict[str, str], imported: subprocess.CompletedProcess, tmp_path: Path) -> Iterator[Cluster]:
    with cluster(role_specs("cpu"), test_env, tmp_path, replicas={"ultralytics": 2}) as started:
        yield started


def test_a_killed_runner_replica_costs_no_request(replicated: Cluster) -> None:
    print(killed_replica_costs_no_request(replicated))


def test_a_runner_replica_whose_worker_hangs_is_left_out(replicated: Cluster) -> None:
    """A replica whose server still accepts connections but whose worker no longer answers (SIGSTOP: a
    hung process, or a worker being restarted by its supervisor): calls waiting on it go to the other
    replica once the probes find it down, and none fails."""
    front, (first, _second) = replicated.front, replicated.runners["ultralytics"]
    worker = first.worker()
    with Load(front.url, clients=6) as load:
        assert load.wait_for(lambda: sum(r[2] == 200 for r in load.rows) >= 20, 120)
        worker.send_signal(signal.SIGSTOP)
        stopped_at = load.now()
        try:
            assert load.wait_for(lambda: sum(r[0] > stopped_at + 8 and r[2] == 200 for r in load.rows) >= 10, 120)
        finally:
            worker.send_signal(signal.SIGCONT)
        replicated.front_sees(timeout=30)
    statuses = Counter(r[2] for r in load.rows)
    assert set(statuses) == {200}, (statuses, [r for r in load.rows if r[2] != 200][:5])
    slowest = max(r[1] for r in load.rows if r[0] > stopped_at - 5)
    assert series(front, "yolo_toys_runner_resent_total").get("", 0) >= 1
    print(f"requests: {statuses}; slowest after the stop {slowest:.2f} s")
    assert slowest < 2 * 2.0 + 1.0 + 3.0, slowest  # two probe timeouts + one interval + slack for 2 busy cores


def test_a_dns_name_stands_for_every_address_it_resolves_to(test_env: dict[str, str], imported: subprocess.CompletedProcess,
                                                            tmp_path: Path) -> None:  # fmt: skip
    """`dns+http://localhost:PORT`, as the manifests name a headless Service: the front resolves the
    name and calls the addresses it finds, never the name itself (where localhost is also ::1, on
    which the runner does not listen, that replica is left out as down)."""
    dns = lambda runners: " ".join(f"{f}=dns+http://localhost:{rs[0].port}" for f, rs in runners.items())  # noqa: E731
    with cluster(role_specs("cpu"), test_env, tmp_path, listing=dns) as started:
        assert {"bus", "person"} <= {label for label, _ in detect(started.front.url)}
        used = series(started.front, "yolo_toys_runner_calls_total")
    port = started.runners["ultralytics"][0].port
    assert set(used) == {f"http://127.0.0.1:{port}"}, used  # the resolved address, not `localhost`


def test_a_family_that_never_answered_does_not_stop_the_others(test_env: dict[str, str],
                                                               imported: subprocess.CompletedProcess, tmp_path: Path) -> None:  # fmt: skip
    """The transformers replicas point where nothing listens (its pods pending, say): with the manifests'
    YOLO_TOYS_READY_WHEN=any the front is ready and serves the Ultralytics models; a transformers model,
    by name or as a task's default, is 503 + Retry-After; /models lists it as not loaded, saying why."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    listing = lambda runners: f"ultralytics={runners['ultralytics'][0].url} transformers={nowhere}"  # noqa: E731
    with cluster(role_specs("cpu"), test_env, tmp_path, listing=listing, sees={"ultralytics": 1, "transformers": 0}) as started:
        url, photo = started.front.url, {"image": ("bus.jpg", bus_jpg(), "image/jpeg")}
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        assert {"bus", "person"} <= {label for label, _ in detect(url)}
        for route, data in (("/classify", {"model": "tiny-vit"}), ("/caption", {})):
            r = httpx.post(f"{url}{route}", files=photo, data=data, timeout=30)
            assert r.status_code == 503 and r.json()["error"] == "runner unavailable" and r.headers["retry-after"], r.text
        models = {m["name"]: m for m in httpx.get(f"{url}/models", timeout=30).json()["models"]}
        assert models["yolo11n"]["loaded"] and not models["tiny-vit"]["loaded"]
        assert "transformers runner" in models["tiny-vit"]["reason"], models["tiny-vit"]
