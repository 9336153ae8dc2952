"""The Kubernetes manifests: every rendered document (base and example overlay) is valid against
the Kubernetes API schemas (``kubernetes-validate``, offline, strict: unknown fields refused),
and the invariants a zero-drop rollout and a hardened pod depend on hold."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from service.callers_file import parse_callers
from service.config import GatewaySettings, OpenRouterSettings, split_host_port
from service.domain.schemas import SchemaRegistry
from tests.deploy.kustomize import Document, KustomizeError, apply_operation, render

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = sorted(p for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
# The oldest release with gRPC probes (GA in 1.27) and the newest the package ships.
VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
SECRET_MOUNT_KEYS = ("openrouter-api-key",)


def _trees() -> Iterator[Path]:
    yield BASE
    yield from OVERLAYS


TREES = list(_trees())
TREE_IDS = [str(p.relative_to(KUBERNETES)) for p in TREES]


@pytest.fixture(scope="module", params=TREES, ids=TREE_IDS)
def rendered(request: pytest.FixtureRequest) -> list[Document]:
    documents = render(request.param)
    assert documents
    return documents


def _one(documents: list[Document], kind: str, name: str | None = None) -> Document:
    found = [
        d
        for d in documents
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def _container(documents: list[Document]) -> dict[str, Any]:
    [container] = _one(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_document_is_valid_against_the_kubernetes_schemas(
    rendered: list[Document], version: str
) -> None:
    for document in rendered:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{document['kind']}/{document['metadata']['name']}: {where}: {exc.message}"
            )


def test_the_kinds_a_production_deployment_needs_are_there(rendered: list[Document]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    assert kinds == sorted(
        [
            ("ConfigMap", "llm-gateway-callers"),
            ("ConfigMap", "llm-gateway-schemas"),
            ("Deployment", "llm-gateway"),
            ("HorizontalPodAutoscaler", "llm-gateway"),
            ("NetworkPolicy", "llm-gateway"),
            ("PodDisruptionBudget", "llm-gateway"),
            ("Secret", "llm-gateway"),
            ("Service", "llm-gateway"),
            ("Service", "llm-gateway-headless"),
            ("ServiceAccount", "llm-gateway"),
        ]
    )


def test_probes_speak_grpc_health_on_the_listen_port(rendered: list[Document]) -> None:
    container = _container(rendered)
    env = _env(container)
    _, listen_port = split_host_port(env["GATEWAY_LISTEN"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == listen_port
    assert ports["metrics"] == int(env["GATEWAY_PROMETHEUS_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": listen_port}, probe
    # Readiness fails within one period of SIGTERM, well inside the drain delay.
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < float(
        env["GATEWAY_DRAIN_DELAY_S"]
    )
    annotations = _one(rendered, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == env["GATEWAY_PROMETHEUS_PORT"]


def test_the_termination_grace_outlasts_the_drain_delay_and_the_stream_grace(
    rendered: list[Document],
) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    env = _env(_container(rendered))
    delay = float(env["GATEWAY_DRAIN_DELAY_S"])
    grace = float(env["GATEWAY_SHUTDOWN_GRACE_S"])
    assert delay > 0
    # The ledger flush and telemetry export come after the grace: leave them time too.
    assert pod["terminationGracePeriodSeconds"] >= delay + grace + 5


def test_the_pod_runs_hardened(rendered: list[Document]) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    container = _container(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The image's own user (Dockerfile: USER 10001).
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}" in dockerfile
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_several_replicas_share_quotas_and_ledger(rendered: list[Document]) -> None:
    container = _container(rendered)
    from_secret = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(from_secret) >= {"GATEWAY_REDIS_URL", "GATEWAY_LEDGER_DSN"}
    secret = _one(rendered, "Secret")
    for ref in from_secret.values():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    hpa = _one(rendered, "HorizontalPodAutoscaler")
    pdb = _one(rendered, "PodDisruptionBudget")
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == _one(rendered, "Deployment")["metadata"]["name"]
    strategy = _one(rendered, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    # The HPA owns the replica count.
    assert "replicas" not in _one(rendered, "Deployment")["spec"]


def test_selectors_find_the_pods(rendered: list[Document]) -> None:
    deployment = _one(rendered, "Deployment")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(_one(rendered, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    assert selects(_one(rendered, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"])
    port_names = {p["name"] for p in _container(rendered)["ports"]}
    for name in ("llm-gateway", "llm-gateway-headless"):
        service = _one(rendered, "Service", name)
        assert selects(service["spec"]["selector"])
        grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["appProtocol"] == "grpc"
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert _one(rendered, "Service", "llm-gateway-headless")["spec"]["clusterIP"] == "None"


def test_mounted_configuration_reloads_and_is_valid(rendered: list[Document]) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    container = _container(rendered)
    env = _env(container)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # subPath mounts are never updated by the kubelet: reloads would never see a change.
    assert all("subPath" not in m for m in mounts.values())

    def mounted_at(path: str) -> tuple[dict[str, Any], str]:
        for name, mount in mounts.items():
            prefix = mount["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix) or path == mount["mountPath"]:
                return volumes[name], path.removeprefix(prefix)
        raise AssertionError(f"{path} is on no volume")

    callers_volume, callers_file = mounted_at(env["GATEWAY_CALLERS_FILE"])
    callers_map = _one(rendered, "ConfigMap", callers_volume["configMap"]["name"])
    assert parse_callers(callers_map["data"][callers_file])  # the gateway's own parser

    schemas_volume, _ = mounted_at(env["GATEWAY_SCHEMAS_DIR"])
    schemas_map = _one(rendered, "ConfigMap", schemas_volume["configMap"]["name"])
    assert set(schemas_map["data"]) >= {p.name for p in (ROOT / "schemas").glob("*.json")}

    key_volume, key_path = mounted_at(env["OPENROUTER_API_KEY_FILE"])
    secret = _one(rendered, "Secret", key_volume["secret"]["secretName"])
    [item] = key_volume["secret"]["items"]
    assert item["path"] == key_path
    assert item["key"] in secret["stringData"]
    # Every other path the gateway writes is a writable volume (the root is read-only).
    image_ledger = re.search(r"GATEWAY_LEDGER_PATH=(\S+)", (ROOT / "Dockerfile").read_text())
    assert image_ledger is not None
    for path in (image_ledger.group(1), "/tmp/x"):
        assert "emptyDir" in mounted_at(path)[0], path


def test_every_setting_given_is_a_valid_setting(rendered: list[Document]) -> None:
    env = _env(_container(rendered))
    gateway = {
        k.removeprefix("GATEWAY_").lower(): v for k, v in env.items() if k.startswith("GATEWAY_")
    }
    openrouter = {
        k.removeprefix("OPENROUTER_").lower(): v
        for k, v in env.items()
        if k.startswith("OPENROUTER_")
    }
    assert set(gateway) <= set(GatewaySettings.model_fields), set(gateway) - set(
        GatewaySettings.model_fields
    )
    assert set(openrouter) <= set(OpenRouterSettings.model_fields)
    GatewaySettings.model_validate(gateway)
    others = set(env) - {k for k in env if k.startswith(("GATEWAY_", "OPENROUTER_", "OTEL_"))}
    assert others <= {"POD_NAME", "POD_NAMESPACE"}


def test_env_references_name_earlier_variables(rendered: list[Document]) -> None:
    # Kubernetes expands $(NAME) only for variables defined earlier in the list.
    seen: set[str] = set()
    for variable in _container(rendered)["env"]:
        for name in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", variable.get("value", "")):
            assert name in seen, f"{variable['name']} refers to $({name}) before it is defined"
        seen.add(variable["name"])


def test_the_schemas_configmap_is_generated_from_schemas(tmp_path: Path) -> None:
    out = tmp_path / "configmap.yaml"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "k8s-schemas-configmap.py"), str(out)], check=True
    )
    assert out.read_text() == (BASE / "configmap-schemas.yaml").read_text(), (
        "deploy/kubernetes/base/configmap-schemas.yaml is stale: run 'make k8s-schemas'"
    )
    data = _one(render(BASE), "ConfigMap", "llm-gateway-schemas")["data"]
    folder = tmp_path / "schemas"
    folder.mkdir()
    for name, text in data.items():
        (folder / name).write_text(text)
    assert set(SchemaRegistry.load(folder).names()) == {
        p.stem for p in (ROOT / "schemas").glob("*.json")
    }


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(KustomizeError, match="configMapGenerator"):
        render(tmp_path)
    document: Document = {"spec": {"list": [1, 2]}, "a~b": {"c/d": 1}}
    apply_operation(document, {"op": "add", "path": "/spec/list/-", "value": 3})
    apply_operation(document, {"op": "replace", "path": "/a~0b/c~1d", "value": 2})
    apply_operation(document, {"op": "remove", "path": "/spec/list/0"})
    assert document == {"spec": {"list": [2, 3]}, "a~b": {"c/d": 2}}
    with pytest.raises(KustomizeError):
        apply_operation(document, {"op": "replace", "path": "/spec/missing", "value": 1})
