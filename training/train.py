"""Train a ResNet with the paper's recipe: ``python training/train.py`` (see ``--help``).

With no arguments it trains resnet20 on CIFAR-10 (``data/cifar10``) with the paper's schedule. Checkpoints
(``last.pt`` each epoch and on SIGINT/SIGTERM, ``best.pt`` by test error), a JSONL metrics file and the error
curves are written to the run directory; ``--resume`` continues exactly where a run stopped.
Several processes: ``torchrun --nproc_per_node=N training/train.py ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import logging
import math
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import augment, distributed
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import (
    CIFAR10_DEFAULT_ROOT,
    DataError,
    SplitArrays,
    ensure_cifar10,
    hold_out,
    load_split,
    subset,
)
from training.imagenet_data import imagenet_loader
from training.models import ARCHITECTURES, SHORTCUTS, STRIDE_PLACES, build_model
from training.reporting import append_metrics, plot_errors
from training.schedule import PAPER_ITERATIONS, SCHEDULES, lr_multiplier

log = logging.getLogger("training")

CIFAR_RESIZE_CANDIDATES = (32, 36, 40)  # 10-crop resize sizes tried on the validation split


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint so a resume rebuilds the same run."""

    arch: str = "resnet20"
    shortcut: str | None = None
    stride_in: str = "1x1"
    data: str = str(CIFAR10_DEFAULT_ROOT)
    dataset: str = "cifar10"
    epochs: int | None = None
    iterations: int | None = None
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "paper"
    warmup_iterations: int | None = None
    workers: int = 4
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    val_size: int = 0
    cache_dir: str = "cache"
    eval_every: int = 1
    resize_size: int | None = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def family(self) -> str:
        return ARCHITECTURES[self.arch].family

    @property
    def crop_size(self) -> int:
        return ARCHITECTURES[self.arch].input_size


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python training/train.py",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--arch", default="resnet20", choices=list(ARCHITECTURES), help="architecture")
    p.add_argument(
        "--shortcut", choices=SHORTCUTS, help="shortcut option (default: A for CIFAR, B for ImageNet)"
    )
    p.add_argument("--stride-in", default="1x1", choices=STRIDE_PLACES, help="bottleneck stride placement")
    p.add_argument("--data", default=str(CIFAR10_DEFAULT_ROOT), help="ImageFolder root with train/ and test/")
    p.add_argument(
        "--dataset", default=None, help="data set name for the exported model (default: folder name)"
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int, help="train for this many epochs")
    budget.add_argument(
        "--iterations", type=positive_int, help=f"train for this many iterations (paper: {PAPER_ITERATIONS})"
    )
    p.add_argument("--batch-size", type=positive_int, default=128, help="global mini-batch size")
    p.add_argument("--lr", type=positive_float, default=0.1, help="base learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--schedule",
        default="paper",
        choices=SCHEDULES,
        help="paper: /10 at 50%% and 75%% of the iterations; cosine/onecycle: short schedules "
        "for small budgets",
    )
    p.add_argument(
        "--warmup-iterations",
        type=int,
        help="iterations at lr/10 first (default: 400 for resnet110/1202 as in the paper, else 0)",
    )
    p.add_argument("--workers", type=int, default=4, help="data-loading processes (ImageNet-style data)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last memory format (faster convolutions on CPU and tensor cores)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the training step with torch.compile (about 15%% faster for resnet20 on a 2-core CPU, "
        "after a minute of compiling); on --resume it overrides the run's setting",
    )
    p.add_argument("--out", type=Path, help="run directory (default: runs/<arch>-<time>)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="CKPT",
        help="continue the run saved in CKPT (its config; --epochs/--iterations may change the budget)",
    )
    p.add_argument("--export", action="store_true", help="export models/<arch>-<dataset>.onnx at the end")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where --export publishes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=positive_int, metavar="N", help="use N training images")
    p.add_argument("--limit-test", type=positive_int, metavar="N", help="use N test images")
    p.add_argument(
        "--val-size",
        type=int,
        default=0,
        metavar="N",
        help="hold out N training images to choose the 10-crop resize",
    )
    p.add_argument("--cache-dir", default="cache", help="where decoded uint8 arrays are cached")
    p.add_argument("--eval-every", type=positive_int, default=1, help="test every N epochs")
    p.add_argument(
        "--eval-only", type=Path, metavar="CKPT", help="evaluate CKPT (1-crop and 10-crop) and exit"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.val_size < 0:
        raise SystemExit("error: --val-size must be >= 0")
    if args.warmup_iterations is not None and args.warmup_iterations < 0:
        raise SystemExit("error: --warmup-iterations must be >= 0")
    return TrainConfig(
        arch=args.arch,
        shortcut=args.shortcut,
        stride_in=args.stride_in,
        data=args.data,
        dataset=args.dataset or Path(args.data).name,
        epochs=args.epochs,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_iterations=args.warmup_iterations,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=bool(args.compile),
        seed=args.seed,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        val_size=args.val_size,
        cache_dir=args.cache_dir,
        eval_every=args.eval_every,
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for, but no CUDA device is available")
    return device


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, so it can checkpoint and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum


@dataclass
class Data:
    """Tensors of a CIFAR-style run (uint8 NHWC on the device), or loaders for ImageNet-style data."""

    classes: list[str]
    train: SplitArrays | None = None
    test: SplitArrays | None = None
    val: SplitArrays | None = None
    train_loader: Any = None
    test_loader: Any = None


def load_data(config: TrainConfig, rank: int) -> Data:
    root = Path(config.data)
    cache = Path(config.cache_dir) if config.cache_dir else None
    if config.family == "imagenet":
        train_loader, classes = imagenet_loader(root, "train", config, rank)
        test_loader, _ = imagenet_loader(root, "test", config, rank, classes)
        return Data(classes, train_loader=train_loader, test_loader=test_loader)
    if root == CIFAR10_DEFAULT_ROOT and rank == 0:
        ensure_cifar10(root)
    distributed.barrier()
    # Rank 0 decodes and caches first; the others then read the cache.
    with distributed.rank_zero_first(rank):
        train = load_split(root, "train", config.crop_size, cache)
        test = load_split(root, "test", config.crop_size, cache, train.classes)
    val = None
    if config.val_size:
        if config.val_size >= len(train.labels):
            raise DataError(
                f"--val-size {config.val_size} leaves no training images (of {len(train.labels)})"
            )
        train, val = hold_out(train, config.val_size, config.seed)
    if config.limit_train:
        train = subset(train, config.limit_train, config.seed)
    if config.limit_test:
        test = subset(test, config.limit_test, config.seed)
    return Data(train.classes, train=train, test=test, val=val)


def total_iterations(config: TrainConfig, iters_per_epoch: int) -> int:
    if config.iterations:
        return config.iterations
    if config.epochs:
        return config.epochs * iters_per_epoch
    return PAPER_ITERATIONS


def default_warmup(config: TrainConfig) -> int:
    if config.warmup_iterations is not None:
        return config.warmup_iterations
    return 400 if config.arch in ("resnet110", "resnet1202") else 0


def step_generator(device: torch.device, seed: int, iteration: int, rank: int) -> torch.Generator:
    """Augmentation randomness derived from (seed, iteration, rank): a resumed run draws the same crops."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + iteration) * 64 + rank)
    return generator


class Trainer:
    """One training run: model, optimiser, schedule, data and the bookkeeping around them."""

    def __init__(self, config: TrainConfig, out: Path, device: torch.device, progress: bool) -> None:
        self.config = config
        self.out = out
        self.device = device
        self.progress = progress
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if config.batch_size % self.world:
            raise SystemExit(
                f"error: --batch-size {config.batch_size} is not divisible by {self.world} processes"
            )
        self.data = load_data(config, self.rank)
        if not config.mean:
            config.mean, config.std = self.normalisation()
        self.mean = torch.tensor(config.mean, device=device)
        self.std = torch.tensor(config.std, device=device)
        model = build_model(
            config.arch,
            num_classes=len(self.data.classes),
            shortcut=config.shortcut,  # type: ignore[arg-type]
            stride_in=config.stride_in,  # type: ignore[arg-type]
        ).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ddp = distributed.wrap(model, device)
        # Only the training forward is compiled: evaluation, checkpoints and export use the plain modules.
        self.train_forward = torch.compile(self.ddp) if config.compile else self.ddp
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.iters_per_epoch = self.count_iters_per_epoch()
        self.total = total_iterations(config, self.iters_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(config.schedule, self.total, default_warmup(config))
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.best_error = math.inf

    def normalisation(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images (pixel units); ImageNet's for ImageNet data."""
        if self.data.train is None:
            return list(augment.IMAGENET_MEAN), list(augment.IMAGENET_STD)
        pixels = self.data.train.images.reshape(-1, 3).astype(np.float64)
        return pixels.mean(0).round(3).tolist(), pixels.std(0).round(3).tolist()

    def count_iters_per_epoch(self) -> int:
        if self.data.train is not None:
            count = len(self.data.train.labels) // self.config.batch_size
            if count == 0:
                raise DataError(
                    f"{len(self.data.train.labels)} training images are fewer than one batch of "
                    f"{self.config.batch_size}; lower --batch-size"
                )
            return count
        return len(self.data.train_loader)

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "config": asdict(self.config),
            "classes": self.data.classes,
            "history": self.history,
            "best_error": self.best_error,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def save(self, name: str) -> None:
        if self.rank == 0:
            save_checkpoint(self.state(), self.out / name)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.iteration = checkpoint["iteration"]
        self.history = checkpoint["history"]
        self.best_error = checkpoint["best_error"]
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])

    # -- training ----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.config.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def batches(self, epoch: int, start: int):
        """(images, labels) of one epoch from batch ``start`` on; the order depends on (seed, epoch) only."""
        per_rank = self.config.batch_size // self.world
        if self.data.train is None:
            self.data.train_loader.sampler.set_epoch(epoch)
            for index, (images, labels) in enumerate(self.data.train_loader):
                if index >= start:
                    yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            return
        images_all = torch.from_numpy(self.data.train.images)
        labels_all = torch.from_numpy(self.data.train.labels)
        order = torch.randperm(
            len(labels_all), generator=torch.Generator().manual_seed(self.config.seed + epoch)
        )
        for index in range(start, self.iters_per_epoch):
            first = index * self.config.batch_size + self.rank * per_rank
            picked = order[first : first + per_rank]
            yield images_all[picked].to(self.device), labels_all[picked].to(self.device)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        generator = step_generator(self.device, self.config.seed, self.iteration, self.rank)
        if self.config.family == "cifar":
            return augment.cifar_train_batch(images, self.mean, self.std, generator)
        return augment.imagenet_train_batch(images, self.mean, self.std, generator)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        x = self.augment(images)
        with self.autocast():
            logits = self.train_forward(x)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return loss.item(), int((logits.argmax(1) != labels).sum())

    def run(self, stop: StopRequested) -> int:
        """Train to the end of the schedule; returns the signal number if interrupted, else 0."""
        epochs = math.ceil(self.total / self.iters_per_epoch)
        while self.iteration < self.total:
            epoch, start = divmod(self.iteration, self.iters_per_epoch)
            self.ddp.train()
            started, seen, loss_sum, wrong, steps = time.perf_counter(), 0, 0.0, 0, 0
            bar = tqdm(
                self.batches(epoch, start),
                total=self.iters_per_epoch - start,
                desc=f"epoch {epoch + 1}/{epochs}",
                disable=not self.progress or self.rank != 0,
                leave=False,
            )
            for images, labels in bar:
                loss, errors = self.train_step(images, labels)
                loss_sum, wrong, seen, steps = loss_sum + loss, wrong + errors, seen + len(labels), steps + 1
                if steps % 20 == 0:
                    bar.set_postfix(loss=f"{loss_sum / steps:.3f}", err=f"{wrong / seen:.3f}")
                if stop.signal is not None:
                    bar.close()
                    self.save("last.pt")
                    log.info(
                        "signal %d: saved %s at iteration %d",
                        stop.signal,
                        self.out / "last.pt",
                        self.iteration,
                    )
                    return stop.signal
                if self.iteration >= self.total:
                    break
            bar.close()
            elapsed = time.perf_counter() - started
            self.end_epoch(
                epoch, loss_sum / max(steps, 1), wrong / max(seen, 1), seen * self.world / elapsed, elapsed
            )
        return 0

    def end_epoch(
        self, epoch: int, loss: float, train_error: float, images_per_s: float, elapsed: float
    ) -> None:
        last = self.iteration >= self.total
        test_error = None
        if (epoch + 1) % self.config.eval_every == 0 or last:
            test_error = self.evaluate_split("test", crops=1)
        record = {
            "epoch": epoch + 1,
            "iteration": self.iteration,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": round(loss, 5),
            "train_error": round(train_error, 5),
            "test_error": None if test_error is None else round(test_error, 5),
            "images_per_s": round(images_per_s, 1),
            "epoch_time_s": round(elapsed, 1),
        }
        self.history.append(record)
        if self.rank == 0:
            test_text = "-" if test_error is None else f"{100 * test_error:.2f}%"
            log.info(
                "epoch %d iter %d  train loss %.4f err %.2f%%  test err %s  lr %.4g  %.0f img/s  %.0f s",
                epoch + 1, self.iteration, loss, 100 * train_error, test_text, record["lr"],
                images_per_s, elapsed,
            )  # fmt: skip
            append_metrics(self.out / "metrics.jsonl", record)
            plot_errors(self.history, self.out / "errors.png", f"{self.config.arch} on {self.config.dataset}")
        if test_error is not None and test_error < self.best_error:
            self.best_error = test_error
            self.save("best.pt")
        self.save("last.pt")

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_split(self, split: str, crops: int, resize_size: int | None = None) -> float:
        """Top-1 error on ``split`` with the paper's 1-crop or 10-crop testing (softmax averaged)."""
        self.model.eval()
        resize = resize_size or self.config.resize_size or self.default_resize()
        wrong = total = 0
        for images, labels in self.eval_batches(split):
            x = augment.normalize(images, self.mean, self.std)
            views = augment.crop_views(x, resize, self.config.crop_size, crops)
            with self.autocast():
                logits = self.model(views.flatten(0, 1).contiguous(memory_format=torch.channels_last))
            probs = logits.float().softmax(1).view(crops, len(labels), -1).mean(0)
            wrong += int((probs.argmax(1) != labels).sum())
            total += len(labels)
        return wrong / max(total, 1)

    def eval_batches(self, split: str):
        if self.data.train is None:  # ImageNet-style: the loader yields resized, uncropped images
            for images, labels in self.data.test_loader:
                yield images.to(self.device), labels.to(self.device)
            return
        arrays = self.data.val if split == "val" else self.data.test
        assert arrays is not None
        for first in range(0, len(arrays.labels), 500):
            yield (
                torch.from_numpy(arrays.images[first : first + 500]).to(self.device),
                torch.from_numpy(arrays.labels[first : first + 500]).to(self.device),
            )

    def default_resize(self) -> int:
        return 256 if self.config.family == "imagenet" else self.config.crop_size

    def choose_resize(self) -> int:
        """The 10-crop resize size with the lowest validation error (never chosen on the test set)."""
        if self.data.val is None or self.config.family == "imagenet":
            return self.default_resize()
        errors = {
            size: self.evaluate_split("val", crops=10, resize_size=size) for size in CIFAR_RESIZE_CANDIDATES
        }
        log.info(
            "10-crop validation error by resize size: %s", {k: f"{100 * v:.2f}%" for k, v in errors.items()}
        )
        return min(errors, key=lambda size: (errors[size], size))

    def final_evaluation(self) -> dict[str, float]:
        if self.config.resize_size is None:
            self.config.resize_size = self.choose_resize()
        result = {
            "resize_size": self.config.resize_size,
            "test_error_1crop": self.evaluate_split("test", crops=1),
            "test_error_10crop": self.evaluate_split("test", crops=10),
        }
        log.info(
            "final test error (resize %d, crop %d): 1-crop %.2f%%, 10-crop %.2f%%",
            self.config.resize_size, self.config.crop_size,
            100 * result["test_error_1crop"], 100 * result["test_error_10crop"],
        )  # fmt: skip
        return result


def evaluate_only(path: Path, args: argparse.Namespace) -> None:
    checkpoint = load_checkpoint(path)
    config = TrainConfig(**checkpoint["config"])
    if args.limit_test:
        config.limit_test = args.limit_test
    trainer = Trainer(config, path.parent, pick_device(args.device), progress=False)
    trainer.model.load_state_dict(checkpoint["model"])
    trainer.final_evaluation()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    stop = StopRequested()
    try:
        if args.eval_only:
            evaluate_only(args.eval_only, args)
            return 0
        distributed.setup()
        device = distributed.local_device(pick_device(args.device))
        checkpoint = load_checkpoint(args.resume) if args.resume else None
        config = TrainConfig(**checkpoint["config"]) if checkpoint else config_from_args(args)
        if checkpoint and (args.epochs or args.iterations):  # e.g. shorten a run that will not finish in time
            log.info("resuming with a new budget: epochs=%s iterations=%s", args.epochs, args.iterations)
            config.epochs, config.iterations = args.epochs, args.iterations
        if checkpoint and args.compile is not None:  # a speed setting, not part of the recipe
            config.compile = args.compile
        out = args.out or (
            args.resume.parent
            if args.resume
            else Path("runs") / f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        trainer = Trainer(config, out, device, progress=not args.no_progress)
        if checkpoint:
            trainer.restore(checkpoint)
            log.info("resumed %s at iteration %d of %d", args.resume, trainer.iteration, trainer.total)
        elif distributed.rank() == 0:
            log.info(
                "training %s on %s (%d classes) on %s: %d iterations (%d per epoch), %s schedule; run dir %s",
                config.arch, config.data, len(trainer.data.classes), device, trainer.total,
                trainer.iters_per_epoch, config.schedule, out,
            )  # fmt: skip
        interrupted = trainer.run(stop)
        if interrupted:
            return 128 + interrupted
        results = trainer.final_evaluation()
        trainer.history.append({"final": results, "iteration": trainer.iteration})
        trainer.save("last.pt")
        if distributed.rank() == 0:
            append_metrics(out / "metrics.jsonl", {"final": results, "iteration": trainer.iteration})
            if args.export:
                from training.export import export_checkpoint

                export_checkpoint(out / "last.pt", args.models_dir)
        return 0
    except (DataError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
