"""What the feature output (class activation maps) costs a session run: ResNet-50 with and without it.

Exports the benchmark's random ResNet-50 twice into ``bench/.work/features/`` (``--no-features`` and the
default), opens both with ``service.runtime.create_session`` (the service's session) and times, in turns,
a batch of ``--batch`` real 10-crop rows: the model without the output, the model with it fetching the
logits only (what a request without ``explain`` runs), and the same fetching the feature map too (a batch
with an ``explain=true`` request in it). The figure is each one's median run time over ``--runs`` turns.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import CROP_SIZE, MEAN, STD, WORK, machine, median, write_json
from make_model import build_network, random_card
from raw_ort import real_rows

FOLDER = WORK / "features"


def export(features: bool) -> Path:
    from training.export import PixelInput, export_model

    target = FOLDER / f"resnet50-random-{'features' if features else 'plain'}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    return export_model(PixelInput(build_network(), MEAN, STD, features=features), random_card(), target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=10, help="rows per run (10: one 10-crop image)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs of each variant, in turns")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from service.loader import run_logits, run_with_features
    from service.model_contract import read_model_metadata
    from service.runtime import create_session

    sessions = {}
    for features in (False, True):
        path = export(features)
        meta = read_model_metadata(path)
        session = create_session(
            path, ["cpu"], WORK / "trt", input_name=meta.input_name, crop_size=CROP_SIZE, max_batch_size=64
        )
        sessions[features] = (session, meta)
    rows = real_rows(args.batch)
    variants = {
        "without the output": lambda: run_logits(*sessions[False], rows),
        "with it, logits fetched": lambda: run_logits(*sessions[True], rows),
        "with it, logits and features fetched": lambda: run_with_features(*sessions[True], rows),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():  # warm-up
        run()
    for _ in range(args.runs):
        for name, run in variants.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    result = {
        "machine": machine(),
        "batch": args.batch,
        "runs": args.runs,
        "median_ms": {name: round(median(values) * 1000, 1) for name, values in times.items()},
    }
    print(json.dumps(result["median_ms"]))
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
