"""Offline evaluation through ONNX Runtime with the service's preprocessing, on a model with known answers.

The model (the mean-colour model of ``tests/contract_models.py``) scores each image by the mean of its
colour channels: classes red/green/blue score +R/+G/+B and not_red/not_green/not_blue score -R/-G/-B.
So a reddish image is predicted "red" and has "not_red" as its least likely class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from contract_models import mean_rgb_model, publish
from PIL import Image

from service.image_errors import ImageError
from service.preprocess import preprocess, softmax
from training import evaluate
from training.data import DataError

LABELS = ["red", "green", "blue", "not_red", "not_green", "not_blue"]
CROP, RESIZE = 16, 20
RED, GREEN, BLUE = (200, 40, 20), (30, 210, 60), (10, 50, 190)


def colour_model(path: Path) -> Path:
    """uint8 [N, H, W, 3] -> mean colour [N, 3] -> logits [N, 6] = (R, G, B, -R, -G, -B) / 50."""
    # Scaled to logits of a few units, as a trained net gives: gaps beyond ~87 underflow the float32 softmax.
    weights = np.hstack([np.eye(3), -np.eye(3)]) / 50
    return publish(path, mean_rgb_model(LABELS, weights, crop=CROP, resize=RESIZE, arch="colour"))


def solid(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (30, 24)) -> Image.Image:
    """A noisy image of one dominant colour, not square (so the resize and crop matter)."""
    noise = np.random.default_rng(seed).integers(-15, 16, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def write_folder(root: Path, images: dict[str, list[Image.Image]]) -> Path:
    for name, members in images.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(members):
            image.save(root / name / f"{i:02d}.png")
    return root


# Six images with known outcomes: a red image filed as "green" misses top-1 but not top-5 (green is its
# 2nd-4th best); one filed as "not_red" misses both (not_red is its least likely class).
KNOWN = {
    "red": [RED, RED],
    "green": [GREEN, RED],
    "blue": [BLUE],
    "not_red": [RED],
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_model(tmp_path_factory.mktemp("model") / "colour.onnx")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    seeds = iter(range(100))
    write_folder(root / "test", {k: [solid(c, next(seeds)) for c in v] for k, v in KNOWN.items()})
    return root


def test_errors_per_class_and_confusion_are_right(model: Path, data: Path) -> None:
    result = evaluate.evaluate(model, data, crops=1, batch_size=4, providers=["cpu"])
    assert result.data == str(data / "test") and result.images == 6 and result.skipped == 0
    assert result.top1_error == pytest.approx(2 / 6)
    assert result.top5_error == pytest.approx(1 / 6)
    by_class = {r.label: (r.images, r.top1_error, r.top5_error) for r in result.per_class}
    assert by_class == {
        "red": (2, 0.0, 0.0),
        "green": (2, 0.5, 0.0),
        "blue": (1, 0.0, 0.0),
        "not_red": (1, 1.0, 1.0),
    }
    assert result.confusion_classes == [0, 1, 2, 3]  # the classes that occur, not all six
    expected = [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]  # rows true, columns predicted
    assert result.confusion.tolist() == expected
    assert result.images_per_s > 0 and result.providers == ["CPUExecutionProvider"]


def test_outputs_and_printed_report(model: Path, data: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "eval"
    code = evaluate.main([str(model), "--data", str(data), "--providers", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "top-1 error 33.33%  top-5 error 16.67%" in printed
    assert "images/s" in printed and "not_red" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["top1_error"] == pytest.approx(2 / 6) and summary["images"] == 6
    assert summary["confusion_labels"] == ["red", "green", "blue", "not_red"]
    assert summary["confusion"] == [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    rows = json.loads((out / "per_class.json").read_text())
    assert [(r["label"], r["top1_error"]) for r in rows] == [
        ("red", 0.0),
        ("green", 0.5),
        ("blue", 0.0),
        ("not_red", 1.0),
    ]
    csv_lines = (out / "per_class.csv").read_text().splitlines()
    assert csv_lines[0] == "index,label,images,top1_error,top5_error" and len(csv_lines) == 5
    with Image.open(out / "confusion.png") as png:
        assert png.format == "PNG" and min(png.size) >= 300


class RecordingSession:
    """Wraps an ONNX Runtime session and keeps every batch it is given and what it answered."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.inputs.append(feeds["image"])
        result = self.session.run(names, feeds)
        self.outputs.append(result[0])
        return result


@pytest.mark.parametrize("crops", [1, 10])
def test_rows_are_the_service_preprocessing_batched(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crops: int
) -> None:
    """The session sees exactly service.preprocess.preprocess's crops, several images per run."""
    root = write_folder(tmp_path / "data", {"red": [solid(RED, 1)], "blue": [solid(BLUE, 2)]})
    # A JPEG over twice the draft size (2 x resize): the service decodes it at reduced scale first, which
    # changes the pixels (checked: about 40% of them by 1-2 levels) against a full decode + resize.
    texture = np.random.default_rng(3).integers(0, 60, (90, 120, 3))
    ramp = np.add.outer(np.arange(90), np.arange(120))[..., None] * np.array([1, 0.6, 0.3])
    Image.fromarray(np.clip(ramp + texture, 0, 255).astype(np.uint8)).save(
        root / "red" / "00.jpg", quality=80
    )
    sessions: list[RecordingSession] = []
    real = evaluate.create_session

    def recording(*args: Any, **kwargs: Any) -> RecordingSession:
        sessions.append(RecordingSession(real(*args, **kwargs)))
        return sessions[-1]

    monkeypatch.setattr(evaluate, "create_session", recording)
    result = evaluate.evaluate(model, root, crops=crops, batch_size=2 * crops, providers=["cpu"])
    files = sorted(root.glob("*/*"))
    expected = [
        preprocess(f.read_bytes(), resize_size=RESIZE, crop_size=CROP, crops=crops, max_pixels=10**8)
        for f in files
    ]
    session = sessions[0]
    assert [len(batch) for batch in session.inputs] == [2 * crops, crops]  # two images, then one
    np.testing.assert_array_equal(np.concatenate(session.inputs), np.concatenate(expected))
    outputs = np.concatenate(session.outputs)
    mean_softmax = softmax(outputs).reshape(len(files), crops, -1).mean(axis=1)
    targets = [LABELS.index(f.parent.name) for f in files]
    assert [r.label for r in result.per_class] == ["red", "blue"]
    assert result.top1_error == pytest.approx(np.mean(mean_softmax.argmax(1) != targets))
    top1_by_class = {r.label: r.top1_error for r in result.per_class}
    assert top1_by_class["blue"] == 0.0


def test_folders_named_by_output_index_and_limit(model: Path, tmp_path: Path) -> None:
    write_folder(tmp_path / "val", {"0": [solid(RED, i) for i in range(3)], "2": [solid(BLUE, 9)]})
    result = evaluate.evaluate(model, tmp_path, providers=["cpu"], limit=2)
    assert (
        result.data == str(tmp_path / "val")
        and result.images == 2
        and [r.label for r in result.per_class] == ["red", "blue"]
    )  # one of each
    assert result.top1_error == 0.0


def test_unknown_folders_and_undecodable_files(model: Path, tmp_path: Path, caplog: Any) -> None:
    bad = write_folder(tmp_path / "bad", {"red": [solid(RED, 0)], "purple": [solid(BLUE, 0)]})
    with pytest.raises(DataError, match="class folders purple are not labels of the model"):
        evaluate.evaluate(model, bad, providers=["cpu"])
    mixed = write_folder(tmp_path / "mixed", {"red": [solid(RED, 0)]})
    (mixed / "red" / "broken.png").write_bytes(b"not an image")
    result = evaluate.evaluate(model, mixed, providers=["cpu"])
    assert (result.images, result.skipped, result.top1_error) == (1, 1, 0.0)
    assert "broken.png" in caplog.text
    with pytest.raises(ImageError, match="not a decodable image"):  # skipped here; the service answers 400
        preprocess(b"not an image", resize_size=RESIZE, crop_size=CROP, crops=1, max_pixels=10**8)
    code = evaluate.main([str(tmp_path / "missing.onnx"), "--data", str(mixed)])
    assert code == 1 and "not a readable ONNX model" in caplog.text


def test_spread_limit_keeps_every_class() -> None:
    assert evaluate.spread_limit([0, 0, 0, 1, 1, 2], 3) == [0, 3, 5]
    assert evaluate.spread_limit([0, 0, 1], None) == [0, 1, 2]


def test_a_strip_too_long_once_resized_is_skipped(model: Path, tmp_path: Path, caplog: Any) -> None:
    folder = write_folder(tmp_path / "strip", {"red": [solid(RED, 0)]})
    Image.new("RGB", (1, 250_000), RED).save(folder / "red" / "strip.png")  # 20 x 5,000,000 once resized
    result = evaluate.evaluate(model, folder, providers=["cpu"])
    assert (result.images, result.skipped) == (1, 1)
    assert "after resizing" in caplog.text
