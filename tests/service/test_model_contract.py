"""The model contract: what is written into and read from a model file, and what gets a model refused."""

from __future__ import annotations

import calendar
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from contract_models import COLORS, colour_cam_model, colour_model, publish, with_outputs

from service import runtime
from service.model_contract import (
    CONTRACT_KEYS,
    InvalidModelError,
    ModelCard,
    cam_weights,
    describe,
    load_model,
    public_fields,
    read_model_metadata,
    write_metadata,
)
from service.runtime import CPU, create_session, normalize_providers, tensorrt_options, usable_providers
from service.schemas import ModelDetail, ModelInfo
from service.settings import Settings


def test_contract_fields_are_read(tmp_path: Path) -> None:
    meta = read_model_metadata(publish(tmp_path / "m.onnx", colour_model(version="20250102T030405Z")))
    assert meta.labels == COLORS and meta.num_classes == 3
    assert (meta.crop_size, meta.resize_size) == (8, 10)
    assert meta.version == "20250102T030405Z"
    assert (meta.arch, meta.dataset) == ("colour-test", "synthetic")
    assert meta.test_error_1crop == 0.25 and meta.test_error_10crop is None
    assert meta.opset == 17 and meta.checkpoint_sha256 == "0" * 64


@pytest.mark.parametrize("key", ["schema_version", "labels", "crop_size", "resize_size"])
def test_missing_required_key_is_refused(tmp_path: Path, key: str) -> None:
    path = publish(tmp_path / "m.onnx", colour_model(drop=[key]))
    with pytest.raises(InvalidModelError, match=f"missing metadata {key}"):
        read_model_metadata(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels": '["a", "b"]'}, "2 labels but the model outputs 3 classes"),
        ({"labels": "red,green,blue"}, "not a JSON array"),
        ({"labels": "[]"}, "non-empty JSON array"),
        ({"crop_size": "eight"}, "not an integer"),
        ({"crop_size": "0"}, "must be positive"),
        ({"resize_size": "4"}, "smaller than crop_size"),
        ({"schema_version": "2"}, "unsupported schema_version"),
    ],
)
def test_inconsistent_metadata_is_refused(tmp_path: Path, overrides: dict[str, str], message: str) -> None:
    path = publish(tmp_path / "m.onnx", colour_model(overrides=overrides))
    with pytest.raises(InvalidModelError, match=message):
        read_model_metadata(path)


def test_malformed_test_error_is_ignored_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = publish(tmp_path / "m.onnx", colour_model(overrides={"test_error_10crop": "lots"}))
    assert read_model_metadata(path).test_error_10crop is None
    assert "test_error_10crop" in caplog.text


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(InvalidModelError):
        read_model_metadata(path)


CARD = ModelCard(
    labels=("tabby cat", 'say "cheese"', "naïve, comma"),
    crop_size=8,
    resize_size=12,
    arch="resnet20",
    dataset="cifar10",
    test_error_1crop=0.0831,
    checkpoint_sha256="ab" * 32,
).stamped(calendar.timegm((2025, 3, 4, 5, 6, 7)))


def test_written_metadata_reads_back_as_the_same_card(tmp_path: Path) -> None:
    model = colour_model(overrides={"author": "someone"})
    write_metadata(model, CARD)
    meta = read_model_metadata(publish(tmp_path / "m.onnx", model))
    assert ModelCard(**{key: getattr(meta, key) for key in CONTRACT_KEYS}) == CARD
    assert (meta.created, meta.version) == ("2025-03-04T05:06:07Z", "20250304T050607Z")
    assert meta.test_error_10crop is None and meta.properties["test_error_10crop"] == "null"
    assert meta.properties["author"] == "someone"  # keys outside the contract are kept


def test_the_logits_output_is_chosen_by_name_else_the_first(tmp_path: Path) -> None:
    both = read_model_metadata(publish(tmp_path / "a.onnx", with_outputs(colour_model(), "logits", "probs")))
    only = read_model_metadata(publish(tmp_path / "b.onnx", with_outputs(colour_model(), "scores")))
    assert (both.input_name, both.output_name) == ("image", "logits")
    assert only.output_name == "scores"


def test_an_output_that_is_not_float_logits_is_refused(tmp_path: Path) -> None:
    model = colour_model()
    model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    with pytest.raises(InvalidModelError, match="must be float32 logits"):
        read_model_metadata(publish(tmp_path / "m.onnx", model))


def test_the_api_shows_every_public_contract_field(tmp_path: Path) -> None:
    meta = read_model_metadata(publish(tmp_path / "m.onnx", colour_model()))
    shown = describe(meta)
    assert list(shown) == list(public_fields())
    assert shown["num_labels"] == 3 and shown["opset"] == 17 and "labels" not in shown
    for name, kind in public_fields().items():  # each optional: a file not served has none
        assert ModelInfo.model_fields[name].annotation == kind | None
    info = ModelDetail(name="m", status="ready", loading=False, file="m.onnx", labels=list(COLORS), **shown)
    assert info.model_dump(include=set(shown)) == shown
    documented = ModelDetail.model_json_schema()["properties"]
    assert [name for name in documented if name in shown] == list(shown)  # in /docs, in the same order


def test_no_gpu_means_cpu_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = publish(tmp_path / "m.onnx", colour_model())
    caplog.set_level(logging.WARNING, logger="service.runtime")
    runtime._warn_once.cache_clear()  # the warning is logged once per process
    session = create_session(
        path, ["tensorrt", "cuda", "cpu"], tmp_path / "trt", crop_size=8, max_batch_size=4
    )
    active = session.get_providers()
    assert active[-1] == CPU
    if active == [CPU]:
        assert "running on CPU" in caplog.text


def test_provider_names_and_fallback() -> None:
    assert normalize_providers(["TensorRT", "cuda", "CPU", "cpu"]) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        CPU,
    ]
    assert usable_providers(["cpu"]) == [CPU]
    assert usable_providers(["NoSuchExecutionProvider"]) == [CPU]
    assert Settings(providers="cuda, cpu").provider_list == ["CUDAExecutionProvider", CPU]
    with pytest.raises(ValueError, match="unknown provider"):
        Settings(providers="gpu")


def test_tensorrt_gets_fp16_cache_and_one_profile_for_all_batch_sizes(tmp_path: Path) -> None:
    options = tensorrt_options(tmp_path, fp16=True, input_name="image", crop_size=224, max_batch_size=64)
    assert options["trt_fp16_enable"] is True
    assert options["trt_engine_cache_enable"] is True and options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_profile_min_shapes"] == "image:1x224x224x3"
    assert options["trt_profile_max_shapes"] == "image:64x224x224x3"


def test_cam_metadata_names_the_feature_output_and_the_classifier_weights(tmp_path: Path) -> None:
    path = publish(tmp_path / "cam.onnx", colour_cam_model(scale=8.0))
    model = load_model(path)
    meta = read_model_metadata(path)
    assert meta.cam == {"features": "features", "weights": "classifier.weight"}
    assert meta.features_output == "features" and meta.output_name == "logits"
    weights = cam_weights(model, meta)
    assert weights is not None and weights.shape == (3, 3) and weights.dtype == np.float32
    assert np.allclose(weights, np.eye(3) * 8.0 / 255.0)
    plain = read_model_metadata(publish(tmp_path / "plain.onnx", colour_model()))
    assert plain.cam is None and plain.features_output is None


@pytest.mark.parametrize(
    ("cam", "message"),
    [
        ('{"features": "features"}', "metadata cam must be"),
        ('{"features": "nowhere", "weights": "classifier.weight"}', "not a feature output"),
        ('{"features": "logits", "weights": "classifier.weight"}', "not a feature output"),
        ('{"features": "features", "weights": "nowhere"}', "which the graph does not have"),
        ('["features"]', "must be a JSON object"),
    ],
)
def test_broken_cam_metadata_is_refused(tmp_path: Path, cam: str, message: str) -> None:
    model = colour_cam_model()
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, "cam": cam})
    with pytest.raises(InvalidModelError, match=message):
        read_model_metadata(publish(tmp_path / "m.onnx", model))


def test_cam_weights_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    model = colour_cam_model(labels=["red", "green", "blue", "grey"])  # weights [4, 3]
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, "labels": '["red", "green", "blue", "grey", "pink"]'})
    del model.graph.output[0].type.tensor_type.shape.dim[1:]  # no static width: the weights must catch it
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "classes"
    with pytest.raises(InvalidModelError, match=r"must be \[classes, channels\] = \[5, 3\]"):
        read_model_metadata(publish(tmp_path / "m.onnx", model))
