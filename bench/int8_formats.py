"""Does INT8 pay on this CPU, and in which form: raw crops/s of the benchmark ResNet-50 quantized four ways.

The FP32 benchmark model and four static quantizations of it (ONNX Runtime, MinMax ranges from 20 crops of
the benchmark photos): ``training/quantize.py``'s own (QDQ, per-channel 7-bit int8 weights, uint8
activations), the same with full 8-bit weights, the QOperator format (QLinearConv nodes in the file), and
uint8 weights (the U8U8 kernels). Each runs in a session made by ``service.runtime.create_session`` at 10
and 60 rows; FP32 is measured first and last, so drift shows. On a CPU with VNNI (AVX-512 or AVX) the int8
kernels multiply-add four bytes per lane in one instruction; without it, AVX2 needs two, and INT8 may not
beat FP32 at all. Prints one line per model; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import CROP_SIZE, MODEL_PATH, write_json
from raw_ort import real_rows


def variants() -> dict[str, dict[str, Any]]:
    """Name -> the quantize_static options it changes from ``training/quantize.py``'s own."""
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "QDQ, 7-bit per-channel weights (training/quantize.py)": {},
        "QDQ, 8-bit per-channel weights": {"reduce_range": False},
        "QOperator, 7-bit per-channel weights": {"quant_format": QuantFormat.QOperator},
        "QDQ, uint8 weights (U8U8)": {"reduce_range": False, "weight_type": QuantType.QUInt8},
    }


def crops_per_s(model: Path, rows: np.ndarray, runs: int) -> dict[str, float]:
    from service.runtime import create_session

    session = create_session(model, ["cpu"], None, crop_size=CROP_SIZE)
    rates: dict[str, float] = {}
    for batch in (10, 60):
        feed = {"image": rows[:batch]}
        session.run(None, feed)  # the first run of a shape allocates
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - started)
        rates[str(batch)] = round(batch / float(np.median(times)), 2)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per batch size (median)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import onnx

    from service.model_contract import read_model_metadata
    from training.quantize import quantized_graph

    meta = read_model_metadata(MODEL_PATH)
    rows = real_rows(60)
    results: dict[str, dict[str, float]] = {"FP32 (before)": crops_per_s(MODEL_PATH, rows, args.runs)}
    print(f"FP32 (before): {results['FP32 (before)']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="int8-formats-") as scratch:
        for index, (name, overrides) in enumerate(variants().items()):
            target = Path(scratch) / f"variant{index}.onnx"
            onnx.save(
                quantized_graph(MODEL_PATH, meta, rows[::3][:20], Path(scratch), **overrides), str(target)
            )
            results[name] = crops_per_s(target, rows, args.runs)
            print(f"{name}: {results[name]}", flush=True)
    results["FP32 (after)"] = crops_per_s(MODEL_PATH, rows, args.runs)
    print(f"FP32 (after): {results['FP32 (after)']}", flush=True)
    if args.out:
        write_json(args.out, {"crops_per_s": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
