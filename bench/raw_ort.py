"""Raw ONNX Runtime capacity: crops/s of the benchmark model at several batch sizes, nothing else running.

The session is made by ``service.runtime.create_session`` with the service's defaults (CPU provider,
``intra_op_threads=0``), so it is the session the service runs, minus the service. The rows are real
10-crop rows of the benchmark photos, tiled to the batch size. For each batch size: one warm-up run,
then runs until ``--seconds`` have passed and at least ``--min-runs`` were made, in ``--passes`` rounds
in which the batch sizes take turns; the figure is the median run time. Prints and optionally writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    CROP_SIZE,
    MODEL_PATH,
    RESIZE_SIZE,
    cpu_totals,
    load_images,
    median,
    override_session_options,
    steal_pct,
    write_json,
)

BATCH_SIZES = (1, 2, 4, 8, 10, 16, 32, 64)


def real_rows(count: int) -> np.ndarray:
    from service.preprocess import preprocess

    rows = [
        preprocess(data, resize_size=RESIZE_SIZE, crop_size=CROP_SIZE, crops=10, max_pixels=64_000_000)
        for _, data in load_images()
    ]
    stacked = np.concatenate(rows)
    reps = -(-count // len(stacked))
    return np.ascontiguousarray(np.tile(stacked, (reps, 1, 1, 1))[:count])


def measure(
    batch_sizes: list[int],
    seconds: float,
    min_runs: int,
    threads: int = 0,
    passes: int = 3,
    model: Path = MODEL_PATH,
) -> dict:
    from service.runtime import create_session

    session = create_session(model, ["cpu"], None, crop_size=CROP_SIZE, intra_op_threads=threads)
    rows = real_rows(max(batch_sizes))
    times: dict[int, list[float]] = {batch: [] for batch in batch_sizes}
    steal = {batch: [0, 0] for batch in batch_sizes}
    for batch in batch_sizes:  # warm-up: the first run of a shape allocates
        session.run(["logits"], {"image": rows[:batch]})
    # The batch sizes take turns over ``passes`` rounds, so a burst of load or hypervisor steal is
    # spread over all of them instead of landing on one.
    for _ in range(passes):
        for batch in batch_sizes:
            feed = {"image": rows[:batch]}
            before = cpu_totals()
            started = time.perf_counter()
            done = 0
            while done < max(1, min_runs // passes) or time.perf_counter() - started < seconds / passes:
                t0 = time.perf_counter()
                session.run(["logits"], feed)
                times[batch].append(time.perf_counter() - t0)
                done += 1
            after = cpu_totals()
            steal[batch][0] += after[0] - before[0]
            steal[batch][1] += after[1] - before[1]
    results = []
    for batch in batch_sizes:
        run_s = median(times[batch])
        results.append(
            {
                "batch": batch,
                "runs": len(times[batch]),
                "median_ms": round(run_s * 1000, 2),
                "min_ms": round(min(times[batch]) * 1000, 2),
                "crops_per_s": round(batch / run_s, 3),
                "steal_pct": steal_pct((0, 0), (steal[batch][0], steal[batch][1])),
            }
        )
        print(
            f"batch {batch:3d}: {run_s * 1000:9.1f} ms/run  {batch / run_s:7.2f} crops/s  "
            f"({len(times[batch])} runs, steal {results[-1]['steal_pct']} %)"
        )
    best = max(results, key=lambda r: r["crops_per_s"])
    ten = next((r for r in results if r["batch"] == 10), None)
    return {
        "model": model.name,
        "providers": session.get_providers(),
        "intra_op_threads": threads,
        "by_batch": results,
        "best": best,
        "ten_crop_batch_ms": ten["median_ms"] if ten else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--seconds", type=float, default=8.0, help="least time per batch size")
    parser.add_argument("--min-runs", type=int, default=3)
    parser.add_argument("--passes", type=int, default=3, help="rounds the batch sizes take turns in")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ORT's default)")
    parser.add_argument("--model", type=Path, default=MODEL_PATH, help="ONNX model (default: %(default)s)")
    parser.add_argument(
        "--entry",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a session config entry (experiment)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ATTR=VALUE",
        help="a SessionOptions attribute (experiment)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    if args.entry or args.set:
        override_session_options(
            dict(e.split("=", 1) for e in args.entry), dict(a.split("=", 1) for a in args.set)
        )
    result = measure(sizes, args.seconds, args.min_runs, args.threads, args.passes, args.model)
    result["session_overrides"] = {"entries": args.entry, "attributes": args.set}
    if args.out:
        write_json(args.out, result)
    print(json.dumps(result["best"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
