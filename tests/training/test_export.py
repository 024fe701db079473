"""ONNX export: the graph the service serves, its metadata, parity with PyTorch, atomic publishing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training import export, train
from training.checkpoint import load_checkpoint
from training.export import ExportError, PixelInput, export_checkpoint


@pytest.fixture(scope="module")
def trained_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("export-run")
    args = ["--data", str(tiny_data), "--batch-size", "12", "--device", "cpu", "--no-progress",
            "--cache-dir", str(run / "cache"), "--out", str(run), "--iterations", "8"]  # fmt: skip
    assert train.main(args) == 0
    return run


@pytest.fixture(scope="module")
def exported(trained_run: Path) -> Path:
    return export_checkpoint(trained_run / "last.pt", trained_run / "models")


def test_export_follows_the_model_contract(exported: Path, trained_run: Path) -> None:
    assert exported.name == "resnet20-shapes.onnx"
    model = onnx.load(str(exported))
    assert min(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    (image,) = model.graph.input
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    assert [o.name for o in model.graph.output] == ["logits", "features"]  # features: on by default
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["cam"]) == {"features": "features", "weights": "network.fc.weight"}
    assert meta["schema_version"] == "1"
    assert json.loads(meta["labels"]) == ["circle", "square", "stripe"]
    assert meta["crop_size"] == "32" and int(meta["resize_size"]) >= 32
    assert meta["arch"] == "resnet20" and meta["dataset"] == "shapes"
    final = load_checkpoint(trained_run / "last.pt")["history"][-1]["final"]
    assert json.loads(meta["test_error_1crop"]) == pytest.approx(final["test_error_1crop"])
    assert json.loads(meta["test_error_10crop"]) == pytest.approx(final["test_error_10crop"])
    assert len(meta["checkpoint_sha256"]) == 64 and meta["created"].endswith("Z") and meta["version"]


def test_onnx_runtime_matches_pytorch_for_any_batch_size(exported: Path, trained_run: Path) -> None:
    checkpoint = load_checkpoint(trained_run / "last.pt")
    from training.models import build_model

    network = build_model("resnet20", num_classes=3)
    network.load_state_dict(checkpoint["model"])
    results = checkpoint["results"]  # what the run computed, apart from its config
    wrapper = PixelInput(network, results["mean"], results["std"]).eval()
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        pixels = np.random.default_rng(batch).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        (logits,) = session.run(["logits"], {"image": pixels})
        with torch.no_grad():
            expected = wrapper(torch.from_numpy(pixels)).numpy()
        assert logits.shape == (batch, 3)
        assert np.abs(logits - expected).max() <= 1e-4


def test_bgr_input_reverses_channels() -> None:
    linear = torch.nn.Linear(3, 3, bias=False)
    torch.nn.init.eye_(linear.weight)
    network = torch.nn.Sequential(torch.nn.Flatten(), linear)
    rgb = PixelInput(network, [0, 0, 0], [1, 1, 1])
    bgr = PixelInput(network, [0, 0, 0], [1, 1, 1], bgr=True)
    pixel = torch.tensor([[[[10, 20, 30]]]], dtype=torch.uint8)
    assert rgb(pixel).tolist() == [[10, 20, 30]] and bgr(pixel).tolist() == [[30, 20, 10]]


def test_parity_failure_publishes_nothing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # no graph can meet a negative tolerance
    with pytest.raises(ExportError, match="nothing was published"):
        export_checkpoint(trained_run / "last.pt", tmp_path / "models")
    assert not list((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


def test_republishing_replaces_the_file_atomically(exported: Path, trained_run: Path) -> None:
    before = exported.stat().st_ino
    export_checkpoint(trained_run / "last.pt", exported.parent)
    assert exported.stat().st_ino != before  # a new file renamed over the old, never rewritten in place
    assert not [p for p in exported.parent.iterdir() if p.name.endswith(".tmp")]


def test_export_command_line(trained_run: Path, tmp_path: Path) -> None:
    assert export.main([str(trained_run / "last.pt"), "--models-dir", str(tmp_path), "--name", "tiny"]) == 0
    assert (tmp_path / "tiny.onnx").is_file()
    assert export.main([str(tmp_path / "missing.pt"), "--models-dir", str(tmp_path)]) == 1


def test_the_feature_output_and_the_cam_weights_give_the_logits(exported: Path, trained_run: Path) -> None:
    """A class activation map is exact only if logits = mean over places of (weights @ features) + bias:
    checked on the exported file alone, with the weights the cam metadata names."""
    from service.model_contract import cam_weights, load_model, metadata_from_model

    model = load_model(exported)
    meta = metadata_from_model(model)
    weights = cam_weights(model, meta)
    assert weights is not None and weights.shape == (3, 64)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    logits, features = session.run(["logits", "features"], {"image": batch})
    assert features.shape == (5, 64, 8, 8)
    maps = np.einsum("ck,nkhw->nchw", weights, features)  # every class's map on each image
    bias = load_checkpoint(trained_run / "last.pt")["model"]["fc.bias"].numpy()
    assert np.allclose(maps.mean(axis=(2, 3)) + bias, logits, atol=1e-4)


def test_no_features_exports_the_logits_alone(trained_run: Path, tmp_path: Path) -> None:
    plain = export_checkpoint(trained_run / "last.pt", tmp_path, features=False)
    model = onnx.load(str(plain))
    assert [o.name for o in model.graph.output] == ["logits"]
    assert "cam" not in {p.key for p in model.metadata_props}
    assert (
        export.main([str(trained_run / "last.pt"), "--models-dir", str(tmp_path / "cli"), "--no-features"])
        == 0
    )
    assert [o.name for o in onnx.load(str(tmp_path / "cli" / plain.name)).graph.output] == ["logits"]
