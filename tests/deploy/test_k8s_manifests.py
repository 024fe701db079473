"""Offline validation of deploy/k8s against the Kubernetes schemas bundled by ``kubernetes-validate``
(strict: unknown fields are errors) and of the KServe example against a schema derived from the KServe
SDK (see gen_kserve_schema.py), plus the cross-references a schema cannot see."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (bundles the Kubernetes JSON schemas)"
)
import jsonschema  # noqa: E402  (a dependency of kubernetes-validate)
from kubernetes_validate import utils as kv  # noqa: E402
from referencing import Registry, Resource  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KSERVE_SCHEMA = Path(__file__).parent / "schemas" / "kserve-v1beta1-inferenceservice.schema.json"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes we claim to support; the manifests use nothing newer


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def plain_manifests() -> dict[str, dict]:
    """kind -> document for the kustomization's resources (each file holds one document)."""
    kust = load_docs(K8S / "kustomization.yaml")[0]
    docs = {}
    for name in kust["resources"]:
        for doc in load_docs(K8S / name):
            docs[doc["kind"]] = doc
    return docs


def k8s_validate(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def kserve_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(KSERVE_SCHEMA.read_text())
    defs_dir = f"kubernetes-json-schema/v{kv.latest_version()}-local-strict"
    k8s_defs = kv.schema_contents(f"{defs_dir}/_definitions.json", kv.latest_version())
    registry = Resource.from_contents(k8s_defs) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_kustomization_lists_every_plain_manifest():
    kust = load_docs(K8S / "kustomization.yaml")[0]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk
    assert set(plain_manifests()) == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_is_valid_kubernetes(path):
    for doc in load_docs(K8S / path):
        k8s_validate(doc)


def test_validation_catches_mistakes():
    """The validator must reject what a cluster would reject, or the test above proves nothing."""
    dep = plain_manifests()["Deployment"]
    typo = copy.deepcopy(dep)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/readyz"}}
    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["replicas"] = "two"
    no_image_name = copy.deepcopy(dep)
    del no_image_name["spec"]["template"]["spec"]["containers"][0]["name"]
    for bad in (typo, wrong_type, no_image_name):
        with pytest.raises(kubernetes_validate.ValidationError):
            k8s_validate(bad)


def test_deployment_gpu_probes_and_scraping():
    docs = plain_manifests()
    dep, svc, cm = docs["Deployment"], docs["Service"], docs["ConfigMap"]
    hpa = docs["HorizontalPodAutoscaler"]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    port = next(p for p in container["ports"] if p["name"] == "http")

    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The startup probe waits for a warm model (a TensorRT engine build), which /healthz cannot tell.
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 20 * 60
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", port["containerPort"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == port["containerPort"]
    assert ann["prometheus.io/path"] == "/metrics"
    # The service listens where the ConfigMap tells it to, and that is the port the pod declares.
    assert container["envFrom"][0]["configMapRef"]["name"] == cm["metadata"]["name"]
    assert int(cm["data"]["SERVE_PORT"]) == port["containerPort"]
    grpc_port = next(p for p in container["ports"] if p["name"] == "grpc")
    assert int(cm["data"]["SERVE_GRPC_PORT"]) == grpc_port["containerPort"]
    grpc_service = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_service["targetPort"] in ("grpc", grpc_port["containerPort"])
    assert grpc_service["appProtocol"] == "kubernetes.io/h2c"
    assert cm["data"]["SERVE_HOST"] == "0.0.0.0"

    # The selectors line up: Deployment -> its pods, Service -> the pods, HPA -> the Deployment.
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", port["containerPort"])
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kserve_inferenceservice_matches_schema():
    (isvc,) = load_docs(K8S / "kserve" / "inferenceservice.yaml")
    kserve_validator().validate(isvc)
    (container,) = isvc["spec"]["predictor"]["containers"]
    # Same image as the Deployment, OIP (v2) probes, a GPU.
    deployment_pod = plain_manifests()["Deployment"]["spec"]["template"]["spec"]
    assert container["image"] == deployment_pod["containers"][0]["image"]
    assert container["readinessProbe"]["httpGet"]["path"].startswith("/v2/")
    assert container["livenessProbe"]["httpGet"]["path"].startswith("/v2/")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["ports"][0]["containerPort"] == int(
        next(e["value"] for e in container["env"] if e["name"] == "SERVE_PORT")
    )


def test_kserve_schema_catches_mistakes():
    (isvc,) = load_docs(K8S / "kserve" / "inferenceservice.yaml")
    validator = kserve_validator()
    typo = copy.deepcopy(isvc)
    typo["spec"]["predictor"]["container"] = typo["spec"]["predictor"].pop("containers")
    no_predictor = copy.deepcopy(isvc)
    del no_predictor["spec"]["predictor"]
    bad_replicas = copy.deepcopy(isvc)
    bad_replicas["spec"]["predictor"]["minReplicas"] = "one"
    bad_container = copy.deepcopy(isvc)  # checked against the real Kubernetes Container schema
    bad_container["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for bad in (typo, no_predictor, bad_replicas, bad_container):
        assert not validator.is_valid(bad)


def test_kserve_grpc_variant_routes_the_grpc_port_as_h2c():
    (isvc,) = load_docs(K8S / "kserve" / "inferenceservice-grpc.yaml")
    kserve_validator().validate(isvc)
    (http_isvc,) = load_docs(K8S / "kserve" / "inferenceservice.yaml")
    (container,) = isvc["spec"]["predictor"]["containers"]
    (http_container,) = http_isvc["spec"]["predictor"]["containers"]
    assert container["image"] == http_container["image"]
    (port,) = container["ports"]  # Knative routes one port per container
    assert port["name"] == "h2c"  # KServe's name for a gRPC (HTTP/2 cleartext) port
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (
        port["containerPort"]
        == int(env["SERVE_GRPC_PORT"])
        == container["readinessProbe"]["tcpSocket"]["port"]
    )
    assert isvc["metadata"]["name"] != http_isvc["metadata"]["name"]
