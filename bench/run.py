"""Run every benchmark of ``bench/``; write ``bench/results.json`` and the table of ``bench/README.md``.

    python bench/run.py            # the real run, about 15 minutes on a 2-core CPU
    python bench/run.py --quick    # smoke run (~3 minutes); writes bench/.work/results/quick.json only

Steps, each in its own process, one after the other on an otherwise idle machine:
1. export the random-weight ResNet-50 (``make_model.py``) and lay out the JPEG photos (``common.py``);
2. raw ONNX Runtime capacity at several batch sizes (``raw_ort.py``);
3. preprocessing ms per image for a 640x480 and a 4000x3000 JPEG (``preprocess_bench.py``);
4. the service (``python -m service``) under closed-loop load from ``loadgen.py`` at concurrency 1, 8, 32,
   10-crop, plus a couple of other batching settings;
5. the naive baseline (``naive_server.py``) under the same load, same model weights and photos.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from common import (
    BENCH,
    MODEL_NAME,
    MODELS_DIR,
    REPO,
    RESULTS_DIR,
    cpu_totals,
    describe_images,
    machine,
    prepare_images,
    steal_pct,
)
from harness import PY, Server, free_port, load, log

README = BENCH / "README.md"
RESULTS_JSON = BENCH / "results.json"
START, END = "<!-- results:start -->", "<!-- results:end -->"

# Batching settings tried on the service: (name, max_batch_size rows, max_queue_delay_ms, concurrencies).
# The first is the headline; it is the service's shipped default.
SERVICE_CONFIGS: list[tuple[str, int, float, tuple[int, ...]]] = [
    ("default", 64, 5.0, (1, 8, 32)),
    ("delay0", 64, 0.0, (1, 8)),
    ("batch10", 10, 0.0, (8,)),
]
NAIVE_CONFIGS: list[tuple[str, tuple[int, ...]]] = [("sync", (1, 8, 32)), ("async", (8,))]
# (warm-up s, window s) per concurrency.
# Clients start spread over the first third of the warm-up; c=32 answers take ~25 s here, so its warm-up
# covers the ramp and a full round of answers.
FULL_DURATIONS = {1: (8.0, 50.0), 8: (20.0, 60.0), 32: (45.0, 80.0)}
EXTRA_DURATIONS = {1: (8.0, 40.0), 8: (20.0, 50.0), 32: (45.0, 60.0)}
QUICK_DURATIONS = {1: (3.0, 8.0), 8: (8.0, 12.0), 32: (12.0, 12.0)}
QUICK_CONCURRENCIES = (1, 8)  # --quick: the headline service config and the first naive handler only


def contention() -> dict[str, Any]:
    found = subprocess.run(["pgrep", "-af", "training/train.py"], capture_output=True, text=True).stdout
    return {"load_average": os.getloadavg(), "training_job": [line for line in found.splitlines() if line]}


def run_step(args: list[str], out: Path) -> dict:
    log("$ " + " ".join(str(a) for a in args))
    before = cpu_totals()
    subprocess.run([PY, *map(str, args), "--out", str(out)], cwd=REPO, check=True)
    result = json.loads(out.read_text())
    result["steal_pct"] = steal_pct(before, cpu_totals())
    return result


def bench_service(quick: bool, configs: list, stamp: str) -> dict:
    results: dict[str, Any] = {}
    for index, (name, batch, delay_ms, concurrencies) in enumerate(configs):
        if quick:
            if index > 0:
                continue
            concurrencies = QUICK_CONCURRENCIES
        port = free_port()
        settings = {
            "SERVE_MODELS_DIR": str(MODELS_DIR),
            "SERVE_HOST": "127.0.0.1",
            "SERVE_PORT": str(port),
            "SERVE_PROVIDERS": "cpu",
            "SERVE_WATCH": "false",
            "SERVE_MAX_BATCH_SIZE": str(batch),
            "SERVE_MAX_QUEUE_DELAY_MS": str(delay_ms),
            "SERVE_REQUEST_TIMEOUT_S": "600",  # c=32 answers take ~20 s here; a 504 is no measurement
            "SERVE_MAX_QUEUE_SIZE": "256",
            "SERVE_LOG_LEVEL": "warning",
        }
        server = Server(
            f"service[{name}]",
            [PY, "-m", "service"],
            settings,
            port,
            RESULTS_DIR / f"{stamp}service-{name}.log",
        )
        try:
            ready_s = server.wait_ready()
            entry: dict[str, Any] = {
                "settings": {
                    k: v for k, v in settings.items() if k not in ("SERVE_PORT", "SERVE_MODELS_DIR")
                },
                "ready_s": round(ready_s, 1),
                "by_concurrency": {},
            }
            durations = QUICK_DURATIONS if quick else (FULL_DURATIONS if index == 0 else EXTRA_DURATIONS)
            for c in concurrencies:
                out = RESULTS_DIR / f"{stamp}service-{name}-c{c}.json"
                entry["by_concurrency"][str(c)] = load(server, c, durations, out, MODEL_NAME)
            results[name] = entry
        finally:
            server.stop()
    return results


def bench_naive(quick: bool, configs: list, stamp: str) -> dict:
    results: dict[str, Any] = {}
    for index, (handler, concurrencies) in enumerate(configs):
        if quick:
            if index > 0:
                continue
            concurrencies = QUICK_CONCURRENCIES
        port = free_port()
        command = [PY, "bench/naive_server.py", "--port", str(port), "--handler", handler]
        server = Server(f"naive[{handler}]", command, {}, port, RESULTS_DIR / f"{stamp}naive-{handler}.log")
        try:
            entry: dict[str, Any] = {"handler": handler, "ready_s": round(server.wait_ready(600), 1)}
            entry["torch_threads"] = httpx.get(server.url + "/readyz").json()["threads"]
            entry["by_concurrency"] = {}
            durations = QUICK_DURATIONS if quick else (FULL_DURATIONS if index == 0 else EXTRA_DURATIONS)
            for c in concurrencies:
                out = RESULTS_DIR / f"{stamp}naive-{handler}-c{c}.json"
                entry["by_concurrency"][str(c)] = load(server, c, durations, out, None)
            results[handler] = entry
        finally:
            server.stop()
    return results


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def derive(results: dict) -> dict:
    """The issue's target ratios from the measured figures."""
    raw = results["raw_ort"]
    best_crops = raw["best"]["crops_per_s"]
    service = results["service"][results["headline_config"]]["by_concurrency"]
    naive_all = results["naive"]
    per_c = {}
    for c, s in service.items():
        row: dict[str, Any] = {
            "service_images_per_s": s["images_per_s"],
            "service_crops_per_s": round(s["images_per_s"] * 10, 3),
            "service_vs_raw": ratio(s["images_per_s"] * 10, best_crops),
        }
        naive_c = [
            n["by_concurrency"][c]["images_per_s"] for n in naive_all.values() if c in n["by_concurrency"]
        ]
        if naive_c:
            row["best_naive_images_per_s"] = max(naive_c)
            row["service_vs_best_naive"] = ratio(s["images_per_s"], max(naive_c))
        per_c[c] = row
    best_service = max(s["images_per_s"] for s in service.values())
    best_naive = max(n["images_per_s"] for v in naive_all.values() for n in v["by_concurrency"].values())
    c1 = service.get("1")
    ten_ms = raw["ten_crop_batch_ms"]
    derived = {
        "raw_best_crops_per_s": best_crops,
        "raw_best_batch": raw["best"]["batch"],
        "raw_ten_crop_batch_ms": ten_ms,
        "per_concurrency": per_c,
        "service_best_images_per_s": best_service,
        "naive_best_images_per_s": best_naive,
        "service_vs_raw_best": ratio(best_service * 10, best_crops),
        "service_vs_naive_best": ratio(best_service, best_naive),
        "preprocess_4000x3000_ms": results["preprocess"]["4000x3000"]["service"]["median_ms"],
        "preprocess_640x480_ms": results["preprocess"]["640x480"]["service"]["median_ms"],
    }
    if c1 and ten_ms:
        derived["c1_latency_beyond_inference_ms"] = round(c1["latency_ms"]["p50"] - ten_ms, 1)
        derived["c1_server_timings"] = c1["server_timings"]
    derived["targets"] = {
        "service >= 0.85 x raw capacity": [
            derived["service_vs_raw_best"],
            0.85,
            derived["service_vs_raw_best"] >= 0.85,
        ],
        "service >= 1.5 x naive": [
            derived["service_vs_naive_best"],
            1.5,
            derived["service_vs_naive_best"] >= 1.5,
        ],
        "4000x3000 preprocess <= 25 ms": [
            derived["preprocess_4000x3000_ms"],
            25.0,
            derived["preprocess_4000x3000_ms"] <= 25.0,
        ],
    }
    if "c1_latency_beyond_inference_ms" in derived:
        beyond = derived["c1_latency_beyond_inference_ms"]
        derived["targets"]["c=1: p50 latency - raw 10-crop batch <= 5 ms"] = [beyond, 5.0, beyond <= 5.0]
        own = derived["c1_server_timings"].get("beyond_inference_ms_p50")
        if own is not None:
            derived["targets"]["c=1: p50 of (latency - own batch's inference) <= 5 ms"] = [
                own,
                5.0,
                own <= 5.0,
            ]
    return derived


def load_row(server: str, label: str, concurrency: str, r: dict, best_crops: float) -> str:
    lat = r["latency_ms"]
    images = r["images_per_s"]
    cells = [
        server,
        label,
        concurrency,
        f"{images:.3f}",
        f"{images * 10:.2f}",
        f"{images * 10 / best_crops:.2f}",
        f"{lat['p50']:.0f}",
        f"{lat['p95']:.0f}",
        f"{lat['p99']:.0f}",
        f"{r['completed']} ({r['errors']} errors)",
        f"{r['images_per_s_little']:.3f}",
        f"{r['server_cpu_cores']:.2f}",
        f"{r['steal_pct']:.0f}" if "steal_pct" in r else "-",
    ]
    return "| " + " | ".join(cells) + " |"


def table(results: dict) -> str:
    """The Markdown table written into bench/README.md."""
    m, d = results["machine"], results["derived"]
    raw = results["raw_ort"]
    lines = [
        f"Measured {m['date_utc']} on **{m['cpu']}, {m['cores']} cores**, {m['memory_gib']} GiB; "
        f"Python {m['python']}, onnxruntime {m['versions']['onnxruntime']}, torch {m['versions']['torch']}. "
        f"Model: ResNet-50, random weights, 10-crop (224 from 256). Load average at start: "
        + ", ".join(f"{x:.2f}" for x in results["contention"]["load_average"])
        + ("; **a training job was running (contended)**" if results["contention"]["training_job"] else "")
        + ". The steal % column is the CPU time the hypervisor gave to other guests during each phase"
        + ".",
        "",
        "**Raw ONNX Runtime capacity** (CPU provider, the service's session options, one process, no server; "
        f"hypervisor steal during it: {raw.get('steal_pct', '-')} %)",
        "",
        "| batch (crops) | " + " | ".join(str(r["batch"]) for r in raw["by_batch"]) + " |",
        "|---" * (len(raw["by_batch"]) + 1) + "|",
        "| ms / run | " + " | ".join(f"{r['median_ms']:.0f}" for r in raw["by_batch"]) + " |",
        "| crops/s | " + " | ".join(f"{r['crops_per_s']:.2f}" for r in raw["by_batch"]) + " |",
        "",
        "**End to end, 10-crop, real JPEG photos, closed loop** (images/s; latency in ms; "
        "crops/s = images/s x 10)",
        "",
        "| server | settings | concurrency | images/s | crops/s | vs raw best | p50 | p95 | p99 | answers | "
        "c / mean latency | server CPU cores | steal % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = d["raw_best_crops_per_s"]
    for name, entry in results["service"].items():
        s = entry["settings"]
        label = f"batch {s['SERVE_MAX_BATCH_SIZE']} rows, delay {s['SERVE_MAX_QUEUE_DELAY_MS']} ms"
        for c, r in entry["by_concurrency"].items():
            lines.append(load_row(f"service ({name})", label, c, r, best))
    for handler, entry in results["naive"].items():
        label = f"{handler} handler, torch threads {entry['torch_threads']}"
        for c, r in entry["by_concurrency"].items():
            lines.append(load_row(f"naive ({handler})", label, c, r, best))
    pre = results["preprocess"]
    lines += [
        "",
        "**Preprocessing** (one thread, median ms per image: decode + resize + 10 crops)",
        "",
        "| JPEG | bytes | service `preprocess` | of which decode | of which resize + crops | "
        "naive torchvision |",
        "|---|---|---|---|---|---|",
    ]
    for label, p in pre.items():
        naive = p.get("naive_torchvision", {}).get("median_ms")
        lines.append(
            f"| {label} | {p['jpeg_bytes']} | {p['service']['median_ms']:.2f} | "
            f"{p['decode']['median_ms']:.2f} | {p['crops']['median_ms']:.2f} | "
            f"{naive if naive is None else f'{naive:.1f}'} |"
        )
    c1 = results["service"][results["headline_config"]]["by_concurrency"].get("1")
    if c1:
        st = c1["server_timings"]
        lines += [
            "",
            f"**Concurrency 1 breakdown** (service, {results['headline_config']} settings, medians in ms): "
            f"client latency p50 {c1['latency_ms']['p50']:.1f} = raw ORT 10-crop batch "
            f"{d['raw_ten_crop_batch_ms']:.1f} + {d['c1_latency_beyond_inference_ms']:.1f} beyond inference. "
            f"Server's own timings: decode {st.get('decode_ms_p50')}, queue {st.get('queue_ms_p50')}, "
            f"inference {st.get('inference_ms_p50')}, total {st.get('total_ms_p50')}; outside the server's "
            f"total (HTTP, multipart, JSON, client) {st.get('outside_total_ms_p50')}. "
            "Per request, latency minus the session run of its own batch: p50 "
            f"{st.get('beyond_inference_ms_p50')} (immune to drift between the raw and the "
            "service phases, such as hypervisor steal).",
        ]
    lines += ["", "**Targets**", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for name, (value, goal, met) in d["targets"].items():
        lines.append(f"| {name} | {value} | {goal} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


def write_readme(text: str, start: str = START, end: str = END) -> None:
    """Replace what is between the ``start`` and ``end`` markers of ``bench/README.md`` with ``text``."""
    content = README.read_text() if README.is_file() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in content:
        content += f"\n{start}\n{end}\n"
    head, rest = content.split(start, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    README.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: short phases, no README update")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results.json; quick: .work)")
    args = parser.parse_args()
    stamp = "quick-" if args.quick else ""
    out = args.out or (RESULTS_DIR / "quick.json" if args.quick else RESULTS_JSON)
    started = time.perf_counter()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {"quick": args.quick, "contention": contention()}
    if results["contention"]["training_job"]:
        log(f"WARNING: a training job is running; figures are contended: {results['contention']}")
    log("model + images")
    subprocess.run([PY, "bench/make_model.py"], cwd=REPO, check=True, capture_output=True)
    prepare_images()
    results["images"] = describe_images()
    results["machine"] = machine()

    raw_args = ["bench/raw_ort.py"] + (
        ["--seconds", "1", "--min-runs", "2", "--batch-sizes", "1,10,32"] if args.quick else []
    )
    results["raw_ort"] = run_step(raw_args, RESULTS_DIR / f"{stamp}raw_ort.json")
    pre_args = ["bench/preprocess_bench.py"] + (["--runs", "10"] if args.quick else ["--runs", "60"])
    results["preprocess"] = run_step(pre_args, RESULTS_DIR / f"{stamp}preprocess.json")

    results["headline_config"] = SERVICE_CONFIGS[0][0]
    results["service"] = bench_service(args.quick, SERVICE_CONFIGS, stamp)
    results["naive"] = {} if args.skip_naive else bench_naive(args.quick, NAIVE_CONFIGS, stamp)
    results["contention_after"] = contention()
    results["wall_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if results["naive"]:
        results["derived"] = derive(results)
        out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out} ({results['wall_s']:.0f} s)")
    if "derived" in results:
        text = table(results)
        print(text)
        if not args.quick:
            write_readme(text)
            log(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
