"""The Kubernetes manifests (deploy/kubernetes), checked offline: schemas, kustomize renders, and the contracts.

No cluster runs here. What is checked: every built-in object against the Kubernetes
schemas (kubernetes-validate, strict), the Prometheus Operator objects against models
generated from its CRDs, `kubectl kustomize` of the base and the overlay, and the
relations a cluster would only reveal in production (probe paths and ports, drain timing,
the job label the rules select on, the PrometheusRule equal to monitoring/rules/).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.settings import ENV_PREFIX, Settings
from monitoring import prometheusrule
from monitoring.configs import JOB, rule_files
from tests.compose_support import DOCKERFILE
from tests.kubernetes_support import (
    BASE_DIR,
    KUBERNETES_VERSIONS,
    OVERLAY_DIR,
    Manifest,
    base_documents,
    crd_errors,
    find,
    is_builtin,
    load_documents,
    prestop_sleep_seconds,
    render,
    schema_errors,
)

NAME: Final = "flowgpt-gateway"
REDIS: Final = "flowgpt-gateway-redis"
# After the grace the gateway waits up to 2 s for the handlers it cancelled (InFlightTracker.drain)
# and up to 1 s for aiohttp to close idle connections (AppRunner shutdown_timeout in gateway.cli).
GATEWAY_EXIT_AFTER_GRACE_SECONDS: Final = 3.0
# Settings that hold tokens, or URLs that may: only in the Secret, never in the ConfigMap.
SECRET_SETTINGS: Final = frozenset(
    {"GATEWAY_UPSTREAM_TOKEN", "GATEWAY_ADMIN_TOKEN", "GATEWAY_API_KEYS", "GATEWAY_REDIS_URL", "GATEWAY_UPSTREAMS"}
)
RENDERS: Final = {"base": BASE_DIR, "overlay": OVERLAY_DIR}


@pytest.fixture(name="base")
def fixture_base() -> list[Manifest]:
    """The base's objects as written (no kustomize)."""
    return base_documents()


@pytest.fixture(name="overlay")
def fixture_overlay() -> list[Manifest]:
    """The example overlay rendered by kubectl kustomize."""
    return render(OVERLAY_DIR)


def gateway_container(documents: list[Manifest]) -> dict[str, Any]:
    """The gateway Deployment's one container."""
    (container,) = find(documents, "Deployment", NAME)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def settings_env(documents: list[Manifest]) -> dict[str, str]:
    """The environment the gateway gets: the ConfigMap's data, then the Secret's stringData."""
    config = find(documents, "ConfigMap", NAME)["data"]
    secret = find(documents, "Secret", NAME).get("stringData", {})
    return {**config, **secret}


def test_kustomization_lists_every_base_file() -> None:
    """Every manifest file in base/ is a resource of its kustomization, and every listed file exists."""
    listed = set(load_documents(BASE_DIR / "kustomization.yaml")[0]["resources"])
    on_disk = {path.name for path in BASE_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_base_builtin_objects_pass_kubernetes_schemas(base: list[Manifest], version: str) -> None:
    """Every built-in object of the base passes kubernetes-validate --strict for the oldest and newest targets."""
    builtins = [doc for doc in base if is_builtin(doc)]
    assert {doc["kind"] for doc in builtins} >= {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    assert [error for doc in builtins if (error := schema_errors(doc, version))] == []


@pytest.mark.parametrize("which", sorted(RENDERS))
def test_kustomize_render_passes_schemas(which: str) -> None:
    """kubectl kustomize renders base and overlay; every built-in object passes the schemas, every CRD object the CRD models."""
    documents = render(RENDERS[which])
    errors = [schema_errors(doc, KUBERNETES_VERSIONS[-1]) for doc in documents if is_builtin(doc)]
    errors += [crd_errors(doc) for doc in documents if not is_builtin(doc)]
    assert [error for error in errors if error] == []
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds.count("Deployment") == 2
    assert {"ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(kinds)


def test_schema_check_is_strict(base: list[Manifest]) -> None:
    """A misspelled field in the Deployment fails the Kubernetes schema check (strict mode)."""
    deployment = copy.deepcopy(find(base, "Deployment", NAME))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/readyz"}}
    error = schema_errors(deployment, KUBERNETES_VERSIONS[-1])
    assert error is not None
    assert "readinessprobe" in error


def test_base_crd_objects_pass_prometheus_operator_models(base: list[Manifest]) -> None:
    """The ServiceMonitor and PrometheusRule pass the models generated from the Prometheus Operator's CRDs."""
    crds = [doc for doc in base if not is_builtin(doc)]
    assert sorted(doc["kind"] for doc in crds) == ["PrometheusRule", "ServiceMonitor"]
    assert [error for doc in crds if (error := crd_errors(doc))] == []


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"),
    [
        ("ServiceMonitor", ("spec", "endpoints", 0, "intervall"), "15s", "unknown fields"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "15 seconds", "pattern"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), "1 minute", "pattern"),
    ],
)
def test_crd_check_rejects_bad_objects(
    base: list[Manifest], kind: str, path: tuple[str | int, ...], value: str, expected: str
) -> None:
    """The CRD check rejects an unknown field and a malformed duration."""
    document = copy.deepcopy(find(base, kind, NAME))
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    error = crd_errors(document)
    assert error is not None
    assert expected in error


def test_overlay_sets_namespace_image_and_selector_labels(overlay: list[Manifest]) -> None:
    """The overlay puts every object in its namespace, points at the registry's image, and labels the Prometheus objects."""
    namespaced = [doc for doc in overlay if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {"flowgpt-gateway"}
    assert gateway_container(overlay)["image"] == "registry.example.com/platform/flowgpt-gateway:0.1.0"
    for kind in ("ServiceMonitor", "PrometheusRule"):
        labels = find(overlay, kind, NAME)["metadata"]["labels"]
        assert labels["release"] == "kube-prometheus-stack"
        assert labels["app.kubernetes.io/name"] == NAME  # merged, not replaced
    env = settings_env(overlay)
    assert env["GATEWAY_SHUTDOWN_TIMEOUT"] == "20"  # the base's settings survive the patch
    assert "GATEWAY_UPSTREAM_TOKEN" in env


def test_probes_paths_and_ports(base: list[Manifest]) -> None:
    """Readiness asks /readyz, liveness and startup /healthz, all on the port the gateway listens on."""
    container = gateway_container(base)
    paths = {probe: container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert paths == {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    (port,) = container["ports"]
    assert {container[probe]["httpGet"]["port"] for probe in paths} == {port["name"]}
    assert port["containerPort"] == int(settings_env(base)["GATEWAY_PORT"])
    assert settings_env(base)["GATEWAY_HOST"] == "0.0.0.0"
    exposed = re.search(r"^EXPOSE (\d+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert exposed is not None
    assert port["containerPort"] == int(exposed.group(1))


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_grace_period_outlasts_prestop_and_drain(base: list[Manifest], which: str) -> None:
    """terminationGracePeriodSeconds > preStop sleep + GATEWAY_SHUTDOWN_TIMEOUT (+ the gateway's exit), so SIGKILL never cuts the drain."""
    documents = base if which == "base" else render(OVERLAY_DIR)
    pod = find(documents, "Deployment", NAME)["spec"]["template"]["spec"]
    sleep = prestop_sleep_seconds(gateway_container(documents))
    shutdown = float(settings_env(documents)["GATEWAY_SHUTDOWN_TIMEOUT"])
    assert sleep >= 5, "kube-proxy and ingress controllers need seconds to drop a terminating endpoint"
    assert pod["terminationGracePeriodSeconds"] > sleep + shutdown + GATEWAY_EXIT_AFTER_GRACE_SECONDS


def test_liveness_does_not_restart_a_draining_pod(base: list[Manifest]) -> None:
    """/healthz is 503 while draining: liveness needs longer than GATEWAY_SHUTDOWN_TIMEOUT of failures to act."""
    liveness = gateway_container(base)["livenessProbe"]
    shutdown = float(settings_env(base)["GATEWAY_SHUTDOWN_TIMEOUT"])
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > shutdown


@pytest.mark.parametrize("kind", ["Deployment/flowgpt-gateway", "Deployment/flowgpt-gateway-redis"])
def test_pods_are_non_root_read_only_and_bounded(base: list[Manifest], kind: str) -> None:
    """Every pod runs non-root with a read-only root filesystem, writes only to emptyDirs, and has requests and limits."""
    pod = find(base, *kind.split("/"))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert {mount["name"] for mount in container["volumeMounts"]} <= empty_dirs
        assert set(container["resources"]) == {"requests", "limits"}
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}


def test_gateway_writes_only_to_tmp_and_runs_as_the_image_user(base: list[Manifest]) -> None:
    """The gateway's one writable mount is /tmp, and it runs as the uid the Dockerfile creates."""
    container = gateway_container(base)
    assert [mount["mountPath"] for mount in container["volumeMounts"]] == ["/tmp"]
    uid = re.search(r"useradd .*--uid (\d+)", DOCKERFILE.read_text(encoding="utf-8"))
    assert uid is not None
    pod = find(base, "Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))


def test_settings_come_from_the_configmap_and_tokens_from_the_secret(base: list[Manifest]) -> None:
    """The gateway reads the ConfigMap and the Secret; every key is a real setting, valid, and tokens are only in the Secret."""
    container = gateway_container(base)
    assert container["envFrom"] == [{"configMapRef": {"name": NAME}}, {"secretRef": {"name": NAME}}]
    overlay_patches = [doc for name in ("settings.yaml", "secret.yaml") for doc in load_documents(OVERLAY_DIR / name)]
    config = {**find(base, "ConfigMap", NAME)["data"], **find(overlay_patches, "ConfigMap", NAME)["data"]}
    secret = {**find(base, "Secret", NAME)["stringData"], **find(overlay_patches, "Secret", NAME)["stringData"]}
    assert not SECRET_SETTINGS & set(config)
    assert set(secret) <= SECRET_SETTINGS
    env = {**config, **secret}
    assert all(key.startswith(ENV_PREFIX) for key in env)
    fields = {key.removeprefix(ENV_PREFIX).lower(): value for key, value in env.items()}
    assert set(fields) <= set(Settings.model_fields), "a key the gateway would silently ignore"
    Settings(**fields)  # every value parses


def test_fleet_points_at_the_redis_service(base: list[Manifest]) -> None:
    """GATEWAY_REDIS_URL names the Redis Service and its port, and that Service selects the one-replica Redis."""
    url = urlsplit(settings_env(base)["GATEWAY_REDIS_URL"])
    service = find(base, "Service", REDIS)
    assert (url.scheme, url.hostname, url.port) == ("redis", REDIS, service["spec"]["ports"][0]["port"])
    redis = find(base, "Deployment", REDIS)
    assert redis["spec"]["replicas"] == 1
    assert redis["spec"]["strategy"]["type"] == "Recreate"
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]


def test_service_pdb_hpa_and_monitor_select_the_gateway(base: list[Manifest]) -> None:
    """The Service, PDB and ServiceMonitor select the gateway pods (not Redis); the HPA scales the Deployment from 2 on CPU."""
    deployment = find(base, "Deployment", NAME)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(base, "Service", NAME)
    assert deployment["spec"]["replicas"] == 2
    assert service["spec"]["selector"] == pod_labels
    assert find(base, "PodDisruptionBudget", NAME)["spec"]["selector"]["matchLabels"] == pod_labels
    assert find(base, "Service", REDIS)["spec"]["selector"] != pod_labels
    hpa = find(base, "HorizontalPodAutoscaler", NAME)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] < hpa["maxReplicas"]
    assert [metric["resource"]["name"] for metric in hpa["metrics"]] == ["cpu"]
    monitor = find(base, "ServiceMonitor", NAME)["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [(ep["port"], ep["path"]) for ep in monitor["endpoints"]] == [(service["spec"]["ports"][0]["name"], "/metrics")]


def test_servicemonitor_job_is_the_one_the_rules_select(base: list[Manifest]) -> None:
    """The ServiceMonitor's jobLabel gives job="flowgpt-gateway", the job every rule selects on."""
    monitor = find(base, "ServiceMonitor", NAME)["spec"]
    service_labels = find(base, "Service", NAME)["metadata"]["labels"]
    assert service_labels[monitor["jobLabel"]] == JOB


def test_prometheusrule_is_generated_from_the_rules_files() -> None:
    """The committed PrometheusRule is exactly what monitoring/rules/*.yml generate, and carries their groups unchanged."""
    committed = prometheusrule.MANIFEST.read_text(encoding="utf-8")
    assert committed == prometheusrule.render(), "stale: run python -m monitoring.prometheusrule"
    groups = [group for path in rule_files() for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]]
    assert yaml.safe_load(committed)["spec"]["groups"] == groups


def test_prometheusrule_check_reports_a_stale_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """python -m monitoring.prometheusrule --check exits 1 for a stale manifest and 0 once regenerated."""
    manifest = tmp_path / "prometheusrule.yaml"
    manifest.write_text(prometheusrule.render().replace("for: 1m", "for: 2m", 1), encoding="utf-8")
    monkeypatch.setattr(prometheusrule, "MANIFEST", manifest)
    assert prometheusrule.main(["--check"]) == 1
    assert prometheusrule.main([]) == 0
    assert prometheusrule.main(["--check"]) == 0


REPO: Final = Path(__file__).resolve().parents[1]


def test_runbook_links_resolve_on_kubernetes_too() -> None:
    """The rules link to runbook_base_url: the README's Kubernetes section says how to set it, and the image serves it."""
    rule = (REPO / "deploy/kubernetes/base/prometheusrule.yaml").read_text()
    assert "$externalLabels.runbook_base_url" in rule
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Kubernetes") :]
    section = section[: section.index("\n## ")]
    assert "spec.externalLabels.runbook_base_url" in section
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY docs/runbook.md" in dockerfile
    assert "GATEWAY_RUNBOOK_PATH=" in dockerfile
    assert "!docs/runbook.md" in (REPO / ".dockerignore").read_text()
