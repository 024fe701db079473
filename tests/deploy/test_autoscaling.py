"""Autoscaling on what matters, checked offline: the HPA scales on the metric that prometheus-adapter's rule
exposes, that rule reads series the service really exports (parsed from a running app's ``/metrics``) with
the labels the Prometheus scrape job attaches, and the KServe predictor scales on concurrency."""

from __future__ import annotations

import copy
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from contract_models import colour_model, metric_value, publish
from prometheus_client.parser import text_string_to_metric_families
from test_k8s_manifests import (
    K8S,
    k8s_validate,
    kserve_validator,
    kubernetes_validate,
    load_docs,
    plain_manifests,
)

# The service suite's helpers (a TestClient of the app with its models ready); tests/service is on pytest's
# path only when that suite is collected too.
sys.path.append(str(Path(__file__).resolve().parents[1] / "service"))
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
from svc_testkit import image_bytes, make_settings, running_client  # noqa: E402

ADAPTER = K8S / "prometheus-adapter"
ISVC = K8S / "kserve" / "inferenceservice.yaml"
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
CUMULATIVE = ("counter", "histogram", "summary")  # what rate() may be taken of


def adapter_rules() -> list[dict[str, Any]]:
    return load_docs(ADAPTER / "rules.yaml")[0]["rules"]


def scrape_job() -> dict[str, Any]:
    (job,) = load_docs(ADAPTER / "scrape-config.yaml")[0]["scrape_configs"]
    return job


@pytest.fixture(scope="module")
def metrics_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The app's ``/metrics`` text before any request, and after one 10-crop classification."""
    models = tmp_path_factory.mktemp("models")
    publish(models / "colours.onnx", colour_model())
    with running_client(make_settings(models)) as client:
        idle = client.get("/metrics").text
        answer = client.post(
            "/classify", content=image_bytes((0, 0, 250)), headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200, answer.text
        busy = client.get("/metrics").text
    yield idle, busy


def exported(text: str) -> dict[str, tuple[str, set[str]]]:
    """Sample name -> (its family's type, the label names its samples carry)."""
    samples: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            _, labels = samples.setdefault(sample.name, (family.type, set()))
            labels.update(sample.labels)
    return samples


def series_selector(rule: dict[str, Any]) -> tuple[str, set[str]]:
    """The metric name of a rule's seriesQuery (``name{matchers}``) and the label names it matches on."""
    match = re.fullmatch(rf"\s*({NAME})\s*\{{(.*)\}}\s*", rule["seriesQuery"])
    assert match, f"seriesQuery should select one metric by name: {rule['seriesQuery']!r}"
    return match[1], set(re.findall(rf"({NAME})\s*(?:=~|!~|!=|=)", match[2]))


def rule_problems(rule: dict[str, Any], series: dict[str, tuple[str, set[str]]]) -> list[str]:
    """What would make the adapter expose nothing (or nonsense) for ``rule`` given the exported series."""
    problems = []
    name, matched_labels = series_selector(rule)
    resource_labels = set(rule["resources"]["overrides"])
    if name not in series:
        problems.append(f"seriesQuery: {name} is not exported")
    if matched_labels != resource_labels:
        problems.append(
            f"seriesQuery matches on {sorted(matched_labels)}, resources on {sorted(resource_labels)}"
        )
    if not re.search(rule["name"]["matches"], name):
        problems.append(f"name.matches {rule['name']['matches']!r} does not match {name}")
    query = rule["metricsQuery"].replace("<<.Series>>", name)
    for required in ("<<.LabelMatchers>>", "<<.GroupBy>>"):
        if required not in query:
            problems.append(f"metricsQuery lacks {required}: the adapter could not ask for one pod")
    query = re.sub(r"<<[^>]*>>", "", query)
    for used in re.findall(rf"({NAME})\s*\{{", query):
        if used not in series:
            problems.append(f"metricsQuery: {used} is not exported")
    for used in re.findall(rf"\b(?:rate|irate|increase)\(\s*({NAME})", query):
        if used in series and series[used][0] not in CUMULATIVE:
            problems.append(f"metricsQuery: rate() of {used}, a {series[used][0]}")
    for used, (_, labels) in series.items():
        if used.startswith("resnet_serve_") and labels & resource_labels:
            problems.append(
                f"{used} exports {sorted(labels & resource_labels)} itself, clashing with the scrape"
            )
    return problems


def test_adapter_rules_read_series_the_service_exports(metrics_page):
    idle, _ = metrics_page
    series = exported(idle)
    rules = adapter_rules()
    assert rules
    for rule in rules:
        assert rule_problems(rule, series) == []


def test_queue_series_exist_before_traffic_and_count_every_image(metrics_page):
    """An idle pod must report 0 rather than nothing (no series: the HPA could not scale down), and a
    classified image must be counted in the series the rule takes the rate of."""
    idle, busy = metrics_page
    model = {"model": "colours"}
    for rule in adapter_rules():
        name, _ = series_selector(rule)
        assert name in {
            s.name for f in text_string_to_metric_families(idle) for s in f.samples if s.labels == model
        }
        count = name.removesuffix("_sum") + "_count"
        assert metric_value(idle, count, model) == 0
        assert metric_value(busy, count, model) == 1


def test_rule_checks_catch_mistakes(metrics_page):
    """The checks above must reject what the adapter would serve wrongly, or they prove nothing."""
    series = exported(metrics_page[0])
    (rule, *_) = adapter_rules()
    typo = copy.deepcopy(rule)
    typo["seriesQuery"] = typo["seriesQuery"].replace("queue_duration_seconds_sum", "queue_seconds_sum")
    gauge = copy.deepcopy(rule)
    gauge["metricsQuery"] = "sum by (<<.GroupBy>>) (rate(resnet_serve_queue_depth{<<.LabelMatchers>>}[2m]))"
    old_labels = copy.deepcopy(rule)
    old_labels["resources"]["overrides"] = {
        "kubernetes_namespace": {"resource": "namespace"},
        "kubernetes_pod_name": {"resource": "pod"},
    }
    no_matchers = copy.deepcopy(rule)
    no_matchers["metricsQuery"] = "sum(rate(<<.Series>>[2m]))"
    for bad in (typo, gauge, old_labels, no_matchers):
        assert rule_problems(bad, series), bad
    clash = dict(series, resnet_serve_x=("gauge", {"pod"}))
    assert rule_problems(rule, clash)


def test_hpa_scales_on_the_adapter_metric():
    hpa = plain_manifests()["HorizontalPodAutoscaler"]
    k8s_validate(hpa)
    exposed = {rule["name"]["as"] for rule in adapter_rules()}
    metrics = hpa["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Pods"], "one per-pod metric from the service, no CPU"
    pods = metrics[0]["pods"]
    assert pods["metric"]["name"] in exposed
    assert pods["target"]["type"] == "AverageValue"
    assert float(pods["target"]["averageValue"]) > 0
    # The validator reads the metric block: a misspelt field, or a target without its type, fails.
    misspelt = copy.deepcopy(hpa)
    metric = misspelt["spec"]["metrics"][0]["pods"]["metric"]
    metric["nam"] = metric.pop("name")
    untyped = copy.deepcopy(hpa)
    del untyped["spec"]["metrics"][0]["pods"]["target"]["type"]
    for bad in (misspelt, untyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            k8s_validate(bad)


def relabel(job: dict[str, Any], meta: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep and replace, the actions the job uses) of one discovered target."""
    labels = dict(meta)
    for step in job["relabel_configs"]:
        action = step.get("action", "replace")
        value = step.get("separator", ";").join(labels.get(s, "") for s in step.get("source_labels", []))
        match = re.fullmatch(step.get("regex", "(.*)"), value)
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                template = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", step.get("replacement", "$1"))  # $1 -> \g<1>
                labels[step["target_label"]] = match.expand(template)
        else:
            raise AssertionError(f"relabel action {action} is not modelled here")
    return {k: v for k, v in labels.items() if not k.startswith("__meta_")}


def pod_target(annotations: dict[str, str]) -> dict[str, str]:
    """What Kubernetes service discovery reports for one of the Deployment's pods."""
    meta = {"__address__": "10.1.2.3", "__meta_kubernetes_pod_ip": "10.1.2.3"}
    meta |= {
        "__meta_kubernetes_namespace": "serving",
        "__meta_kubernetes_pod_name": "resnet-serve-7d9f-abcde",
    }
    for key, value in annotations.items():
        meta["__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    return meta


def test_scrape_job_gives_the_labels_the_adapter_maps():
    pod = plain_manifests()["Deployment"]["spec"]["template"]
    port = pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    target = relabel(scrape_job(), pod_target(pod["metadata"]["annotations"]))
    assert target is not None, "the job drops the Deployment's pods"
    assert target["__address__"] == f"10.1.2.3:{port}"
    assert target["__metrics_path__"] == "/metrics"
    assert (target["namespace"], target["pod"]) == ("serving", "resnet-serve-7d9f-abcde")
    for rule in adapter_rules():
        overrides = rule["resources"]["overrides"]
        assert {label: o["resource"] for label, o in overrides.items()} == {
            "namespace": "namespace",
            "pod": "pod",
        }
        assert set(overrides) <= set(target)
    # Pods without the annotation are not scraped.
    assert relabel(scrape_job(), pod_target({})) is None


def test_helm_values_carry_the_same_rules():
    values = load_docs(ADAPTER / "values.yaml")[0]
    assert values["rules"]["default"] is False
    assert values["rules"]["custom"] == adapter_rules()
    assert yaml.safe_load((ADAPTER / "rules.yaml").read_text()).keys() == {"rules"}


def test_kserve_predictor_scales_on_concurrency():
    (isvc,) = load_docs(ISVC)
    validator = kserve_validator()
    validator.validate(isvc)
    predictor = isvc["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency"
    assert isinstance(predictor["scaleTarget"], int) and predictor["scaleTarget"] > 0
    # Concurrency is scaled on by Knative's autoscaler: RawDeployment's HPA knows only cpu and memory.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert predictor["minReplicas"] >= 1, "scale to zero would cold-start a GPU model for minutes"
    assert not predictor.get("containerConcurrency"), "a hard cap would queue requests outside the service"
    wrong = copy.deepcopy(isvc)
    wrong["spec"]["predictor"]["scaleTarget"] = "12"
    assert not validator.is_valid(wrong)
