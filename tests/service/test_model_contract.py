"""The model contract: what is read from an exported file, and what gets a model refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from contract_models import COLORS, colour_model, publish

from service import runtime
from service.model_metadata import InvalidModelError, read_model_metadata
from service.runtime import CPU, create_session, normalize_providers, tensorrt_options, usable_providers
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
