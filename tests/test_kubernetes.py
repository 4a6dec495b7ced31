"""The Kubernetes manifests (deploy/kubernetes/), offline: every rendered document is valid for the
Kubernetes API (kubernetes-validate, strict), and the invariants that a typo would break without any
validator noticing: selectors, ports, probes, the runner families of the catalog, autoscaling on the
metric the adapter serves, graceful shutdown, the user the image runs as."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from manifests import COMPONENT, KUBERNETES, OVERLAYS, ROOT, container_env, kustomize, render, role_specs
from models.catalog import load_catalog
from yolo_toys.settings import Settings

# The oldest Kubernetes the manifests claim (deploy/kubernetes/README.md) and the newest the validator knows.
VERSIONS = ("1.30", kubernetes_validate.utils.major_minor(kubernetes_validate.latest_version()))
IMAGE = "yolo-toys:latest"
PORT = 3000
INFLIGHT = "yolo_toys_runner_inflight"
DRAIN_S = 15  # a runner serves until idle 1 s, at most 15 s, after SIGTERM (yolo_toys/shutdown.py)
FRONT_DRAIN_S = 60  # what the front is granted for its in-flight requests (deploy/kubernetes/base/front.yaml)
# Custom resources no Kubernetes schema covers: skipped by name, and only these (see validate_all).
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def families() -> list[str]:
    return load_catalog().families()


def quantity(value: str | int) -> float:
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity: {value!r}"
    return float(match[1]) * UNITS[match[2]]


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def container(deployment: dict) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def selected(selector: dict[str, str], docs: list[dict]) -> list[str]:
    """The Deployments whose pods a label selector picks."""
    assert selector, "an empty selector picks every pod"
    return [name for name, d in of_kind(docs, "Deployment").items() if selector.items() <= pod_labels(d).items()]


def by_role(docs: list[dict]) -> dict[str, dict]:
    return {pod_labels(d)[COMPONENT]: d for d in of_kind(docs, "Deployment").values()}


def validate_all(
    docs: list[dict], version: str, crds: set[tuple[str, str]] = frozenset()
) -> tuple[list[str], list[str]]:
    """Validate every document; a document of `crds` is skipped (returned by name), any other failure,
    a missing schema included, is returned with the validator's message."""
    failures, skipped = [], []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in crds:
            skipped.append(name)
            continue
        try:
            checked = kubernetes_validate.validate(doc, version, strict=True)
            if checked != version:
                failures.append(f"{name}: checked against the {checked} schemas, not {version}")
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{name}: {error.message} at {'/'.join(map(str, error.absolute_path))}")
        except kubernetes_validate.utils.SchemaNotFoundError as error:
            failures.append(f"{name}: {error.message}")
    return failures, skipped


# --- the API schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_is_valid_for_kubernetes(overlay: str, version: str) -> None:
    failures, skipped = validate_all(render(overlay), version)
    assert failures == []
    assert skipped == []


def test_the_validator_is_strict() -> None:
    """A misspelt field fails: strict mode is on and the schemas are there."""
    deployment = of_kind(render("cpu"), "Deployment")["yolo-toys-front"]
    container(deployment)["livenesProbe"] = container(deployment).pop("livenessProbe")
    failures, _ = validate_all([deployment], VERSIONS[-1])
    assert len(failures) == 1 and "'livenesProbe' was unexpected" in failures[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_runner_per_catalog_family_and_nothing_else(overlay: str) -> None:
    docs = render(overlay)
    expected = {("Namespace", "yolo-toys"), ("ConfigMap", "yolo-toys-config"), ("NetworkPolicy", "yolo-toys-runners"),
                ("Deployment", "yolo-toys-front"), ("Service", "yolo-toys"), ("PodDisruptionBudget", "yolo-toys-front"),
                ("HorizontalPodAutoscaler", "yolo-toys-front")}  # fmt: skip
    for family in families():
        runner = f"yolo-toys-{family}"
        expected |= {("Deployment", runner), ("Service", runner), ("Service", f"{runner}-replicas"),
                     ("PodDisruptionBudget", runner), ("HorizontalPodAutoscaler", runner)}  # fmt: skip
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(expected)
    assert sorted(by_role(docs)) == sorted(["front", *families()])
    assert all(d["metadata"]["namespace"] == "yolo-toys" for d in docs if d["kind"] != "Namespace")


# --- wiring: selectors, ports, targets -------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_selects_one_deployment_on_its_named_port(overlay: str) -> None:
    docs = render(overlay)
    deployments = of_kind(docs, "Deployment")
    for name, deployment in deployments.items():
        assert selected(deployment["spec"]["selector"]["matchLabels"], docs) == [name]
    for name, service in of_kind(docs, "Service").items():
        (target,) = selected(service["spec"]["selector"], docs)
        ports = {p["name"]: p["containerPort"] for p in container(deployments[target]).get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name} targets {port['targetPort']!r}, not a port of {target}"
    front = of_kind(docs, "Service")["yolo-toys"]["spec"]
    assert front["type"] == "ClusterIP" and [(p["port"], p["targetPort"]) for p in front["ports"]] == [(80, "http")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_budgets_and_autoscalers_target_existing_deployments(overlay: str) -> None:
    docs = render(overlay)
    deployments = of_kind(docs, "Deployment")
    budgets = [
        selected(p["spec"]["selector"]["matchLabels"], docs) for p in of_kind(docs, "PodDisruptionBudget").values()
    ]
    assert sorted(budgets) == sorted([name] for name in deployments)
    targets = []
    for hpa in of_kind(docs, "HorizontalPodAutoscaler").values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment") and ref["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        targets.append(ref["name"])
    assert sorted(targets) == sorted(deployments)
    # The autoscalers own the replica counts: a `replicas` in a Deployment would reset them on every apply.
    assert [name for name, d in deployments.items() if "replicas" in d["spec"]] == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_front_depends_on_each_runner_service(overlay: str) -> None:
    specs, docs = role_specs(overlay), render(overlay)
    services = of_kind(docs, "Service")
    args = specs["front"].args
    assert args[:5] == ["start-http-server", "--service-name", "yolo_toys", "--port", str(PORT)]
    pairs = args[5:]
    assert pairs[0::2] == ["--depends"] * len(families()), args
    depends = dict(pair.split("=", 1) for pair in pairs[1::2])
    assert len(depends) == len(pairs) // 2 and sorted(depends) == sorted(families())
    for family, url in depends.items():
        name = f"yolo-toys-{family}"
        assert url == f"http://{name}:{PORT}"
        spec = services[name]["spec"]
        assert spec.get("clusterIP") != "None" and [p["port"] for p in spec["ports"]] == [PORT]
        assert selected(spec["selector"], docs) == [name]
    for family in families():
        assert specs[family].args == ["start-http-server", "--service-name", family, "--port", str(PORT)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_front_balances_over_each_runners_headless_service(overlay: str) -> None:
    docs = render(overlay)
    env = role_specs(overlay)["front"].env
    replicas = Settings.from_env(env).replicas  # the front's own parser
    assert sorted(replicas) == sorted(families())
    for family, urls in replicas.items():
        name = f"yolo-toys-{family}"
        assert urls == [f"dns+http://{name}-replicas:{PORT}"]
        spec = of_kind(docs, "Service")[f"{name}-replicas"]["spec"]
        assert spec["clusterIP"] == "None" and [p["port"] for p in spec["ports"]] == [PORT]
        assert selected(spec["selector"], docs) == [name]


# --- containers ---------------------------------------------------------------------------------


def probe_path(probe: dict) -> str:
    assert probe["httpGet"]["port"] == "http"
    return probe["httpGet"]["path"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_probed_sized_and_started_by_the_image(overlay: str) -> None:
    for role, deployment in by_role(render(overlay)).items():
        pod = deployment["spec"]["template"]["spec"]
        assert "initContainers" not in pod
        box = container(deployment)
        assert "command" not in box, f"{role}: the image's entrypoint must run (args only)"
        assert box["image"] == IMAGE
        assert box["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
        assert {"cpu", "memory"} <= set(box["resources"]["requests"]), role
        assert quantity(box["resources"]["limits"]["memory"]) >= quantity(box["resources"]["requests"]["memory"])
        assert probe_path(box["livenessProbe"]) == "/livez"
        assert probe_path(box["readinessProbe"]) == "/readyz"
        startup = box["startupProbe"]
        # Runners: ready once their models are loaded (30-90 s); the front: alive (it waits on the runners).
        assert probe_path(startup) == ("/livez" if role == "front" else "/readyz")
        allowance = startup["periodSeconds"] * startup["failureThreshold"]
        assert allowance >= (30 if role == "front" else 180), f"{role}: {allowance} s to start"
        assert [source["configMapRef"]["name"] for source in box["envFrom"]] == ["yolo-toys-config"]


def measured_peaks() -> dict[str, float]:
    """Peak RSS per process in bytes, from docs/limits.md's "Per process" table (MB read as MiB)."""
    section = (ROOT / "docs" / "limits.md").read_text().split("## Per process", 1)[1]
    rows = re.findall(r"^\| (\w+) \| [\d,]+ \| ([\d,]+) \|$", section, flags=re.MULTILINE)
    return {process: float(peak.replace(",", "")) * 2**20 for process, peak in rows}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_memory_limits_are_above_the_measured_peaks(overlay: str) -> None:
    peaks = measured_peaks()
    for role, deployment in by_role(render(overlay)).items():
        peak = peaks["yolo_toys" if role == "front" else role]
        assert quantity(container(deployment)["resources"]["limits"]["memory"]) > peak, role


def test_gpu_overlay_runners_get_a_gpu_and_the_cpu_overlay_none() -> None:
    gpu, cpu = by_role(render("gpu")), by_role(render("cpu"))
    for family in families():
        pod = gpu[family]["spec"]["template"]["spec"]
        assert container(gpu[family])["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert quantity(container(cpu[family])["resources"]["requests"]["cpu"]) >= 4
    assert "nvidia" not in yaml.safe_dump(gpu["front"])
    assert "nvidia" not in yaml.safe_dump(render("cpu"))


def test_the_environment_is_the_settings_the_service_reads() -> None:
    """Every YOLO_TOYS_* variable of the ConfigMap is one the code reads, and the values parse."""
    (config,) = of_kind(render("cpu"), "ConfigMap").values()
    sources = "\n".join(p.read_text() for folder in ("yolo_toys", "runners") for p in (ROOT / folder).glob("*.py"))
    unknown = [key for key in config["data"] if key.startswith("YOLO_TOYS_") and f'"{key}"' not in sources]
    assert unknown == []
    specs = role_specs("cpu")
    assert specs["front"].env["YOLO_OFFLINE"] == specs["front"].env["HF_HUB_OFFLINE"] == "1"
    settings = Settings.from_env(specs["front"].env)
    assert (settings.max_upload_bytes, settings.max_pixels, settings.cors_origins) == (20 * 2**20, 40_000_000, ())
    assert all(spec.env == specs["front"].env for spec in specs.values())


def test_api_keys_come_from_an_optional_secret_only() -> None:
    docs = render("cpu")
    assert [d for d in docs if d["kind"] == "Secret"] == []
    front = container(by_role(docs)["front"])
    (keys,) = [var for var in front["env"] if var["name"] == "YOLO_TOYS_API_KEYS"]
    assert keys == {"name": "YOLO_TOYS_API_KEYS", "valueFrom": {"secretKeyRef": {
        "name": "yolo-toys-api-keys", "key": "YOLO_TOYS_API_KEYS", "optional": True}}}  # fmt: skip
    assert "YOLO_TOYS_API_KEYS" not in container_env(front, {"yolo-toys-config": {}})
    runners = [container(d) for role, d in by_role(docs).items() if role != "front"]
    assert all("env" not in box for box in runners)


# --- shutdown, security, metrics ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_prestop_and_drain(overlay: str) -> None:
    for role, deployment in by_role(render(overlay)).items():
        command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:-1] == ["/bin/sleep"], command
        sleep = int(command[-1])
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > sleep + (FRONT_DRAIN_S if role == "front" else DRAIN_S), f"{role}: {grace} s"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_bento_user_without_privileges(overlay: str) -> None:
    from bentoml._internal.container.generate import BENTO_UID_GID  # the uid of BentoML's Dockerfile

    for role, deployment in by_role(render(overlay)).items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == BENTO_UID_GID
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        # Service links would add FOO_SERVICE_HOST-style variables sharing the YOLO_TOYS_ prefix.
        assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
        box = container(deployment)
        assert box["securityContext"]["allowPrivilegeEscalation"] is False
        assert box["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in box["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"], role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_every_role(overlay: str) -> None:
    for role, deployment in by_role(render(overlay)).items():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORT),
                               "prometheus.io/path": "/metrics"}, role  # fmt: skip


def test_only_the_front_and_prometheus_reach_the_runners() -> None:
    docs = render("cpu")
    (policy,) = of_kind(docs, "NetworkPolicy").values()
    assert sorted(selected(policy["spec"]["podSelector"]["matchLabels"], docs)) == sorted(
        f"yolo-toys-{f}" for f in families())  # fmt: skip
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    fronts = [selected(p["podSelector"]["matchLabels"], docs) for p in peers if "podSelector" in p]
    assert fronts == [["yolo-toys-front"]]
    assert all(rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in policy["spec"]["ingress"])


# --- autoscaling --------------------------------------------------------------------------------


def adapter_metrics() -> set[str]:
    """The custom metric names the shipped prometheus-adapter rules serve, per pod."""
    values = yaml.safe_load((KUBERNETES / "prometheus-adapter" / "values.yaml").read_text())
    names = set()
    for rule in values["rules"]["custom"]:
        overrides = rule["resources"]["overrides"]
        assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "by (<<.GroupBy>>)" in rule["metricsQuery"]
        series = rule["seriesQuery"].split("{", 1)[0]
        assert re.fullmatch(rule["name"]["matches"], series), rule
        names.add(rule["name"].get("as") or series)
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runners_scale_on_the_inflight_metric_the_adapter_serves(overlay: str) -> None:
    assert INFLIGHT in (ROOT / "runners" / "batcher.py").read_text()  # the gauge the runners export
    assert adapter_metrics() == {INFLIGHT}
    for family in families():
        hpa = of_kind(render(overlay), "HorizontalPodAutoscaler")[f"yolo-toys-{family}"]["spec"]
        (metric,) = hpa["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == INFLIGHT
        assert (
            metric["pods"]["target"]["type"] == "AverageValue"
            and quantity(metric["pods"]["target"]["averageValue"]) > 0
        )
        behavior = hpa["behavior"]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] < behavior["scaleDown"]["stabilizationWindowSeconds"]


def test_the_keda_component_replaces_the_runner_autoscalers(tmp_path: Path) -> None:
    """deploy/kubernetes/keda/, added to an overlay: one ScaledObject per runner on the same metric, no
    runner HPA left to fight it. ScaledObject is a KEDA CRD: no Kubernetes schema, skipped by name."""
    overlay = os.path.relpath(KUBERNETES / "overlays" / "gpu", tmp_path)  # kustomize takes relative paths only
    component = os.path.relpath(KUBERNETES / "keda", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{overlay}]\ncomponents: [{component}]\n")
    docs = kustomize(tmp_path)
    failures, skipped = validate_all(docs, VERSIONS[-1], crds=CRD_KINDS)
    assert failures == []
    runners = [f"yolo-toys-{family}" for family in families()]
    assert sorted(skipped) == sorted(f"ScaledObject/{name}" for name in runners)
    assert sorted(of_kind(docs, "HorizontalPodAutoscaler")) == ["yolo-toys-front"]
    for name, scaled in of_kind(docs, "ScaledObject").items():
        spec = scaled["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["minReplicaCount"] >= 1 and scaled["metadata"]["namespace"] == "yolo-toys"
        (trigger,) = spec["triggers"]
        family = name.removeprefix("yolo-toys-")
        assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
        assert f'{INFLIGHT}{{namespace="yolo-toys", runner="{family}"}}' in trigger["metadata"]["query"]
