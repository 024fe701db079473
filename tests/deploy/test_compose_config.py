"""Static checks of the compose stack, the images' Dockerfiles, Prometheus and Grafana provisioning: the
pieces refer to each other correctly, and the dashboard only uses metrics the service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "resnet-serve.json"


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that keeps Compose's merge tags (!reset, !override) visible."""


class Reset:
    def __init__(self, value):
        self.value = value


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset(node.value))


def compose(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def gpu_devices(service: dict):
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")


def test_compose_services_gpu_and_cpu_override():
    base = compose("docker-compose.yml")["services"]
    assert {"service", "prometheus", "grafana", "trainer"} <= set(base)
    for name in ("service", "trainer"):
        (device,) = gpu_devices(base[name])
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu_devices(base["prometheus"]) is None and gpu_devices(base["grafana"]) is None

    cpu = compose("docker-compose.cpu.yml")["services"]
    for name in ("service", "trainer"):
        assert isinstance(gpu_devices(cpu[name]), Reset), f"{name}: the CPU override must !reset the GPUs"
    assert cpu["service"]["environment"]["SERVE_PROVIDERS"] == "cpu"


def test_compose_service_port_models_and_trainer_profile():
    services = compose("docker-compose.yml")["services"]
    svc, trainer = services["service"], services["trainer"]
    assert any(p.endswith(":${SERVICE_PORT:-8000}:8000") for p in svc["ports"])
    assert any(p.endswith(":${SERVICE_GRPC_PORT:-8001}:8001") for p in svc["ports"])  # gRPC, as the image
    assert svc["environment"]["SERVE_MODELS_DIR"] == "/app/models"
    models_mount = "${MODELS_DIR:-./models}:/app/models"
    assert f"{models_mount}:ro" in svc["volumes"]
    assert models_mount in trainer["volumes"], "the trainer must publish where the service reads"
    assert trainer["profiles"] == ["train"]
    assert trainer["command"][:2] == ["python", "training/train.py"]
    assert svc["build"]["dockerfile"] == "docker/Dockerfile.service"
    assert trainer["build"]["dockerfile"] == "docker/Dockerfile.trainer"
    assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    # The images users get by default are the official ones.
    assert services["prometheus"]["image"].startswith("${PROMETHEUS_IMAGE:-prom/prometheus:")
    assert services["grafana"]["image"].startswith("${GRAFANA_IMAGE:-grafana/grafana:")


def test_mounted_config_files_exist():
    for service in compose("docker-compose.yml")["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./docker/"):
                assert (ROOT / source).exists(), source


def test_prometheus_scrapes_the_service():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "resnet-serve"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["service:8000"]


def test_service_dockerfile():
    text = (DOCKER / "Dockerfile.service").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", text, re.M)
    assert "onnxruntime-gpu" in (DOCKER / "requirements_from_pyproject.py").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/readyz", text, re.M)
    # The shipped models (./models and the ResNet-50 imported in a build stage) live beneath the models
    # directory that compose and users mount, so a mount adds models instead of hiding them.
    assert re.search(r"^\s+SERVE_MODELS_DIR=/app/models ", text, re.M)
    assert re.search(r"^\s+SERVE_BASE_MODELS_DIR=/app/shipped-models ", text, re.M)
    assert "COPY models/ /app/shipped-models/" in text
    assert "COPY --from=imagenet /build/models/ /app/shipped-models/" in text
    assert "training/import_resnet50.py" in text


def test_requirements_from_pyproject(tmp_path):
    import subprocess
    import sys

    script = [sys.executable, str(DOCKER / "requirements_from_pyproject.py"), str(ROOT / "pyproject.toml")]
    out = subprocess.run(
        [*script, "--gpu-wheels"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in out), out
    assert not any(r.startswith("torch") for r in out)
    train = subprocess.run(
        [*script, "train"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert any(r.startswith("torch") for r in train) and any(r.startswith("torchvision") for r in train)


def test_grafana_provisioning_points_at_the_dashboard():
    datasources = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    ds = datasources["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/resnet-serve.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == ds["uid"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_covers_the_issue_and_panels_do_not_overlap():
    dash = json.loads(DASHBOARD.read_text())
    exprs = " ".join(dashboard_exprs())
    for metric in (
        "resnet_serve_http_requests_total",  # request rate, errors
        "resnet_serve_http_request_duration_seconds_bucket",  # latency percentiles
        "resnet_serve_queue_duration_seconds_bucket",  # queue wait
        "resnet_serve_batch_size_rows",  # batch size
        "resnet_serve_inference_duration_seconds_bucket",  # inference time
        "resnet_serve_predictions_total",  # predictions by label
        "resnet_serve_model_info",  # the active provider
    ):
        assert metric in exprs, metric
    assert 'status=~"4..|5.."' in exprs or 'status=~"5.."' in exprs
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine


def test_dashboard_uses_only_exported_metrics():
    metrics_module = pytest.importorskip("service.metrics", reason="service/metrics.py is not there yet")
    registry = metrics_module.Metrics().registry
    exported = set()
    for family in registry.collect():
        exported.add(family.name)
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
            exported.add(family.name + suffix)
    used = set()
    for expr in dashboard_exprs():
        used |= set(re.findall(r"\bresnet_serve_[a-z_]+", expr))
    assert used, "no service metric in the dashboard?"
    assert used <= exported, f"not exported by service/metrics.py: {sorted(used - exported)}"


def test_dashboard_selects_only_existing_labels():
    metrics_module = pytest.importorskip("service.metrics", reason="service/metrics.py is not there yet")
    labels: dict[str, set[str]] = {}
    for family in metrics_module.Metrics().registry.collect():
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    metrics = metrics_module.Metrics()
    for collector in vars(metrics).values():  # label names of the labelled metrics (no samples yet)
        if hasattr(collector, "_labelnames") and hasattr(collector, "_name"):
            for suffix in ("", "_total", "_bucket", "_sum", "_count"):
                extra = {"le"} if suffix == "_bucket" else set()
                labels.setdefault(collector._name + suffix, set()).update(collector._labelnames, extra)
    checked = 0
    for expr in dashboard_exprs():
        for metric, selector in re.findall(r"\b(resnet_serve_[a-z_]+)\{([^}]*)\}", expr):
            assert metric in labels, metric
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in labels[metric], f"{metric} has no label {label!r} ({sorted(labels[metric])})"
                checked += 1
    assert checked > 10
