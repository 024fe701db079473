"""The optimisation of a run: the network, SGD and its learning-rate schedule, AMP, DDP and torch.compile.

:class:`Trainer` trains one epoch at a time on a data source and stops right after the step on which
SIGINT/SIGTERM arrived, so the run can checkpoint exactly there and a resume continue bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import distributed
from training.config import TrainConfig
from training.models import build_model
from training.schedule import PAPER_ITERATIONS, lr_multiplier
from training.sources import DataSource


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision when ``enabled``: fp16 on CUDA, bf16 on CPU."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)


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


class StopRequested:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step, so it can checkpoint and exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum


@dataclass(frozen=True)
class EpochStats:
    """What one (possibly partial) epoch of training measured; ``epoch`` counts from 0."""

    epoch: int
    iteration: int
    lr: float
    loss: float
    train_error: float
    images_per_s: float
    seconds: float


class Trainer:
    """Trains a freshly built network on ``source``; ``state_dict`` is everything a resume needs of it."""

    def __init__(
        self,
        config: TrainConfig,
        source: DataSource,
        mean: torch.Tensor,
        std: torch.Tensor,
        device: torch.device,
    ) -> None:
        self.config, self.source, self.mean, self.std, self.device = config, source, mean, std, device
        self.rank, self.world = distributed.rank(), distributed.world_size()
        model = build_model(
            config.arch,
            num_classes=len(source.classes),
            shortcut=config.shortcut,  # type: ignore[arg-type]
            stride_in=config.stride_in,  # type: ignore[arg-type]
        ).to(device)
        self.model = model.to(memory_format=torch.channels_last) if config.channels_last else model
        self.ddp = distributed.wrap(self.model, device)
        # Only the training forward is compiled: evaluation, checkpoints and export use the plain modules.
        self.train_forward = torch.compile(self.ddp) if config.compile else self.ddp
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        self.total = total_iterations(config, source.iters_per_epoch)
        self.epochs = math.ceil(self.total / source.iters_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_multiplier(config.schedule, self.total, default_warmup(config))
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
        self.iteration = 0

    @property
    def finished(self) -> bool:
        return self.iteration >= self.total

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """One SGD step on a uint8 batch; the loss and the number of misclassified training images."""
        generator = step_generator(self.device, self.config.seed, self.iteration, self.rank)
        x = self.source.augment(images, self.mean, self.std, generator)
        with autocast(self.device, self.config.amp):
            logits = self.train_forward(x)
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return loss.item(), int((logits.argmax(1) != labels).sum())

    def train_epoch(self, stop: StopRequested, progress: bool) -> EpochStats:
        """Train from the current iteration to the end of its epoch, of the budget, or until ``stop``."""
        epoch, start = divmod(self.iteration, self.source.iters_per_epoch)
        self.ddp.train()
        started, seen, loss_sum, wrong, steps = time.perf_counter(), 0, 0.0, 0, 0
        bar = tqdm(
            self.source.batches(epoch, start),
            total=self.source.iters_per_epoch - start,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not progress or self.rank != 0,
            leave=False,
        )
        for images, labels in bar:
            loss, errors = self.train_step(images, labels)
            loss_sum, wrong, seen, steps = loss_sum + loss, wrong + errors, seen + len(labels), steps + 1
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / steps:.3f}", err=f"{wrong / seen:.3f}")
            if stop.signal is not None or self.finished:
                break
        bar.close()
        elapsed = time.perf_counter() - started
        return EpochStats(
            epoch=epoch,
            iteration=self.iteration,
            lr=self.optimizer.param_groups[0]["lr"],
            loss=loss_sum / max(steps, 1),
            train_error=wrong / max(seen, 1),
            images_per_s=seen * self.world / elapsed,
            seconds=elapsed,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
