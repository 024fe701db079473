"""End to end: build the images with podman, bring the compose stack up on the CPU (podman-compose with
docker-compose.cpu.yml), classify a photo through the published port, find the request counted on
/metrics and the service target up in Prometheus, take the stack down.

Skipped, with the reason, where podman or podman-compose is absent or no base image can be had. Talks only
to 127.0.0.1 (every port is published on the loopback address, on free ports).

Environment knobs:
  BASE_IMAGE         base for the images (default: localhost/debian-python:bookworm where it exists,
                     made by ../shared/container/build-base-image; else python:3.11-slim-bookworm)
  E2E_PROMETHEUS_IMAGE  a Prometheus image to use as is; default: build docker/standins/Dockerfile.prometheus
  E2E_TRAIN=1        also build the trainer image and retrain through `compose run trainer` (slow)
  E2E_KEEP=1         leave the stack up after the test (for debugging)

The images are tagged localhost/resnet-serve:e2e (and localhost/resnet-trainer:e2e) and kept, so that a
second run reuses the layer cache; the first build takes several minutes (multi-GB CUDA wheels).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from contract_models import CIFAR10_LABELS, cifar_like_model, free_port, metric_value, publish

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

LOCAL_BASE = "localhost/debian-python:bookworm"
DEFAULT_MODEL = ROOT / "models" / "resnet20-cifar10.onnx"
PIP_DIRS = ("/opt/wheels", "/opt/pypi", "/opt/pypi-more")  # this machine's package mirror, when present


def _run(cmd: list[str], timeout: float, env: dict | None = None, check: bool = True, cwd: Path = ROOT):
    print("+", " ".join(cmd), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"  -> exit {proc.returncode} after {time.monotonic() - started:.0f}s", flush=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _container_runtime_reason() -> str | None:
    if not shutil.which("podman"):
        return "no container runtime: podman is not installed (see ../shared/container/build-base-image)"
    if not shutil.which("podman-compose"):
        return "podman-compose is not installed (pip install podman-compose)"
    try:
        info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "podman info timed out"
    if info.returncode != 0:
        return f"podman does not work here: {info.stderr.strip()[:300]}"
    return None


def _base_image() -> str | None:
    wanted = os.environ.get("BASE_IMAGE")
    if wanted:
        return wanted
    if subprocess.run(["podman", "image", "exists", LOCAL_BASE]).returncode == 0:
        return LOCAL_BASE
    return None


def _build(dockerfile: str, tag: str, base: str, context: str = ".", args: dict | None = None) -> None:
    # --format docker keeps HEALTHCHECK (the OCI image format has no such field)
    cmd = ["podman", "build", "--format", "docker", "-f", dockerfile, "-t", tag]
    cmd += ["--build-arg", f"BASE_IMAGE={base}"]
    for key, value in (args or {}).items():
        cmd += ["--build-arg", f"{key}={value}"]
    for d in PIP_DIRS:
        if Path(d).is_dir():
            cmd += ["--volume", f"{d}:{d}:ro"]
    _run([*cmd, context], timeout=3000)


def _wait_for(what: str, check, timeout: float, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = _container_runtime_reason()
    if reason:
        pytest.skip(reason)
    base = _base_image()
    if base is None:
        hint = f"run ../shared/container/build-base-image (it makes {LOCAL_BASE}) or set BASE_IMAGE"
        pytest.skip(f"no base image: {hint}")

    # Models: the shipped default when it exists, else a tiny contract-conforming CIFAR-10-shaped model.
    models = tmp_path_factory.mktemp("models")
    models.chmod(0o755)
    if DEFAULT_MODEL.exists():
        shutil.copy(DEFAULT_MODEL, models / DEFAULT_MODEL.name)
    else:
        publish(models / "tiny-cifar10.onnx", cifar_like_model())
    for f in models.iterdir():
        f.chmod(0o644)  # the service runs as an unprivileged user
    model_name = next(models.glob("*.onnx")).stem

    tag = uuid.uuid4().hex[:8]
    # Fixed tags, kept after the test: the next run reuses their layers (podman rmi them to free the disk).
    service_image = "localhost/resnet-serve:e2e"
    _build(
        "docker/Dockerfile.service",
        service_image,
        base,
        args={"REQUIRE_MODEL": "1" if DEFAULT_MODEL.exists() else "0"},
    )
    prometheus_image = os.environ.get("E2E_PROMETHEUS_IMAGE")
    if not prometheus_image:
        prometheus_image = "localhost/prometheus-standin:e2e"
        _build("docker/standins/Dockerfile.prometheus", prometheus_image, base, context="docker/standins")
    trainer_image = None
    if os.environ.get("E2E_TRAIN") == "1":
        trainer_image = "localhost/resnet-trainer:e2e"
        _build("docker/Dockerfile.trainer", trainer_image, base)

    ports = {
        "SERVICE_PORT": free_port(),
        "SERVICE_GRPC_PORT": free_port(),
        "PROMETHEUS_PORT": free_port(),
        "GRAFANA_PORT": free_port(),
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "BIND_ADDRESS": "127.0.0.1",
        "MODELS_DIR": str(models),
        "SERVICE_IMAGE": service_image,
        "PROMETHEUS_IMAGE": prometheus_image,
        "TRAINER_IMAGE": trainer_image or "localhost/resnet-trainer:absent",
        "BASE_IMAGE": base,
    }
    project = f"resnet-e2e-{tag}"
    compose = ["podman-compose", "-p", project, "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
    info = {
        "service": f"http://127.0.0.1:{ports['SERVICE_PORT']}",
        "grpc": f"127.0.0.1:{ports['SERVICE_GRPC_PORT']}",
        "prometheus": f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}",
        "model": model_name,
        "models_dir": models,
        "compose": compose,
        "env": env,
        "trainer_image": trainer_image,
    }
    try:
        _run([*compose, "up", "-d", "service", "prometheus"], timeout=600, env=env)
        yield info
    finally:
        logs_cmd = [*compose, "logs", "--tail", "40", "service", "prometheus"]
        logs = _run(logs_cmd, timeout=120, env=env, check=False)
        print(logs.stdout[-6000:], logs.stderr[-2000:])
        if os.environ.get("E2E_KEEP") != "1":
            _run([*compose, "down", "-v", "-t", "5"], timeout=300, env=env, check=False)


def test_stack_serves_counts_and_is_scraped(stack):
    svc, prom = stack["service"], stack["prometheus"]
    _wait_for("/readyz", lambda: httpx.get(f"{svc}/readyz", timeout=5).status_code == 200, timeout=300)

    photo = HERE / "fixtures" / "cat.jpg"
    before = httpx.get(f"{svc}/metrics", timeout=10).text
    resp = httpx.post(
        f"{svc}/classify",
        params={"model": stack["model"], "top_k": 5, "crops": 10},
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    print("classify:", json.dumps(body)[:600])
    assert body["model"] == stack["model"]
    assert body["crops"] == 10
    preds = body["predictions"]
    assert len(preds) == 5
    assert all(p["label"] in CIFAR10_LABELS for p in preds)
    assert preds == sorted(preds, key=lambda p: -p["probability"])
    if stack["model"] == "resnet20-cifar10":
        assert preds[0]["label"] == "cat"

    after = httpx.get(f"{svc}/metrics", timeout=10).text
    counted = {"route": "/classify", "method": "POST", "status": "200"}
    n_before = metric_value(before, "resnet_serve_http_requests_total", counted)
    n_after = metric_value(after, "resnet_serve_http_requests_total", counted)
    print(f"/metrics: resnet_serve_http_requests_total{counted} {n_before} -> {n_after}")
    assert n_after == n_before + 1, "the classify request was not counted on /metrics"
    top1 = {"model": stack["model"], "label": preds[0]["label"]}
    assert metric_value(after, "resnet_serve_predictions_total", top1) >= 1

    def target_up():
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        ours = [t for t in targets if t["labels"].get("job") == "resnet-serve"]
        return ours and ours[0]["health"] == "up" and ours[0]

    target = _wait_for("Prometheus to scrape the service", target_up, timeout=120)
    print("prometheus target:", target["scrapeUrl"], target["health"])

    def scraped_count():
        result = _query(prom, 'sum(resnet_serve_http_requests_total{route="/classify",status="200"})')
        return result and float(result[0]["value"][1]) >= 1 and result

    print("prometheus:", _wait_for("the request count in Prometheus", scraped_count, timeout=60))


def _query(prom: str, expr: str) -> list:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _classify(svc: str, model: str, photo: Path, crops: int = 1) -> dict:
    resp = httpx.post(
        f"{svc}/classify",
        params={"model": model, "top_k": 5, "crops": crops},
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_dashboard_queries_run_in_prometheus(stack):
    """Every Grafana panel query is valid PromQL for this Prometheus, and the headline ones get data."""
    svc, prom = stack["service"], stack["prometheus"]
    dash = json.loads((ROOT / "docker/grafana/dashboards/resnet-serve.json").read_text())
    substitutions = {"$__rate_interval": "1m", "$__range": "10m", "$model": ".*"}
    queries = []
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in substitutions.items():
                expr = expr.replace(var, value)
            queries.append((panel["title"], expr))

    # rate() needs two scrapes that saw traffic: keep classifying while Prometheus scrapes (every 5 s).
    must_have_data = {"Request rate", "Latency percentiles", "Queue wait", "Batch size"}
    must_have_data |= {"Inference time per batch", "Predictions by label", "Active execution provider"}

    def headline_panels_have_data():
        _classify(svc, stack["model"], HERE / "fixtures" / "dog.jpg", crops=10)
        empty = {title for title, expr in queries if title in must_have_data and not _query(prom, expr)}
        return not empty or print("waiting for data in:", sorted(empty))

    _wait_for("data in the dashboard's headline panels", headline_panels_have_data, timeout=120, interval=3)
    for _title, expr in queries:
        _query(prom, expr)  # valid PromQL: status "success", data or not
    provider = _query(prom, "resnet_serve_model_info")
    assert provider[0]["metric"]["provider"] == "CPUExecutionProvider", provider
    print(f"{len(queries)} dashboard queries valid; provider:", provider[0]["metric"])


def test_retrain_with_the_trainer_is_hot_reloaded(stack):
    """`compose run --rm trainer python training/train.py ... --export` publishes into the mounted models
    folder and the running service serves the new version without a restart (E2E_TRAIN=1)."""
    if not stack["trainer_image"]:
        pytest.skip("set E2E_TRAIN=1 to build the trainer image and retrain through compose (slow)")
    if not (ROOT / "data" / "cifar10" / "train").is_dir():
        pytest.skip("no CIFAR-10 in ./data/cifar10 to train on")
    svc = stack["service"]
    before = httpx.get(f"{svc}/models", timeout=10).json()
    versions_before = {m["name"]: m.get("version") for m in before["models"]}
    train = ["python", "training/train.py", "--arch", "resnet20", "--epochs", "1", "--limit-train", "512"]
    train += ["--limit-test", "256", "--batch-size", "64", "--device", "cpu", "--no-progress", "--export"]
    train += ["--out", "/tmp/e2e-run", "--cache-dir", "/tmp/e2e-cache"]
    run = [*stack["compose"], "--profile", "train", "run", "--rm", "trainer", *train]
    _run(run, timeout=1800, env=stack["env"])
    published = stack["models_dir"] / "resnet20-cifar10.onnx"
    assert published.exists(), sorted(p.name for p in stack["models_dir"].iterdir())

    def reloaded():
        entry = httpx.get(f"{svc}/models/resnet20-cifar10", timeout=10)
        if entry.status_code != 200:
            return None
        body = entry.json()
        assert body["status"] not in ("failed", "refused"), body
        new_version = body.get("version") != versions_before.get("resnet20-cifar10")
        return body["status"] == "ready" and new_version and body

    body = _wait_for("the service to load the retrained model", reloaded, timeout=120)
    print("hot-reloaded:", body["name"], body.get("version"), body["status"])
    result = _classify(svc, "resnet20-cifar10", HERE / "fixtures" / "cat.jpg")
    assert result["version"] == body.get("version")
