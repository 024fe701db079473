"""Which ONNX Runtime session options pay on this CPU: raw capacity with one option changed at a time.

Each variant is ``raw_ort.py`` in its own process (a fresh session, nothing else running) on the FP32 and
the INT8 benchmark model, at 10 rows (one 10-crop image) and 60 rows (six, what the service's 64-row batch
holds), against the session ``service.runtime.create_session`` makes. The service keeps ONNX Runtime's
defaults wherever no variant beats them clearly; this table is the evidence. Prints it; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import INT8_MODEL_PATH, MODEL_PATH, REPO, write_json

PY = sys.executable
# name -> raw_ort.py options; each changes one thing from the service's session.
VARIANTS: dict[str, list[str]] = {
    "service (ORT defaults: threads = cores, spinning, all optimisations, sequential, arena)": [],
    "intra-op threads 1": ["--threads", "1"],
    "no spin-waiting": ["--entry", "session.intra_op.allow_spinning=0"],
    "graph optimisation basic": ["--set", "graph_optimization_level=ORT_ENABLE_BASIC"],
    "graph optimisation extended": ["--set", "graph_optimization_level=ORT_ENABLE_EXTENDED"],
    "parallel execution mode": ["--set", "execution_mode=ORT_PARALLEL"],
    "no CPU memory arena": ["--set", "enable_cpu_mem_arena=0"],
}
BATCHES = "10,60"


def run_variant(model: Path, options: list[str], seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "raw.json"
        command = [PY, "bench/raw_ort.py", "--model", str(model), "--batch-sizes", BATCHES,
                   "--seconds", str(seconds), "--min-runs", "3", "--out", str(out), *options]  # fmt: skip
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="least time per batch size and variant")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for precision, model in (("fp32", MODEL_PATH), ("int8", INT8_MODEL_PATH)):
        for name, options in VARIANTS.items():
            raw = run_variant(model, options, args.seconds)
            rates = {str(r["batch"]): r["crops_per_s"] for r in raw["by_batch"]}
            results.setdefault(name, {})[precision] = rates
            print(f"{precision} {name}: crops/s {rates}", flush=True)
    baseline = results[next(iter(VARIANTS))]
    versus = {
        name: {p: {b: round(v / baseline[p][b], 3) for b, v in rates[p].items()} for p in rates}
        for name, rates in results.items()
    }
    if args.out:
        write_json(args.out, {"variants": VARIANTS, "crops_per_s": results, "vs_service": versus})
    return 0


if __name__ == "__main__":
    sys.exit(main())
