"""The ResNets of He et al., "Deep Residual Learning for Image Recognition" (2015).

Two families, as in the paper:

* ImageNet (Table 1): resnet18/34 (basic blocks) and resnet50/101/152 (bottleneck blocks), plus the
  plain18/34 counterparts (the same stacks without shortcuts).
* CIFAR-10 (Section 4.2): 6n+2 layers, 16/32/64 filters on 32/16/8 maps: resnet20/32/44/56/110/1202
  and plain20/32/44/56.

Shortcut options (Section 3.3): ``A`` identity, zero-padded channels when the width grows (no parameters);
``B`` projection only where dimensions change (the ImageNet default); ``C`` projection everywhere.

``stride_in`` places the stride-2 of a stage either in the block's first 1x1 convolution (``"1x1"``: the
original 2015 design, whose Caffe weights the shipped ResNet-50 uses) or in its 3x3 convolution (``"3x3"``:
torchvision's choice). Basic blocks have no 1x1 convolution, so it only matters for bottleneck nets.

Run ``python -m training.models`` for a table of every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shortcut = Literal["A", "B", "C"]
StrideIn = Literal["1x1", "3x3"]
SHORTCUTS: tuple[Shortcut, ...] = ("A", "B", "C")
STRIDE_PLACES: tuple[StrideIn, ...] = ("1x1", "3x3")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A: identity that subsamples by the stride and zero-pads the new channels; no parameters."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class ProjectionShortcut(nn.Sequential):
    """Options B and C: a strided 1x1 convolution and batch norm (Eqn. 2's W_s)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, bn_eps: float) -> None:
        super().__init__(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes, eps=bn_eps))


def make_shortcut(option: Shortcut, in_planes: int, out_planes: int, stride: int, bn_eps: float) -> nn.Module:
    """The shortcut a block adds to its residual branch, per the paper's options A/B/C."""
    changes = stride != 1 or in_planes != out_planes
    if option == "C" or (option == "B" and changes):
        return ProjectionShortcut(in_planes, out_planes, stride, bn_eps)
    if option == "A" and changes:
        return PadShortcut(in_planes, out_planes, stride)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (Fig. 2 left). ``shortcut=None`` makes it the plain-net block."""

    expansion = 1

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        shortcut: nn.Module | None,
        stride_in: StrideIn = "3x3",
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 (reduce), 3x3, 1x1 (restore to 4x width) convolutions (Fig. 5 right)."""

    expansion = 4

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        shortcut: nn.Module | None,
        stride_in: StrideIn = "1x1",
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in == "1x1" else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, eps=bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A stem, stages of blocks, global average pooling and a fully connected classifier.

    ``stem="imagenet"`` is 7x7/2 conv + 3x3/2 max pool (Table 1); ``stem="cifar"`` is one 3x3 conv (Sec. 4.2).
    """

    def __init__(
        self,
        block: Block,
        layers: list[int],
        widths: list[int],
        stem: Literal["imagenet", "cifar"],
        num_classes: int,
        shortcut: Shortcut,
        residual: bool = True,
        stride_in: StrideIn = "1x1",
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.shortcut_option = shortcut
        self.residual = residual
        self.bn_eps = bn_eps
        self.stride_in = stride_in
        self.in_planes = widths[0] if stem == "cifar" else 64
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64, eps=bn_eps),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0], eps=bn_eps), nn.ReLU(inplace=True)
            )
        self.stages = nn.Sequential(
            *(
                self._make_stage(block, width, blocks, stride=1 if i == 0 else 2)
                for i, (width, blocks) in enumerate(zip(widths, layers, strict=True))
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        self._init_weights()

    def _make_stage(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            block_stride = stride if i == 0 else 1
            out_planes = planes * block.expansion
            shortcut = (
                make_shortcut(self.shortcut_option, self.in_planes, out_planes, block_stride, self.bn_eps)
                if self.residual
                else None
            )
            layers.append(block(self.in_planes, planes, block_stride, shortcut, self.stride_in, self.bn_eps))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """He et al. 2015 ("Delving deep into rectifiers") initialisation, as the paper prescribes."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last block's output ``[N, C, h, w]``: what a class activation map weighs (Zhou et al. 2016)."""
        return self.stages(self.stem(x))

    def head(self, features: Tensor) -> Tensor:
        """Global average pooling and the linear classifier: logits from the last block's output."""
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


@dataclass(frozen=True)
class ArchSpec:
    """One row of the paper's tables: how to build the network and what it takes as input."""

    name: str
    family: Literal["imagenet", "cifar"]
    block: Block
    layers: tuple[int, ...]
    residual: bool
    default_shortcut: Shortcut

    @property
    def input_size(self) -> int:
        return 224 if self.family == "imagenet" else 32

    @property
    def default_classes(self) -> int:
        return 1000 if self.family == "imagenet" else 10

    @property
    def depth(self) -> int:
        convs_per_block = 3 if self.block is Bottleneck else 2
        return convs_per_block * sum(self.layers) + 2


def _imagenet(name: str, block: Block, layers: tuple[int, ...], residual: bool = True) -> ArchSpec:
    return ArchSpec(name, "imagenet", block, layers, residual, "B")


def _cifar(name: str, n: int, residual: bool = True) -> ArchSpec:
    return ArchSpec(name, "cifar", BasicBlock, (n, n, n), residual, "A")


ARCHITECTURES: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in [
        _imagenet("resnet18", BasicBlock, (2, 2, 2, 2)),
        _imagenet("resnet34", BasicBlock, (3, 4, 6, 3)),
        _imagenet("resnet50", Bottleneck, (3, 4, 6, 3)),
        _imagenet("resnet101", Bottleneck, (3, 4, 23, 3)),
        _imagenet("resnet152", Bottleneck, (3, 8, 36, 3)),
        _imagenet("plain18", BasicBlock, (2, 2, 2, 2), residual=False),
        _imagenet("plain34", BasicBlock, (3, 4, 6, 3), residual=False),
        *(_cifar(f"resnet{6 * n + 2}", n) for n in (3, 5, 7, 9, 18, 200)),
        *(_cifar(f"plain{6 * n + 2}", n, residual=False) for n in (3, 5, 7, 9)),
    ]
}

IMAGENET_WIDTHS = [64, 128, 256, 512]
CIFAR_WIDTHS = [16, 32, 64]


def build_model(
    arch: str,
    num_classes: int | None = None,
    shortcut: Shortcut | None = None,
    stride_in: StrideIn = "1x1",
    bn_eps: float = 1e-5,
) -> ResNet:
    """Build ``arch`` (a key of ``ARCHITECTURES``) with the paper's defaults unless overridden."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if shortcut is not None and shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut option {shortcut!r}; choose from A, B, C")
    if stride_in not in STRIDE_PLACES:
        raise ValueError(f"stride_in must be one of {STRIDE_PLACES}, not {stride_in!r}")
    spec = ARCHITECTURES[arch]
    return ResNet(
        block=spec.block,
        layers=list(spec.layers),
        widths=IMAGENET_WIDTHS if spec.family == "imagenet" else CIFAR_WIDTHS,
        stem=spec.family,
        num_classes=num_classes or spec.default_classes,
        shortcut=shortcut or spec.default_shortcut,
        residual=spec.residual,
        stride_in=stride_in,
        bn_eps=bn_eps,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of one forward pass on one image, the paper's "FLOPs" (conv and fc layers)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, input_size, input_size))
    model.train(was_training)
    return counter.get_total_flops() // 2  # the counter reports 2 FLOPs per multiply-add


def architecture_table(stride_in: StrideIn = "1x1") -> list[tuple[str, int, int, int]]:
    """(name, parameters, multiply-adds, input size) for every architecture, with its default shortcut."""
    table = []
    for name in ARCHITECTURES:
        spec = ARCHITECTURES[name]
        model = build_model(name, stride_in=stride_in)
        table.append(
            (name, count_parameters(model), count_multiply_adds(model, spec.input_size), spec.input_size)
        )
    return table


def main() -> None:
    print(f"{'architecture':<12} {'shortcut':>8} {'params':>10} {'mult-adds':>11} {'input':>9}")
    for name, params, macs, size in architecture_table():
        shortcut = ARCHITECTURES[name].default_shortcut if ARCHITECTURES[name].residual else "-"
        print(f"{name:<12} {shortcut:>8} {params / 1e6:>9.2f}M {macs / 1e9:>10.3f}G {size:>4}x{size:<4}")


if __name__ == "__main__":
    main()
