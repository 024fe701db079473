"""The benchmark's ResNet-50 as TorchServe's eager loader wants it (the archiver's ``--model-file``).

TorchServe imports this file, expects exactly one ``nn.Module`` class defined in it, builds it with no
arguments and loads the ``--serialized-file`` state dict into it (strictly: a structure differing from
``training.models.build_model("resnet50")`` fails the load). ``training/models.py`` travels in the .mar
as an extra file named ``training_models.py``, importable from the model directory.
"""

from __future__ import annotations

from training_models import ARCHITECTURES, IMAGENET_WIDTHS, ResNet


class ResNet50(ResNet):
    """``build_model("resnet50")``: the paper's defaults (shortcut B, stride in the 1x1), 1000 classes."""

    def __init__(self) -> None:
        spec = ARCHITECTURES["resnet50"]
        super().__init__(
            block=spec.block,
            layers=list(spec.layers),
            widths=IMAGENET_WIDTHS,
            stem="imagenet",
            num_classes=spec.default_classes,
            shortcut=spec.default_shortcut,
            residual=spec.residual,
        )
