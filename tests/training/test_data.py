"""The ImageFolder loader: decoding, caching, unreadable files, empty and missing splits."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, write_imagefolder
from PIL import Image

from service.preprocess import preprocess
from training.data import DataError, ensure_cifar10, hold_out, load_rgb, load_split, scan_split, subset


def test_classes_come_from_sorted_folder_names(tiny_data: Path) -> None:
    files = scan_split(tiny_data, "train")
    assert files.classes == sorted(CLASSES)
    assert len(files.paths) == 48 and files.labels.count(1) == 16


def test_decoded_arrays_are_cached(tiny_data: Path, tmp_path: Path) -> None:
    first = load_split(tiny_data, "train", 32, tmp_path)
    assert first.images.shape == (48, 32, 32, 3) and first.images.dtype == np.uint8
    assert len(list(tmp_path.glob("train-*.npz"))) == 1
    second = load_split(tiny_data, "train", 32, tmp_path)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)


def test_corrupt_file_is_reported_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_imagefolder(tmp_path / "data", train_per_class=4, test_per_class=2)
    broken = root / "train" / "square" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with caplog.at_level(logging.WARNING):
        arrays = load_split(root, "train", 32, None)
    assert len(arrays.labels) == 12
    assert any(str(broken) in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)


def test_empty_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "data", train_per_class=4, test_per_class=2)
    shutil.rmtree(root / "train" / "stripe")
    (root / "train" / "stripe").mkdir()
    with pytest.raises(DataError, match=r"stripe has no image files"):
        load_split(root, "train", 32, None)


def test_class_with_only_unreadable_files_is_a_clear_error(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "data", train_per_class=4, test_per_class=2)
    for path in (root / "train" / "circle").iterdir():
        path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"no readable images for class.*circle"):
        load_split(root, "train", 32, None)


def test_heavily_unbalanced_split_is_refused(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "data", train_per_class=42, test_per_class=2)
    for path in sorted((root / "train" / "square").iterdir())[2:]:
        path.unlink()
    with pytest.raises(DataError, match="imbalance"):
        load_split(root, "train", 32, None)


def test_missing_data_directory_says_how_to_provide_data(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        scan_split(tmp_path / "nowhere", "train")
    message = str(error.value)
    assert "tar -xzf" in message and "--data" in message


def test_test_split_falls_back_to_val_and_must_match_classes(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "data", train_per_class=2, test_per_class=2)
    (root / "test").rename(root / "val")
    assert scan_split(root, "test", list(CLASSES)).root.name == "val"
    (root / "val" / "circle").rename(root / "val" / "oval")
    with pytest.raises(DataError, match="differ from the training classes"):
        scan_split(root, "test", sorted(CLASSES))


def test_images_of_other_sizes_become_the_services_centre_crop(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "data", train_per_class=2, test_per_class=1, size=48)
    for path in (root / "train").rglob("*.png"):  # 61x48: the resize rule and the centre's rounding matter
        Image.open(path).resize((61, 48)).save(path)
    arrays = load_split(root, "train", 32, None)
    assert arrays.images.shape == (6, 32, 32, 3)
    for image, path in zip(arrays.images, arrays.files.paths, strict=True):
        served = preprocess(path.read_bytes(), resize_size=32, crop_size=32, crops=1, max_pixels=10**9)
        np.testing.assert_array_equal(image, served[0])


def test_each_row_keeps_its_file_through_the_cache_hold_out_and_subsets(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "data", train_per_class=4, test_per_class=1)
    (root / "train" / "square" / "000.png").write_bytes(b"garbage")  # left out: rows and files stay aligned
    decoded = load_split(root, "train", 32, tmp_path / "cache")
    cached = load_split(root, "train", 32, tmp_path / "cache")
    assert cached.files.paths == decoded.files.paths and len(decoded.files.paths) == 11
    train, val = hold_out(cached, 3, seed=0)
    for part in (cached, train, val, subset(train, 4, seed=1)):
        assert part.files.labels == part.labels.tolist()
        for image, label, path in zip(part.images, part.labels, part.files.paths, strict=True):
            assert part.classes[label] == path.parent.name
            np.testing.assert_array_equal(image, load_rgb(path, 32))


def test_hold_out_makes_disjoint_splits(tiny_data: Path) -> None:
    arrays = load_split(tiny_data, "train", 32, None)
    train, val = hold_out(arrays, 12, seed=0)
    assert len(train.labels) == 36 and len(val.labels) == 12
    together = np.concatenate([train.images, val.images]).reshape(48, -1)
    assert len(np.unique(together, axis=0)) == 48


class FakeCIFAR10:
    """Stands in for torchvision's CIFAR10: two tiny images per split, or a refused download."""

    classes = ("airplane", "automobile")
    refuse = False

    def __init__(self, root: str, train: bool, download: bool) -> None:
        if self.refuse:
            raise RuntimeError("network unreachable")
        self.items = [(Image.new("RGB", (32, 32), (i * 90, 0, 0)), i % 2) for i in range(2)]

    def __iter__(self):
        return iter(self.items)


def test_absent_cifar10_is_downloaded_into_the_imagefolder_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    root = tmp_path / "data" / "cifar10"
    ensure_cifar10(root)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        "test/airplane/0000.png", "test/automobile/0000.png",
        "train/airplane/0000.png", "train/automobile/0000.png",
    ]  # fmt: skip


def test_failed_download_explains_how_to_provide_data_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", type("Refusing", (FakeCIFAR10,), {"refuse": True}))
    root = tmp_path / "data" / "cifar10"
    with pytest.raises(DataError, match="network unreachable") as error:
        ensure_cifar10(root)
    assert "tar -xzf" in str(error.value)
    assert not root.exists() and not (tmp_path / "data" / "cifar10.partial").exists()
