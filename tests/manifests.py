"""The Kubernetes manifests of deploy/kubernetes/, rendered offline with kubectl's built-in kustomize.

`render(overlay)` gives the documents `kubectl apply -k deploy/kubernetes/overlays/<overlay>` would
send; `role_specs(overlay)` what each role's container is started with (its arguments and the literal
environment from the ConfigMap and `env:`), so that tests can start the same roles as local processes.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
COMPONENT = "app.kubernetes.io/component"  # the role of a pod: front, or the runner's family


@dataclass(frozen=True)
class RoleSpec:
    args: list[str]  # the container's `args`, exactly as in the manifest
    env: dict[str, str]  # literal environment: the ConfigMaps of `envFrom`, then `env:` values (no Secrets)


@lru_cache(maxsize=16)
def _kustomize(directory: str) -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError(
            "kubectl is not installed: it renders deploy/kubernetes offline with its built-in kustomize "
            "(`kubectl kustomize DIR`, no cluster needed). Install kubectl 1.27 or newer."
        )
    done = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"`kubectl kustomize {directory}` failed:\n{done.stderr}")
    return done.stdout


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The documents of a kustomization directory (a fresh copy on every call)."""
    return [doc for doc in yaml.safe_load_all(_kustomize(str(directory))) if doc]


def render(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/kubernetes/overlays/<overlay>`, parsed."""
    path = KUBERNETES / "overlays" / overlay
    if not (path / "kustomization.yaml").is_file():
        raise ValueError(f"no overlay {overlay!r} in {KUBERNETES / 'overlays'}")
    return kustomize(path)


def container_env(container: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The literal environment of a container, as the kubelet builds it: `envFrom` ConfigMaps in
    order, then `env:` entries with a `value` (they win). Secret references are left out."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is None:
            continue
        data = config_maps.get(ref["name"])
        if data is None and not ref.get("optional", False):
            raise KeyError(f"container {container['name']!r} needs ConfigMap {ref['name']!r}, which is not rendered")
        env.update({source.get("prefix", "") + key: str(value) for key, value in (data or {}).items()})
    env.update({var["name"]: str(var["value"]) for var in container.get("env", []) if "value" in var})
    return env


def role_specs(overlay: str = "cpu") -> dict[str, RoleSpec]:
    """Per role (`front`, and one per runner family): its container's arguments and literal environment."""
    docs = render(overlay)
    config_maps = {doc["metadata"]["name"]: doc.get("data") or {} for doc in docs if doc["kind"] == "ConfigMap"}
    specs: dict[str, RoleSpec] = {}
    for deployment in (doc for doc in docs if doc["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        specs[pod["metadata"]["labels"][COMPONENT]] = RoleSpec(
            args=[str(arg) for arg in container.get("args", [])], env=container_env(container, config_maps)
        )
    return specs
