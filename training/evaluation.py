"""A run's test errors: the per-epoch one, and the final 1-crop and 10-crop ones that it publishes.

The final errors go into the checkpoint's results and from there into an exported model's metadata, so
they are measured on the service's own crops of the test files (``sources.served_batches``) and equal what
``training/evaluate.py`` measures on the exported model. The softmax is averaged over an image's crops, as
the service does; with several processes each tests its share and the counts are added up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from training import distributed
from training.augment import normalize
from training.data import SplitFiles
from training.loop import autocast
from training.sources import DataSource, served_batches, shard

log = logging.getLogger(__name__)

CIFAR_RESIZE_CANDIDATES = (32, 36, 40)  # 10-crop resize sizes tried on the validation split


@dataclass(frozen=True)
class FinalResults:
    resize_size: int
    test_error_1crop: float
    test_error_10crop: float


def sum_over_processes(counts: list[int], device: torch.device) -> list[int]:
    if not dist.is_initialized():
        return counts
    total = torch.tensor(counts, dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return [int(count) for count in total.tolist()]


class Evaluator:
    """Top-1 error of a network (the plain module, not its DDP or compiled wrapper) on uint8 crops."""

    def __init__(
        self, model: nn.Module, mean: Tensor, std: Tensor, crop_size: int, amp: bool, threads: int
    ) -> None:
        self.model, self.mean, self.std = model, mean, std
        self.crop_size, self.amp, self.threads = crop_size, amp, threads
        self.device = mean.device

    @torch.no_grad()
    def error(self, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
        """Error over every process's ``batches`` of uint8 [N, crops, crop, crop, 3] images and labels."""
        self.model.eval()
        wrong = total = 0
        for images, labels in batches:
            count, crops = images.shape[:2]
            x = normalize(images.flatten(0, 1), self.mean, self.std)
            with autocast(self.device, self.amp):
                logits = self.model(x.contiguous(memory_format=torch.channels_last))
            probabilities = logits.float().softmax(1).view(count, crops, -1).mean(1)
            wrong += int((probabilities.argmax(1) != labels).sum())
            total += count
        wrong, total = sum_over_processes([wrong, total], self.device)
        return wrong / max(total, 1)

    def served_error(self, files: SplitFiles, resize_size: int, crops: int) -> float:
        """Error on the crops the service cuts from ``files`` with their shorter side at ``resize_size``."""
        share = shard(files, distributed.rank(), distributed.world_size())
        return self.error(
            served_batches(share, resize_size, self.crop_size, crops, self.device, self.threads)
        )


def choose_resize(evaluator: Evaluator, val_files: SplitFiles) -> int:
    """The 10-crop resize size with the lowest validation error (never chosen on the test set)."""
    errors = {size: evaluator.served_error(val_files, size, crops=10) for size in CIFAR_RESIZE_CANDIDATES}
    log.info("10-crop validation error by resize size: %s", {k: f"{100 * v:.2f}%" for k, v in errors.items()})
    return min(errors, key=lambda size: (errors[size], size))


def final_evaluation(evaluator: Evaluator, source: DataSource) -> FinalResults:
    """The errors a run publishes: 1-crop and 10-crop on the test files, as the service serves them."""
    resize = choose_resize(evaluator, source.val_files) if source.val_files else source.test_resize
    results = FinalResults(
        resize,
        evaluator.served_error(source.test_files, resize, crops=1),
        evaluator.served_error(source.test_files, resize, crops=10),
    )
    log.info(
        "final test error (resize %d, crop %d): 1-crop %.2f%%, 10-crop %.2f%%",
        resize, evaluator.crop_size, 100 * results.test_error_1crop, 100 * results.test_error_10crop,
    )  # fmt: skip
    return results
