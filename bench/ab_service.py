"""The service at another git revision against this checkout, side by side in one run (an A/B of a change).

``python bench/ab_service.py --rev e82d50a`` checks the revision out into ``bench/.work/ab/<rev>`` (a git
worktree) and serves the benchmark model from each tree in turn, with the settings of one of ``run.py``'s
REST configurations (``--config``: the FP32 headline ``default``, ``int8``, ``1-crop``, ``delay0``,
``batch20``), under the same closed-loop load at each ``--concurrency``; ``--rounds`` alternates the two
(A, B, A, B, ...) so drift of the machine lands on both. Prints images/s and p50 per server and round;
``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import INT8_MODEL_NAME, REPO, RESULTS_DIR, WORK, prepare_images, write_json
from harness import load, log
from make_model import make_int8_model, make_model
from run import SERVICE_CONFIGS, ServiceConfig, start_service

DURATIONS = {1: (5.0, 25.0), 8: (10.0, 30.0), 32: (30.0, 40.0)}


def worktree(rev: str) -> Path:
    target = WORK / "ab" / rev
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(target), rev], cwd=REPO, check=True)
    return target


def measure(base: ServiceConfig, name: str, tree: Path, concurrencies: list[int], tag: str) -> dict[str, Any]:
    """Serve from ``tree`` with the settings of ``base`` and load it at each concurrency."""
    config = replace(base, name=name)
    server, _ = start_service(config, RESULTS_DIR / f"ab-{tag}.log", tree)
    try:
        server.wait_ready()
        return {
            str(c): load(
                server, c, DURATIONS, RESULTS_DIR / f"ab-{tag}-c{c}.json", config.model, crops=config.crops
            )
            for c in concurrencies
        }
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rev", required=True, help="the git revision to compare this checkout with")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=2, help="A/B alternations")
    parser.add_argument(
        "--config",
        default=SERVICE_CONFIGS[0].name,
        choices=[c.name for c in SERVICE_CONFIGS if c.protocol == "service"],
        help="run.py's service configuration to serve both trees with (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = next(c for c in SERVICE_CONFIGS if c.name == args.config)
    if base.model == INT8_MODEL_NAME:
        make_int8_model()  # quantizes the FP32 model, made first if need be
    else:
        make_model()
    prepare_images()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    trees = {args.rev: worktree(args.rev), "this checkout": REPO}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        for index, (name, tree) in enumerate(trees.items()):
            phases = measure(base, name, tree, concurrencies, f"r{round_}-{index}")
            results[name].append(phases)
            for c, r in phases.items():
                rate, p50 = r["images_per_s"], r["latency_ms"]["p50"]
                log(f"round {round_} {name} c={c}: {rate:.3f} images/s, p50 {p50} ms")
    if args.out:
        write_json(
            args.out,
            {"rev": args.rev, "config": args.config, "durations": DURATIONS, "results": results},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
