"""The Kubernetes manifests as data: the base's files, kustomize renders, and the offline schema checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final, cast

import kubernetes_validate
import pytest
import yaml

from tests.tool_support import REPO_ROOT

KUBERNETES_DIR: Final = REPO_ROOT / "deploy" / "kubernetes"
BASE_DIR: Final = KUBERNETES_DIR / "base"
OVERLAY_DIR: Final = KUBERNETES_DIR / "overlays" / "example"
# The kubectl to render with; KUBECTL=/path/to/kubectl checks another one (e.g. Debian's 1.20).
KUBECTL: Final = os.environ.get("KUBECTL", "kubectl")
# The oldest and newest schemas kubernetes-validate 1.37.0 ships that the manifests target
# (PodDisruptionBudget.unhealthyPodEvictionPolicy needs 1.27).
KUBERNETES_VERSIONS: Final = ("1.27.0", "1.37.0")
CRD_GROUP: Final = "monitoring.coreos.com/"

Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as handle:
        return [cast("Manifest", doc) for doc in yaml.safe_load_all(handle) if doc]


def base_documents() -> list[Manifest]:
    """Every object of the base, read from the files its kustomization lists (no kustomize needed)."""
    kustomization = load_documents(BASE_DIR / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in load_documents(BASE_DIR / name)]


def kubectl_path() -> str:
    """kubectl, or skip: scripts/setup --with-tools installs it, so CI never skips."""
    path = shutil.which(KUBECTL)
    if path is None:
        pytest.skip(f"{KUBECTL} not on PATH: run scripts/setup --with-tools (installs Debian's kubernetes-client)")
    return path


@cache
def _render(directory: Path, kubectl: str) -> tuple[Manifest, ...]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} exited {result.returncode}:\n{result.stderr}", pytrace=False)
    return tuple(cast("Manifest", doc) for doc in yaml.safe_load_all(result.stdout) if doc)


def render(directory: Path) -> list[Manifest]:
    """``kubectl kustomize DIRECTORY``, parsed; a failed render fails the test with kustomize's message."""
    return list(_render(directory, kubectl_path()))


def find(documents: Iterable[Manifest], kind: str, name: str) -> Manifest:
    """The one object of ``kind`` named ``name``."""
    found = [doc for doc in documents if doc["kind"] == kind and doc["metadata"]["name"] == name]
    if len(found) != 1:
        raise LookupError(f"{len(found)} objects {kind}/{name}")
    return found[0]


def is_builtin(document: Mapping[str, Any]) -> bool:
    """Whether a Kubernetes schema covers it (not a Prometheus Operator custom resource)."""
    return not str(document["apiVersion"]).startswith(CRD_GROUP)


def schema_errors(document: Manifest, version: str) -> str | None:
    """kubernetes-validate in strict mode (unknown fields are errors): None, or the error."""
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{document['kind']}/{document['metadata']['name']} at {list(exc.path)}: {exc.message}"
    return None


def _unknown_fields(given: Any, kept: Any, path: str = "") -> Iterator[str]:
    """Paths present in ``given`` that the model dropped (pydantic ignores extra fields)."""
    if isinstance(given, dict):
        kept_map = kept if isinstance(kept, dict) else {}
        for key, value in given.items():
            if key not in kept_map:
                yield f"{path}.{key}"
            else:
                yield from _unknown_fields(value, kept_map[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(kept, list):
        for index, (item, kept_item) in enumerate(zip(given, kept, strict=False)):
            yield from _unknown_fields(item, kept_item, f"{path}[{index}]")


def crd_errors(document: Manifest) -> str | None:
    """Check a ServiceMonitor or PrometheusRule against the Prometheus Operator's CRD schemas.

    The models (cloudcoil-models-prometheus-operator) are generated from the operator's CRDs:
    types, enums, required fields and patterns are checked by validation; an unknown field
    (which the models would ignore) is caught by comparing the input with the model's dump.
    """
    from pydantic import ValidationError

    models = _crd_models()
    model = getattr(models, str(document["kind"]))
    try:
        parsed = model.model_validate(document)
    except ValidationError as exc:
        return f"{document['kind']}/{document['metadata']['name']}: {exc}"
    unknown = list(_unknown_fields(document, parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")))
    if unknown:
        return f"{document['kind']}/{document['metadata']['name']}: unknown fields {unknown}"
    return None


@cache
def _crd_models() -> Any:
    # Several seconds to import (thousands of generated models): only when a test needs it.
    from cloudcoil.models.prometheus_operator import v1

    return v1


def prestop_sleep_seconds(container: Mapping[str, Any]) -> float:
    """The seconds a ``sleep N`` preStop (exec, or the native sleep action) waits."""
    pre_stop = container["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = " ".join(pre_stop["exec"]["command"])
    match = re.fullmatch(r"(?:/bin/)?sleep (\d+(?:\.\d+)?)", command)
    if match is None:
        raise ValueError(f"preStop is not a plain sleep: {command!r}")
    return float(match.group(1))
