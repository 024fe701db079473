"""Train a ResNet with the paper's recipe: ``python training/train.py`` (see ``--help``).

With no arguments it trains resnet20 on CIFAR-10 (``data/cifar10``) with the paper's schedule. Checkpoints
(``last.pt`` each epoch and on SIGINT/SIGTERM, ``best.pt`` by test error), a JSONL metrics file and the error
curves are written to the run directory; ``--resume`` continues exactly where a run stopped.
Several processes: ``torchrun --nproc_per_node=N training/train.py ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from training import distributed
from training.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from training.config import (
    TrainConfig,
    add_config_options,
    config_from_args,
    config_from_checkpoint,
    resumed_config,
)
from training.data import DataError
from training.evaluation import Evaluator, FinalResults, final_evaluation
from training.loop import EpochStats, StopRequested, Trainer
from training.quantize import QuantizationError, add_arguments, quantize_from_arguments
from training.reporting import Report
from training.sources import Normalisation, open_source

log = logging.getLogger("training")


def build_parser() -> argparse.ArgumentParser:
    """The config's options (generated from :class:`TrainConfig`) and the options of this invocation."""
    parser = argparse.ArgumentParser(prog="python training/train.py", description=__doc__)
    add_config_options(parser)
    run = parser.add_argument_group("run options (not stored in the run's config)")
    run.add_argument("--out", type=Path, help="run directory (default: runs/<arch>-<time>)")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="CKPT",
        help="continue the run saved in CKPT with its config; --epochs/--iterations (a new budget), "
        "--compile and --device may change it",
    )
    run.add_argument("--export", action="store_true", help="export models/<arch>-<dataset>.onnx at the end")
    run.add_argument(
        "--models-dir", type=Path, default=Path("models"), help="where --export publishes (default: models)"
    )
    add_arguments(parser, int8_flag=True)
    run.add_argument(
        "--eval-only", type=Path, metavar="CKPT", help="evaluate CKPT (1-crop and 10-crop) and exit"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for, but no CUDA device is available")
    return device


class Run:
    """One training run: its data source, trainer, evaluation, checkpoints and report, wired together."""

    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        device: torch.device,
        progress: bool,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        self.config, self.out, self.progress = config, out, progress
        self.rank, world = distributed.rank(), distributed.world_size()
        if config.batch_size % world:
            raise SystemExit(f"error: --batch-size {config.batch_size} is not divisible by {world} processes")
        self.source = open_source(config, self.rank, world, device)
        # A resumed run keeps the mean/std it trained with (older checkpoints kept them in the config).
        saved = checkpoint and (checkpoint.get("results") or checkpoint["config"])
        self.normalisation = (
            Normalisation(saved["mean"], saved["std"]) if saved else self.source.normalisation()
        )
        mean = torch.tensor(self.normalisation.mean, device=device)
        std = torch.tensor(self.normalisation.std, device=device)
        self.trainer = Trainer(config, self.source, mean, std, device)
        self.evaluator = Evaluator(
            self.trainer.model, mean, std, config.crop_size, config.amp, max(1, config.workers)
        )
        self.report = Report(out, f"{config.arch} on {config.dataset}", write=self.rank == 0)
        self.best_error = math.inf
        self.final: FinalResults | None = None
        if checkpoint:
            self.restore(checkpoint)

    def state(self) -> dict[str, Any]:
        results = {**asdict(self.normalisation), **(asdict(self.final) if self.final else {})}
        return {
            **self.trainer.state_dict(),
            "config": asdict(self.config),
            "results": results,
            "classes": self.source.classes,
            "history": self.report.history,
            "best_error": self.best_error,
            "rng": rng_state(),
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint["classes"] != self.source.classes:
            raise DataError(
                f"the data's classes ({', '.join(self.source.classes)}) are not the checkpoint's "
                f"({', '.join(checkpoint['classes'])})"
            )
        self.trainer.load_state_dict(checkpoint)
        self.report.history = checkpoint["history"]
        self.best_error = checkpoint["best_error"]
        restore_rng(checkpoint["rng"])

    def save(self, name: str) -> None:
        if self.rank == 0:
            save_checkpoint(self.state(), self.out / name)

    def train(self, stop: StopRequested) -> int:
        """Train to the end of the budget; returns the signal number if interrupted, else 0."""
        while not self.trainer.finished:
            stats = self.trainer.train_epoch(stop, self.progress)
            if stop.signal is not None:
                self.save("last.pt")
                log.info(
                    "signal %d: saved %s at iteration %d", stop.signal, self.out / "last.pt", stats.iteration
                )
                return stop.signal
            self.end_epoch(stats)
        return 0

    def end_epoch(self, stats: EpochStats) -> None:
        test_error = None
        if (stats.epoch + 1) % self.config.eval_every == 0 or self.trainer.finished:
            test_error = self.evaluator.error(self.source.test_batches())
        self.report.epoch(stats, test_error)
        if test_error is not None and test_error < self.best_error:
            self.best_error = test_error
            self.save("best.pt")
        self.save("last.pt")

    def finish(self) -> None:
        """The final evaluation: its errors become the run's results, in the history and in ``last.pt``."""
        self.final = final_evaluation(self.evaluator, self.source)
        self.report.final(asdict(self.final), self.trainer.iteration)
        self.save("last.pt")


def evaluate_only(path: Path, args: argparse.Namespace) -> None:
    checkpoint = load_checkpoint(path)
    config = config_from_checkpoint(checkpoint["config"])
    config = replace(
        config, limit_test=args.limit_test or config.limit_test, device=args.device or config.device
    )
    run = Run(config, path.parent, pick_device(config.device), progress=False, checkpoint=checkpoint)
    final_evaluation(run.evaluator, run.source)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.int8 and not args.export:
        parser.error("--int8 quantizes the exported model: use it with --export")
    stop = StopRequested()
    try:
        if args.eval_only:
            evaluate_only(args.eval_only, args)
            return 0
        distributed.setup()
        checkpoint = load_checkpoint(args.resume) if args.resume else None
        config = resumed_config(checkpoint["config"], args) if checkpoint else config_from_args(args)
        device = distributed.local_device(pick_device(config.device))
        out = args.out or (
            args.resume.parent
            if args.resume
            else Path("runs") / f"{config.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        run = Run(config, out, device, progress=not args.no_progress, checkpoint=checkpoint)
        trainer = run.trainer
        if checkpoint:
            log.info("resumed %s at iteration %d of %d", args.resume, trainer.iteration, trainer.total)
        elif run.rank == 0:
            log.info(
                "training %s on %s (%d classes) on %s: %d iterations (%d per epoch), %s schedule; run dir %s",
                config.arch, config.data, len(run.source.classes), device, trainer.total,
                run.source.iters_per_epoch, config.schedule, out,
            )  # fmt: skip
        interrupted = run.train(stop)
        if interrupted:
            return 128 + interrupted
        run.finish()
        if run.rank == 0 and args.export:
            from training.export import export_checkpoint

            published = export_checkpoint(out / "last.pt", args.models_dir)
            if args.int8:
                quantize_from_arguments(published, args, Path(config.data))
        return 0
    except (DataError, FileNotFoundError, QuantizationError) as exc:
        log.error("%s", exc)
        return 2
    finally:
        distributed.teardown()


if __name__ == "__main__":
    sys.exit(main())
