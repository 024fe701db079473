"""Two variants of the service side by side in one run: an A/B of one change of code or of settings.

``python bench/ab_service.py --rev e82d50a`` checks the revision out into ``bench/.work/ab/<rev>`` (a git
worktree) and serves it as A against this checkout as B. ``python bench/ab_service.py --set
max_batch_size=20`` serves this checkout as A with the settings of the configuration and as B with that
field of ``run.py``'s ``ServiceConfig`` changed (``max_batch_size``, ``max_queue_delay_ms``, ``crops``);
both options together change code and settings at once. Each of ``--config`` (comma-separated: run.py's
REST configurations, the FP32 headline ``default``, ``int8``, ``1-crop``, ``delay0``, ``batch20``) is
measured under the same closed-loop load at each ``--concurrency``; ``--rounds`` alternates the two (A, B,
then B, A, ...) so drift of the machine lands on both. Prints images/s and p50 per variant and round;
``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, get_type_hints

from common import INT8_MODEL_NAME, REPO, RESULTS_DIR, WORK, prepare_images, write_json
from harness import load, log
from make_model import make_int8_model, make_model
from run import SERVICE_CONFIGS, ServiceConfig, start_service

DURATIONS = {1: (5.0, 25.0), 8: (10.0, 30.0), 32: (25.0, 35.0)}
SETTABLE = ("max_batch_size", "max_queue_delay_ms", "crops")


def worktree(rev: str) -> Path:
    target = WORK / "ab" / rev
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(target), rev], cwd=REPO, check=True)
    return target


def overrides(assignments: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs as ``ServiceConfig`` fields of the field's own type."""
    types = get_type_hints(ServiceConfig)
    found: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        try:
            if not sep or name not in SETTABLE:
                raise ValueError(assignment)
            found[name] = types[name](value)
        except ValueError:
            known = ", ".join(SETTABLE)
            message = f"--set takes FIELD=VALUE (FIELD: {known}; VALUE: a number): {assignment!r}"
            raise SystemExit(message) from None
    return found


def measure(config: ServiceConfig, tree: Path, concurrencies: list[int], tag: str) -> dict[str, Any]:
    """Serve from ``tree`` with the settings of ``config`` and load it at each concurrency."""
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
    parser.add_argument("--rev", help="A: the service at this git revision (default: this checkout)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="B: a configuration field changed"
    )
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=2, help="A/B alternations")
    rest = [c.name for c in SERVICE_CONFIGS if c.protocol == "service"]
    parser.add_argument(
        "--config",
        default=SERVICE_CONFIGS[0].name,
        help=f"comma-separated configurations of run.py ({', '.join(rest)}; default: %(default)s)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.rev is None and not args.set:
        parser.error("say what differs: --rev REV (code), --set FIELD=VALUE (settings), or both")
    changed = overrides(args.set)
    wanted = args.config.split(",")
    unknown = sorted(set(wanted) - set(rest))
    if unknown:
        parser.error(f"unknown --config {', '.join(unknown)}; choose from {', '.join(rest)}")
    configs = [next(c for c in SERVICE_CONFIGS if c.name == name) for name in wanted]
    make_model()
    if any(c.model == INT8_MODEL_NAME for c in configs):
        make_int8_model()  # quantizes the FP32 model
    prepare_images()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    a_tree = worktree(args.rev) if args.rev else REPO
    a_name = args.rev or "this checkout"
    b_name = " ".join(["this checkout", *args.set]) if args.rev else " ".join(args.set)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {c.name: {a_name: [], b_name: []} for c in configs}
    for round_ in range(args.rounds):
        for base in configs:
            variants = [(a_name, a_tree, base), (b_name, REPO, replace(base, **changed))]
            for index in (0, 1) if round_ % 2 == 0 else (1, 0):
                name, tree, config = variants[index]
                phases = measure(config, tree, concurrencies, f"{base.name}-r{round_}-{index}")
                results[base.name][name].append(phases)
                for c, r in phases.items():
                    rate, p50 = r["images_per_s"], r["latency_ms"]["p50"]
                    log(f"round {round_} {base.name} {name} c={c}: {rate:.3f} images/s, p50 {p50} ms")
    if args.out:
        summary = {"rev": args.rev, "set": args.set, "configs": wanted, "durations": DURATIONS}
        write_json(args.out, {**summary, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
