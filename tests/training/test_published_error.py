"""The errors a trained model publishes are the ones the service gives: same pixels, same crops."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from conftest import write_imagefolder
from PIL import Image

from training import train
from training.checkpoint import load_checkpoint
from training.evaluate import evaluate


def test_published_errors_equal_what_the_services_pipeline_measures(tmp_path: Path) -> None:
    data = write_imagefolder(tmp_path / "shapes", train_per_class=16, test_per_class=6)
    for path in (data / "test").rglob("*.png"):
        # Neither square nor the crop size: at resize 32 a 49x36 image becomes 43x32 (truncated, not rounded
        # to 44) and the centre crop starts at column round(11 / 2) = 6 (not 11 // 2): the geometry matters.
        Image.open(path).resize((49, 36)).save(path)
    run, models = tmp_path / "run", tmp_path / "models"
    args = ["--data", str(data), "--batch-size", "12", "--iterations", "8", "--val-size", "6",
            "--schedule", "onecycle", "--lr", "0.05",
            "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(run),
            "--export", "--models-dir", str(models)]  # fmt: skip
    assert train.main(args) == 0

    exported = models / "resnet20-shapes.onnx"
    metadata = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    results = load_checkpoint(run / "last.pt")["results"]
    assert int(metadata["resize_size"]) == results["resize_size"]  # chosen on the held-out images
    # A model that learned something (chance is 2/3), so the errors compare real predictions
    assert results["test_error_10crop"] < 2 / 3
    for crops in (1, 10):
        published = json.loads(metadata[f"test_error_{crops}crop"])
        assert published == results[f"test_error_{crops}crop"]
        assert published == evaluate(exported, data, crops=crops).top1_error
