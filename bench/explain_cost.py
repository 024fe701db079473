"""What ``explain=true`` costs: the service's latency and throughput with and without class activation maps.

``python bench/explain_cost.py`` serves the FP32 benchmark model (a random ResNet-50 with the feature
output) with the settings of ``run.py``'s headline configuration and loads it with ``loadgen.py`` at each
``--concurrency``, ``explain=false`` and ``explain=true`` in turns, ``--rounds`` times (so drift of the
machine lands on both). Prints images/s and p50/p95 per phase and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common import MODEL_PATH, RESULTS_DIR, machine, prepare_images, write_json
from harness import load, log
from make_model import make_model
from run import SERVICE_CONFIGS, start_service

DURATIONS = {1: (4.0, 16.0), 8: (8.0, 20.0), 32: (20.0, 30.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=2, help="explain=false/true alternations")
    parser.add_argument(
        "--window", type=float, help="seconds of every measurement window (default: DURATIONS)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "explain-cost.json")
    args = parser.parse_args()
    durations = {c: (warmup, args.window or window) for c, (warmup, window) in DURATIONS.items()}
    from service.model_contract import read_model_metadata

    make_model()
    prepare_images()
    if read_model_metadata(MODEL_PATH).cam is None:  # exported before the feature output existed
        make_model(force=True)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    config = SERVICE_CONFIGS[0]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine(), "durations": durations, "phases": []}
    server, settings = start_service(config, RESULTS_DIR / "explain-cost.log")
    results["settings"] = settings
    try:
        server.wait_ready()
        for round_ in range(args.rounds):
            for explain in (False, True):
                for c in concurrencies:
                    tag = f"explain-{'on' if explain else 'off'}-c{c}-r{round_}"
                    extra = ["--explain"] if explain else []
                    r = load(server, c, durations, RESULTS_DIR / f"{tag}.json", config.model, extra)
                    if server.proc.poll() is not None:
                        raise RuntimeError(
                            f"the service exited (status {server.proc.returncode}) during {tag}; "
                            f"see {server.log_path}: its figures are not a measurement"
                        )
                    results["phases"].append({"round": round_, "explain": explain, "concurrency": c, **r})
                    lat = r["latency_ms"]
                    log(
                        f"round {round_} explain={explain} c={c}: {r['images_per_s']:.3f} images/s "
                        f"(Little {r['images_per_s_little']:.3f}), p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
                        f"errors {r['errors']}, server {r['server_timings']}"
                    )
    finally:
        server.stop()
    results["machine_after"] = machine()["load_average"]
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
