"""INT8 quantization: a model that follows the contract and says what it costs, or nothing published."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from contract_models import colour_cam_model, colour_model, publish, write_colour_photos

from service.model_contract import read_model_metadata
from training import export, quantize, train
from training.data import DataError
from training.digest import sha256_file
from training.quantize import QuantizationError, quantize_model


@pytest.fixture
def colours(tmp_path: Path) -> Path:
    """Bright colour photos: a training split to calibrate on, a test split to measure on."""
    root = tmp_path / "colours"
    write_colour_photos(root, "train", 20, 60, 140, seed=0)
    write_colour_photos(root, "test", 10, 60, 140, seed=1)
    return root


@pytest.fixture
def fp32(tmp_path: Path) -> Path:
    return publish(tmp_path / "models" / "colours.onnx", colour_model())


def test_the_int8_model_follows_the_contract_and_records_its_cost(fp32: Path, colours: Path) -> None:
    published = quantize_model(fp32, colours, calibration_images=12)
    assert published == fp32.with_name("colours-int8.onnx")
    model = onnx.load(str(published))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in model.graph.node}
    meta = read_model_metadata(published)  # the reader the service uses
    parent = read_model_metadata(fp32)
    assert meta.precision == "int8" and parent.precision == "fp32"
    assert (meta.labels, meta.crop_size, meta.resize_size) == (
        parent.labels,
        parent.crop_size,
        parent.resize_size,
    )
    q = meta.quantization
    assert q is not None
    assert q["parent_sha256"] == sha256_file(fp32)
    assert q["calibration"]["images"] == 12 and q["calibration"]["classes"] == 3
    assert Path(q["calibration"]["source"]) == colours / "train"
    evaluated = q["evaluated_on"]
    assert (evaluated["data"], evaluated["images"]) == (str(colours / "test"), 30)
    # The colour model is right on every test photo, in both precisions.
    assert evaluated["int8_error_1crop"] == evaluated["parent_error_1crop"] == 0.0
    assert meta.test_error_1crop == meta.test_error_10crop == 0.0  # the test split's, so the contract's too
    assert q["top1_agreement_10crop"] == {"data": str(colours / "test"), "images": 30, "rate": 1.0}


def test_agreement_on_other_photos_and_errors_off_the_test_split(
    fp32: Path, colours: Path, tmp_path: Path
) -> None:
    others, held = tmp_path / "others", tmp_path / "held"
    write_colour_photos(others, "any", 5, 60, 140, seed=2)
    write_colour_photos(held, "test", 3, 60, 140, seed=3)
    published = quantize_model(
        fp32, colours, evaluation=held, calibration_images=6, agreement=others, agreement_images=9
    )
    meta = read_model_metadata(published)
    assert meta.quantization is not None
    assert meta.quantization["top1_agreement_10crop"] == {"data": str(others), "images": 9, "rate": 1.0}
    assert meta.quantization["evaluated_on"]["int8_error_10crop"] == 0.0
    # Measured on another set than the training data's test split: not the contract's test error.
    assert meta.test_error_1crop is None and meta.test_error_10crop is None


def test_a_costly_quantization_is_refused_and_publishes_nothing(fp32: Path, tmp_path: Path) -> None:
    # Calibrated on dark photos only, the INT8 ranges clip the bright test photos' channels alike.
    data = tmp_path / "skewed"
    write_colour_photos(data, "train", 8, 0, 20, seed=0)
    write_colour_photos(data, "test", 10, 120, 150, seed=1)
    with pytest.raises(
        QuantizationError, match=r"exceeds the FP32 parent's by more than 1\.00 points"
    ) as info:
        quantize_model(fp32, data)
    assert "1-crop" in str(info.value) and "was not published" in str(info.value)
    assert sorted(p.name for p in fp32.parent.iterdir()) == ["colours.onnx"]  # no file, no scratch left


def test_calibration_never_comes_from_the_test_split(fp32: Path, colours: Path) -> None:
    with pytest.raises(DataError, match="is a test split"):
        quantize_model(fp32, colours / "test", evaluation=colours)
    with pytest.raises(DataError, match="holds the calibration images"):
        quantize_model(fp32, colours, evaluation=colours / "train")


def test_an_int8_model_is_not_quantized_again(fp32: Path, colours: Path) -> None:
    int8 = quantize_model(fp32, colours, calibration_images=6)
    with pytest.raises(QuantizationError, match="already int8"):
        quantize_model(int8, colours)


def test_the_command_line_explains_a_missing_calibration(fp32: Path, colours: Path) -> None:
    assert quantize.main([str(fp32)]) == 1
    assert not fp32.with_name("colours-int8.onnx").exists()
    assert quantize.main([str(fp32), "--calibration", str(colours), "--calibration-images", "6"]) == 0
    meta = read_model_metadata(fp32.with_name("colours-int8.onnx"))
    assert meta.quantization is not None and meta.quantization["calibration"]["images"] == 6


def test_export_int8_calibrates_on_the_runs_training_data(
    train_args: list[str], tiny_data: Path, tmp_path: Path
) -> None:
    assert train.main([*train_args, "--iterations", "8"]) == 0
    models = tmp_path / "models"
    # A barely trained network: the error check gets a wide margin here; its refusal is tested above.
    argv = [str(tmp_path / "run" / "last.pt"), "--models-dir", str(models), "--name", "tiny", "--int8",
            "--calibration-images", "9", "--max-error-increase", "1"]  # fmt: skip
    assert export.main(argv) == 0
    meta = read_model_metadata(models / "tiny-int8.onnx")
    assert meta.precision == "int8" and meta.arch == read_model_metadata(models / "tiny.onnx").arch
    assert meta.quantization is not None
    assert Path(meta.quantization["calibration"]["source"]) == tiny_data / "train"
    assert meta.quantization["evaluated_on"]["images"] == 12


def test_train_export_int8_publishes_both_precisions(
    train_args: list[str], tiny_data: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    args = [*train_args, "--iterations", "4", "--export", "--models-dir", str(models), "--int8",
            "--calibration-images", "6", "--max-error-increase", "1"]  # fmt: skip
    assert train.main(args) == 0
    (fp32,) = [p for p in models.glob("*.onnx") if not p.stem.endswith("-int8")]
    meta = read_model_metadata(fp32.with_name(f"{fp32.stem}-int8.onnx"))
    assert meta.precision == "int8" and meta.quantization is not None
    assert Path(meta.quantization["calibration"]["source"]) == tiny_data / "train"


def test_int8_without_export_is_refused(tiny_data: Path) -> None:
    with pytest.raises(SystemExit):
        train.main(["--data", str(tiny_data), "--int8"])


def test_quantizes_where_symbolic_shape_inference_fails(
    fp32: Path, colours: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime 1.30's symbolic shape inference asserts on the contract graph: quantize without it."""
    real = quantize.quant_pre_process
    calls: list[bool] = []

    def strict(source: str, target: str, skip_symbolic_shape: bool = False) -> None:
        calls.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            raise AssertionError  # what onnxruntime 1.30 raises in _infer_Range
        real(source, target, skip_symbolic_shape=True)

    monkeypatch.setattr(quantize, "quant_pre_process", strict)
    published = quantize_model(fp32, colours, calibration_images=12)
    assert calls == [False, True]
    recorded = read_model_metadata(published).quantization
    assert recorded is not None and recorded["evaluated_on"]["int8_error_1crop"] == 0.0


def test_the_int8_twin_of_an_explainable_model_is_served_unexplained(tmp_path: Path, colours: Path) -> None:
    """The quantizer rewrites the classifier's weights, so the twin drops ``cam`` rather than name a weight
    initializer it no longer has; it follows the contract and classifies as its parent."""
    fp32 = publish(tmp_path / "models" / "cam.onnx", colour_cam_model(crop=8, resize=10, cell=2))
    assert read_model_metadata(fp32).cam is not None
    published = quantize_model(fp32, colours, calibration_images=12)
    meta = read_model_metadata(published)
    assert meta.precision == "int8" and meta.cam is None and meta.features_output is None
    assert meta.quantization is not None and meta.quantization["evaluated_on"]["int8_error_10crop"] == 0.0
