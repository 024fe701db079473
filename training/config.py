"""What defines a training run: an immutable config, stored in every checkpoint, and its options.

Each field declares its default and help text once; ``add_config_options`` turns the fields into
``train.py`` options (as ``python -m service`` does from its ``Settings``). What a run computes (mean/std,
the chosen resize size, the final errors) is not config: it is kept apart as the run's results.
"""

from __future__ import annotations

import argparse
import logging
import math
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from training.data import CIFAR10_DEFAULT_ROOT
from training.models import ARCHITECTURES, SHORTCUTS, STRIDE_PLACES
from training.schedule import PAPER_ITERATIONS, SCHEDULES

log = logging.getLogger(__name__)

# Fields that older checkpoints kept in the config although the run computed them.
LEGACY_RESULTS = ("mean", "std", "resize_size")
# Options that may change a resumed run: its budget and how fast it runs, never its recipe.
RESUME_OVERRIDES = ("epochs", "iterations", "compile", "device")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def option(default: Any, help: str, **argparse_options: Any) -> Any:
    """A config field with the help text (and choices, type, metavar, exclusive group) of its option."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; a resume rebuilds the same run from it."""

    arch: str = option("resnet20", "architecture", choices=tuple(ARCHITECTURES))
    shortcut: str | None = option(
        None, "shortcut option (default: A for CIFAR, B for ImageNet)", choices=SHORTCUTS
    )
    stride_in: str = option("1x1", "bottleneck stride placement", choices=STRIDE_PLACES)
    data: str = option(str(CIFAR10_DEFAULT_ROOT), "ImageFolder root with train/ and test/")
    dataset: str | None = option(None, "data set name for the exported model (default: folder name)")
    epochs: int | None = option(None, "train for this many epochs", type=positive_int, exclusive="budget")
    iterations: int | None = option(
        None,
        f"train for this many iterations (paper: {PAPER_ITERATIONS})",
        type=positive_int,
        exclusive="budget",
    )
    batch_size: int = option(128, "global mini-batch size", type=positive_int)
    lr: float = option(0.1, "base learning rate", type=positive_float)
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-4, "L2 penalty on the weights (SGD weight decay)")
    schedule: str = option(
        "paper",
        "paper: /10 at 50%% and 75%% of the iterations; cosine/onecycle: short schedules for small budgets",
        choices=SCHEDULES,
    )
    warmup_iterations: int | None = option(
        None,
        "iterations at lr/10 first (default: 400 for resnet110/1202 as in the paper, else 0)",
        type=non_negative_int,
    )
    workers: int = option(
        4,
        "data-loading processes (ImageNet-style data), and threads decoding test images",
        type=non_negative_int,
    )
    device: str = option("auto", "auto (cuda when present), cpu, cuda, cuda:N")
    amp: bool = option(False, "mixed precision (fp16 on CUDA, bf16 on CPU)")
    channels_last: bool = option(
        True, "channels-last memory format (faster convolutions on CPU and tensor cores)"
    )
    compile: bool = option(
        False,
        "compile the training step with torch.compile (about 15%% faster for resnet20 on a 2-core CPU, "
        "after a minute of compiling)",
    )
    seed: int = option(0, "seed of the initialisation, the data order and the augmentation")
    limit_train: int | None = option(None, "use N training images", type=positive_int, metavar="N")
    limit_test: int | None = option(None, "use N test images", type=positive_int, metavar="N")
    val_size: int = option(
        0, "hold out N training images to choose the 10-crop resize", type=non_negative_int, metavar="N"
    )
    cache_dir: str = option("cache", "where decoded uint8 arrays are cached")
    eval_every: int = option(1, "test every N epochs", type=positive_int)

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.arch].family

    @property
    def crop_size(self) -> int:
        return ARCHITECTURES[self.arch].input_size


def _value_type(annotation: Any) -> Any:
    """``int`` for ``int | None`` and so on: the type an option's text is parsed to."""
    if isinstance(annotation, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return annotation


def _help(config_field: Field[Any]) -> str:
    text = config_field.metadata["help"]
    return text if config_field.default in (None, MISSING) else f"{text} (default: {config_field.default})"


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config field (``--batch-size`` for ``batch_size``); an option not given is None."""
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, Any] = {}  # argparse's mutually exclusive groups, by name
    for config_field in fields(TrainConfig):
        meta = dict(config_field.metadata)
        meta.pop("help")
        exclusive = meta.pop("exclusive", None)
        if exclusive and exclusive not in groups:
            groups[exclusive] = parser.add_mutually_exclusive_group()
        target = groups[exclusive] if exclusive else parser
        value_type = _value_type(hints[config_field.name])
        if value_type is bool:
            meta["action"] = argparse.BooleanOptionalAction
        else:
            meta.setdefault("type", value_type)
        target.add_argument(option_name(config_field.name), default=None, help=_help(config_field), **meta)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config the options describe, the defaults filling what was not given."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    config = TrainConfig(**given)
    return replace(config, dataset=config.dataset or Path(config.data).name)


def config_from_checkpoint(saved: dict[str, Any]) -> TrainConfig:
    """The config a checkpoint stored; results that older checkpoints kept in it are left out."""
    return TrainConfig(**{k: v for k, v in saved.items() if k not in LEGACY_RESULTS})


def resumed_config(saved: dict[str, Any], args: argparse.Namespace) -> TrainConfig:
    """A checkpoint's config with the changes a resume may make: a new budget, --compile, --device."""
    config = config_from_checkpoint(saved)
    changes = {name: getattr(args, name) for name in ("compile", "device") if getattr(args, name) is not None}
    if args.epochs or args.iterations:  # e.g. shorten a run that will not finish in time
        log.info("resuming with a new budget: epochs=%s iterations=%s", args.epochs, args.iterations)
        changes.update(epochs=args.epochs, iterations=args.iterations)
    ignored = [
        option_name(f.name)
        for f in fields(TrainConfig)
        if f.name not in RESUME_OVERRIDES and getattr(args, f.name) is not None
    ]
    if ignored:
        log.warning("--resume keeps the run's config: ignoring %s", ", ".join(ignored))
    return replace(config, **changes)
