#!/usr/bin/env bash
# The quick benchmark (FP32 and INT8 service phases, raw ONNX Runtime) on a slice of this machine's cores,
# so that a many-core machine can stand in for a small one: every process is pinned to the first N cores and
# ONNX Runtime is told N threads (its default counts the whole machine, not the slice).
#
#   bash bench/cpu_slice.sh [N] [OUT_JSON]     # N defaults to 2
#
# It prints which int8 dot-product instructions the CPU has (AVX-512 VNNI, AVX-VNNI, AMX), since the INT8
# model's speed-up depends on them.
set -euo pipefail
cores=${1:-2}
out=${2:-bench/.work/results/slice-${cores}.json}
cd "$(dirname "$0")/.."
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
echo "int8 instructions: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E -x 'avx512_vnni|avx_vnni|amx_int8' | tr '\n' ' ')"
python3 - "$cores" "$out" <<'PY'
import os, sys
cores, out = int(sys.argv[1]), sys.argv[2]
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
print(f"pinned to cores {sorted(os.sched_getaffinity(0))}", flush=True)
args = ["bench/run.py", "--quick", "--skip-peers", "--skip-naive", "--configs", "default,int8"]
os.execvp(sys.executable, [sys.executable, *args, "--threads", str(cores), "--out", out])
PY
