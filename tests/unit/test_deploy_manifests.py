"""The deployment files apply as written: every Kubernetes object validates
against the API schema (kubernetes-validate, strict), everything the
StatefulSet names exists or is optional, probes and scrapes hit views the
worker serves, and the Dockerfile passes hadolint. No cluster is needed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
#: The oldest Kubernetes the manifests are meant for.
KUBERNETES_VERSION = "1.30.0"
#: Kinds a cluster only knows once their operator is installed.
CUSTOM_KINDS = {"ScaledObject"}


def documents() -> list[tuple[str, dict[str, Any]]]:
    yaml = YAML(typ="safe")
    return [
        (path.name, doc)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in yaml.load_all(path.read_text())
        if doc
    ]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in documents() if doc["kind"] not in CUSTOM_KINDS],
    ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}",
)
def test_every_object_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_what_the_statefulset_names_exists() -> None:
    worker = of_kind("StatefulSet")["iotcrm-worker"]
    pod = worker["spec"]["template"]
    labels = pod["metadata"]["labels"]
    service = of_kind("Service")[worker["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None", "a StatefulSet's service is headless"
    assert service["spec"]["selector"].items() <= labels.items()
    budget = of_kind("PodDisruptionBudget")["iotcrm-worker"]["spec"]["selector"]["matchLabels"]
    assert budget.items() <= labels.items()
    config_maps = of_kind("ConfigMap")
    (container,) = pod["spec"]["containers"]
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] in config_maps
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume:
            ref = volume["configMap"]
            assert ref["name"] in config_maps or ref.get("optional"), ref
    for variable in container.get("env", []):
        secret = variable.get("valueFrom", {}).get("secretKeyRef")
        if secret:  # secrets are the operator's; the worker runs without them
            assert secret.get("optional") is True, secret


def test_the_pod_runs_unprivileged() -> None:
    pod = of_kind("StatefulSet")["iotcrm-worker"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    dockerfile = (REPO / "deploy" / "container" / "Dockerfile").read_text()
    assert f"USER {pod['securityContext']['runAsUser']}" in dockerfile


def test_probes_and_scrapes_use_views_the_worker_serves() -> None:
    served = set(re.findall(r'@app\.page\("([^"]+)"\)', (REPO / "agents" / "app.py").read_text()))
    worker = of_kind("StatefulSet")["iotcrm-worker"]["spec"]["template"]
    (container,) = worker["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" in served
    assert container["livenessProbe"]["httpGet"]["path"] == "/health" in served
    assert worker["metadata"]["annotations"]["prometheus.io/path"] in served
    config = of_kind("ConfigMap")["iotcrm-config"]["data"]
    assert config["IOTCRM_WORKER_WEB_HOST"] == "0.0.0.0", "probes come from outside the pod"


def test_autoscaling_targets_the_workers_and_stops_at_the_partitions() -> None:
    scaled = of_kind("ScaledObject")["iotcrm-worker"]["spec"]
    target = scaled["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", "iotcrm-worker")
    config = of_kind("ConfigMap")["iotcrm-config"]["data"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert scaled["maxReplicaCount"] <= int(config["IOTCRM_KAFKA_PARTITIONS"])
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["bootstrapServers"] == config["IOTCRM_KAFKA_BOOTSTRAP"]


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, str(REPO / "deploy" / "container" / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_grafana_dashboard_plots_only_metrics_the_worker_exposes() -> None:
    import json

    from agents.prometheus import COUNTERS, GAUGES, Latencies

    exposed = {
        f"iotcrm_{section}_{key}_total" for section, keys in COUNTERS.items() for key in keys
    }
    exposed |= {name for name, _ in GAUGES.values()}
    exposed |= {"iotcrm_actions_total", "iotcrm_actor_suppressed_total"}
    exposed |= {"iotcrm_consumer_lag_records"}
    latencies = Latencies()
    exposed |= {
        f"{metric.name}_{series}"
        for histogram in (latencies.event, latencies.action)
        for metric in histogram.collect()
        for series in ("bucket", "count", "sum")
    }
    dashboard = json.loads((REPO / "deploy" / "grafana" / "iotcrm-workers.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\biotcrm_[a-z0-9_]+", target["expr"])
    }
    assert used, "the dashboard plots something"
    assert used <= exposed, f"not exposed by the worker: {sorted(used - exposed)}"


def test_the_mqtt_bridge_runs_alone_unprivileged_with_what_it_names() -> None:
    from engine.cli import build_parser
    from engine.config import SECRETS

    bridge = of_kind("Deployment")["iotcrm-mqtt-bridge"]["spec"]
    # One persistent MQTT session: never two bridges at once, not even during a rollout.
    assert (bridge["replicas"], bridge["strategy"]["type"]) == (1, "Recreate")
    pod = bridge["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    build_parser().parse_args(container["args"])  # a command the CLI has
    config_maps = of_kind("ConfigMap")
    assert all(s["configMapRef"]["name"] in config_maps for s in container["envFrom"])
    for variable in container["env"]:
        secret = variable.get("valueFrom", {}).get("secretKeyRef")
        if secret:
            assert secret.get("optional") is True
            assert variable["name"].removeprefix("IOTCRM_") in SECRETS
