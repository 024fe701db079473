"""Training runs: a few steps, checkpoints, resume equivalence, signals, options, DDP."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch

from training import loop, train
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.export import export_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_few_step_run_writes_checkpoints_metrics_and_plot(train_args: list[str], tmp_path: Path) -> None:
    assert train.main([*train_args, "--epochs", "2", "--lr", "0.05"]) == 0
    run = tmp_path / "run"
    assert {"last.pt", "best.pt", "metrics.jsonl", "errors.png"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines[:2]] == [1, 2] and lines[1]["iteration"] == 8
    assert {"train_loss", "train_error", "test_error", "lr", "images_per_s"} <= set(lines[0])
    final = lines[-1]["final"]
    assert 0 <= final["test_error_1crop"] <= 1 and 0 <= final["test_error_10crop"] <= 1
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["iteration"] == 8 and checkpoint["classes"] == ["circle", "square", "stripe"]
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "results"} <= set(checkpoint)
    assert checkpoint["config"]["arch"] == "resnet20"
    # What the run computed is a result, kept apart from the config that defined it
    results = checkpoint["results"]
    assert set(results) == {"mean", "std", *final} and all(results[k] == final[k] for k in final)
    assert len(results["mean"]) == 3 and not {"mean", "std", "resize_size"} & set(checkpoint["config"])


def test_the_config_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_training_learns_the_tiny_task(train_args: list[str], tmp_path: Path) -> None:
    assert train.main([*train_args, "--epochs", "8", "--schedule", "onecycle", "--lr", "0.05"]) == 0
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert history[-1]["final"]["test_error_1crop"] <= 0.25  # 3 classes: chance is 0.67


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _interrupted_run(args: list[str], at_iteration: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``train.main(args)`` with a SIGTERM delivered right after iteration ``at_iteration``."""
    step = loop.Trainer.train_step

    def step_then_terminate(self: loop.Trainer, images: torch.Tensor, labels: torch.Tensor):
        result = step(self, images, labels)
        if self.iteration == at_iteration:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    with monkeypatch.context() as patch:
        patch.setattr(loop.Trainer, "train_step", step_then_terminate)
        assert train.main(args) == 128 + signal.SIGTERM


def test_resume_after_interruption_equals_an_uninterrupted_run(
    train_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = ["--iterations", "7", "--schedule", "cosine"]
    straight = tmp_path / "straight"
    assert train.main([*train_args, *budget, "--out", str(straight)]) == 0

    interrupted = tmp_path / "interrupted"
    _interrupted_run([*train_args, *budget, "--out", str(interrupted)], 5, monkeypatch)  # mid-epoch (4/epoch)
    assert load_checkpoint(interrupted / "last.pt")["iteration"] == 5
    assert train.main(["--resume", str(interrupted / "last.pt"), "--no-progress"]) == 0

    expected, resumed = _state(straight / "last.pt"), _state(interrupted / "last.pt")
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_a_finished_run_can_be_extended_with_a_larger_budget(train_args: list[str], tmp_path: Path) -> None:
    assert train.main([*train_args, "--iterations", "4"]) == 0
    last = tmp_path / "run" / "last.pt"
    assert train.main(["--resume", str(last), "--iterations", "8", "--no-progress"]) == 0
    history = load_checkpoint(last)["history"]
    assert [r["iteration"] for r in history if "final" in r] == [4, 8]
    assert (tmp_path / "run" / "errors.png").stat().st_size > 0


def test_resume_keeps_the_recipe_and_says_which_options_it_ignores(
    train_args: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert train.main([*train_args, "--iterations", "4"]) == 0
    last = tmp_path / "run" / "last.pt"
    with caplog.at_level(logging.WARNING):
        assert train.main(["--resume", str(last), "--iterations", "5", "--lr", "0.5", "--no-progress"]) == 0
    assert "ignoring --lr" in caplog.text
    config = load_checkpoint(last)["config"]
    assert config["lr"] == 0.1 and config["iterations"] == 5


def test_checkpoints_that_kept_results_in_the_config_still_resume_and_export(
    train_args: list[str], tmp_path: Path
) -> None:
    assert train.main([*train_args, "--iterations", "4"]) == 0
    last = tmp_path / "run" / "last.pt"
    checkpoint = load_checkpoint(last)
    # The layout before results were kept apart: mean, std, resize_size in the config, errors in the history
    results = checkpoint.pop("results")
    checkpoint["config"].update(mean=results["mean"], std=results["std"], resize_size=results["resize_size"])
    save_checkpoint(checkpoint, last)

    exported = export_checkpoint(last, tmp_path / "models")
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert int(meta["resize_size"]) == results["resize_size"]
    assert json.loads(meta["test_error_10crop"]) == results["test_error_10crop"]
    assert train.main(["--resume", str(last), "--iterations", "8", "--no-progress"]) == 0
    resumed = load_checkpoint(last)
    assert resumed["iteration"] == 8 and resumed["results"]["mean"] == results["mean"]
    assert "mean" not in resumed["config"]


@pytest.mark.slow
def test_compiled_training_trains_the_same_network_and_resumes_without_compiling(
    train_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = ["--iterations", "6", "--schedule", "cosine", "--lr", "0.05"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert train.main([*train_args, *budget, "--out", str(eager)]) == 0

    _interrupted_run([*train_args, *budget, "--compile", "--out", str(compiled)], 4, monkeypatch)
    assert load_checkpoint(compiled / "last.pt")["config"]["compile"] is True
    # The rest of the run on the plain modules: a checkpoint does not depend on how it was trained.
    assert train.main(["--resume", str(compiled / "last.pt"), "--no-compile", "--no-progress"]) == 0
    assert load_checkpoint(compiled / "last.pt")["config"]["compile"] is False

    expected, got = _state(eager / "last.pt"), _state(compiled / "last.pt")
    assert expected.keys() == got.keys()  # no torch.compile wrapper prefixes: export and resume read it
    # Fused kernels round differently (eager CPU convolutions are themselves ~1e-3 off a float64
    # reference): the runs agree closely (3e-3 measured), not bit for bit.
    floats = [k for k in expected if expected[k].is_floating_point()]
    a, b = (torch.cat([state[k].flatten() for k in floats]) for state in (expected, got))
    assert (a - b).norm() / a.norm() < 1e-2


def test_sigterm_leaves_a_usable_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable, "training/train.py", "--data", str(tiny_data), "--batch-size", "12",
        "--device", "cpu",
        "--iterations", "100000", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(run),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    for line in process.stderr:  # wait until the first epoch ends, so training is under way
        if " epoch 1 " in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, rest
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["iteration"] >= 4
    assert not list(run.glob("*.tmp"))
    budget = str(checkpoint["iteration"] + 3)  # resumable: continues from the checkpoint to a new budget
    assert train.main(["--resume", str(run / "last.pt"), "--iterations", budget, "--no-progress"]) == 0
    assert load_checkpoint(run / "last.pt")["iteration"] == int(budget)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--lr", "-1"], "must be a positive number"),
        (["--batch-size", "0"], "must be a positive integer"),
        (["--arch", "resnet21"], "invalid choice"),
        (["--schedule", "linear"], "invalid choice"),
        (["--epochs", "2", "--iterations", "5"], "not allowed with argument"),
        (["--val-size", "-1"], "must be >= 0"),
        (["--warmup-iterations", "-1"], "must be >= 0"),
    ],
)
def test_bad_options_are_rejected_clearly(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.build_parser().parse_args(option)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_directory_exits_with_instructions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = train.main(["--data", str(tmp_path / "absent"), "--device", "cpu", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "tar -xzf" in caplog.text


def test_help_documents_every_option_with_the_configs_defaults() -> None:
    text = train.build_parser().format_help()
    config_options = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig)]
    run_options = ["--out", "--resume", "--export", "--models-dir", "--eval-only", "--no-progress"]
    for option in [*config_options, *run_options, "--no-channels-last", "--no-compile"]:
        assert f"{option} " in text or f"{option}\n" in text, option
    flat = " ".join(text.split())
    assert "global mini-batch size (default: 128)" in flat and "base learning rate (default: 0.1)" in flat


def test_options_not_given_take_the_configs_defaults() -> None:
    config = train.config_from_args(train.build_parser().parse_args(["--data", "somewhere/shapes"]))
    assert config == dataclasses.replace(TrainConfig(), data="somewhere/shapes", dataset="shapes")


def test_eval_only_reports_both_crop_modes(
    train_args: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert train.main([*train_args, "--iterations", "4"]) == 0
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert train.main(["--eval-only", str(tmp_path / "run" / "last.pt"), "--device", "cpu"]) == 0
    assert "1-crop" in caplog.text and "10-crop" in caplog.text


def test_ddp_with_two_gloo_processes(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "training/train.py", "--data", str(tiny_data), "--batch-size", "12", "--device", "cpu",
        "--iterations", "8", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(run),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["iteration"] == 8
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in records if "epoch" in r] == [1, 2]  # only rank 0 wrote


def test_imagenet_style_training_runs_on_large_images(tmp_path: Path) -> None:
    """resnet18 on variable-size images: per-image scale augmentation in loader workers, the rest batched."""
    from conftest import write_imagefolder

    data = write_imagefolder(tmp_path / "large", train_per_class=4, test_per_class=1, size=300)
    args = ["--arch", "resnet18", "--data", str(data), "--batch-size", "6", "--iterations", "2",
            "--device", "cpu", "--workers", "1", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert train.main(args) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["iteration"] == 2 and checkpoint["config"]["arch"] == "resnet18"
    final = checkpoint["history"][-1]["final"]
    assert final["resize_size"] == 256 and 0 <= final["test_error_10crop"] <= 1
    assert checkpoint["results"]["mean"] == [123.675, 116.28, 103.53]  # ImageNet's, not measured
