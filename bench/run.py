"""Run every benchmark of ``bench/``; write ``bench/results.json`` and the tables of ``bench/README.md``.

    python bench/run.py            # the real run, about 50 minutes on a 2-core CPU
    python bench/run.py --quick    # smoke run (~10 minutes); writes bench/.work/results/quick.json only

Steps, each in its own process, one after the other on an otherwise idle machine:
1. the random-weight ResNet-50 and its INT8 twin (``make_model.py``), the JPEG photos (``common.py``);
2. raw ONNX Runtime capacity at several batch sizes, FP32 and INT8 (``raw_ort.py``), and the session
   options one at a time (``ort_options.py``);
3. preprocessing ms per image for a 640x480 and a 4000x3000 JPEG (``preprocess_bench.py``);
4. the service (``python -m service``) under closed-loop load from ``loadgen.py`` at concurrency 1, 8, 32:
   FP32 and INT8 10-crop, FP32 1-crop, and without a queue delay;
5. the naive baseline (``naive_server.py``) under the same load, same model weights and photos;
6. the peers, each in its own virtualenv under ``bench/.work`` and started as its users start it:
   TorchServe (``peer_torchserve.py``: a 10-crop handler with its own batching, and its stock
   ``image_classifier`` at 1 crop) and Triton (``peer_triton.py``: the same ONNX files bound with PyTriton
   behind Triton's dynamic batcher, preprocessing in the bound function or in the client).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from common import (
    BENCH,
    INT8_MODEL_NAME,
    INT8_MODEL_PATH,
    MODEL_NAME,
    MODEL_PATH,
    MODELS_DIR,
    REPO,
    RESULTS_DIR,
    SIZES,
    cpu_totals,
    describe_images,
    machine,
    prepare_images,
    steal_pct,
)
from harness import PY, Server, free_port, load, log
from peer_torchserve import bench_torchserve
from peer_triton import bench_triton

README = BENCH / "README.md"
RESULTS_JSON = BENCH / "results.json"
START, END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass(frozen=True)
class ServiceConfig:
    """One service configuration measured: which model, crops per image, batching, client counts."""

    name: str
    model: str
    crops: int
    max_batch_size: int  # rows
    max_queue_delay_ms: float
    concurrencies: tuple[int, ...]
    protocol: str = "service"  # loadgen.py's: "service" (POST /classify) or "service-grpc" (ModelInfer)


# The first is the headline: the shipped default settings on the FP32 model.
SERVICE_CONFIGS = [
    ServiceConfig("default", MODEL_NAME, 10, 64, 5.0, (1, 8, 32)),
    ServiceConfig("int8", INT8_MODEL_NAME, 10, 64, 5.0, (1, 8, 32)),
    ServiceConfig("1-crop", MODEL_NAME, 1, 64, 5.0, (1, 8, 32)),
    ServiceConfig("delay0", MODEL_NAME, 10, 64, 0.0, (1, 8)),
    ServiceConfig("batch20", MODEL_NAME, 10, 20, 5.0, (8,)),
    ServiceConfig("grpc", MODEL_NAME, 10, 64, 5.0, (1, 8, 32), protocol="service-grpc"),
]
NAIVE_CONFIGS: list[tuple[str, tuple[int, ...]]] = [("sync", (1, 8, 32))]
TRITON_CONCURRENCIES: dict[str, tuple[int, ...]] = {"bytes": (1, 8, 32), "tensor": (8,)}
PEER_CONCURRENCIES = (1, 8, 32)
# (warm-up s, window s) per concurrency.
# Clients start spread over the first third of the warm-up; c=32 answers take ~15 s here, so its warm-up
# covers the ramp and a full round of answers.
FULL_DURATIONS = {1: (8.0, 40.0), 8: (15.0, 45.0), 32: (40.0, 50.0)}
QUICK_DURATIONS = {1: (3.0, 8.0), 8: (8.0, 12.0), 32: (12.0, 12.0)}
# --quick: every service config, the naive server's first, the peers' short tuning, at these client counts
QUICK_CONCURRENCIES: tuple[int, ...] = (1, 8)


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


def start_service(
    config: ServiceConfig, log_path: Path, tree: Path = REPO, threads: int = 0
) -> tuple[Server, dict[str, str]]:
    """``python -m service`` with ``config``'s settings, from ``tree`` (another checkout: its own
    ``service`` package), ``threads`` ONNX Runtime threads per session (0: its default); the server and the
    ``SERVE_*`` settings it runs with."""
    port = free_port()
    grpc = config.protocol == "service-grpc"
    settings = {
        "SERVE_MODELS_DIR": str(MODELS_DIR),
        "SERVE_HOST": "127.0.0.1",
        "SERVE_PORT": str(port),
        "SERVE_GRPC_PORT": str(free_port()) if grpc else "0",
        "SERVE_PROVIDERS": "cpu",
        "SERVE_WATCH": "false",
        "SERVE_MAX_BATCH_SIZE": str(config.max_batch_size),
        "SERVE_MAX_QUEUE_DELAY_MS": str(config.max_queue_delay_ms),
        "SERVE_REQUEST_TIMEOUT_S": "600",  # c=32 answers take ~15 s here; a 504 is no measurement
        "SERVE_MAX_QUEUE_SIZE": "256",
        "SERVE_LOG_LEVEL": "warning",
        "SERVE_INTRA_OP_THREADS": str(threads),
    }
    env = settings if tree == REPO else {**settings, "PYTHONPATH": str(tree)}  # ahead of the editable install
    server = Server(
        f"service[{config.name}]",
        [PY, "-m", "service"],
        env,
        port,
        log_path,
        cwd=tree,
        ready_path=f"/v2/models/{config.model}/ready",  # /readyz answers once any model is ready
    )
    return server, settings


def bench_service(quick: bool, configs: list[ServiceConfig], stamp: str, threads: int = 0) -> dict:
    results: dict[str, Any] = {}
    for config in configs:
        log_path = RESULTS_DIR / f"{stamp}service-{config.name}.log"
        server, settings = start_service(config, log_path, threads=threads)
        try:
            ready_s = server.wait_ready()
            entry: dict[str, Any] = {
                "config": asdict(config),
                "settings": {
                    k: v for k, v in settings.items() if k not in ("SERVE_PORT", "SERVE_MODELS_DIR")
                },
                "ready_s": round(ready_s, 1),
                "by_concurrency": {},
            }
            durations = QUICK_DURATIONS if quick else FULL_DURATIONS
            grpc_port = settings["SERVE_GRPC_PORT"]
            url = f"http://127.0.0.1:{grpc_port}" if grpc_port != "0" else None  # the gRPC target
            for c in QUICK_CONCURRENCIES if quick else config.concurrencies:
                out = RESULTS_DIR / f"{stamp}service-{config.name}-c{c}.json"
                entry["by_concurrency"][str(c)] = load(
                    server,
                    c,
                    durations,
                    out,
                    config.model,
                    protocol=config.protocol,
                    crops=config.crops,
                    url=url,
                )
            results[config.name] = entry
        finally:
            server.stop()
    return results


def bench_naive(quick: bool, configs: list, stamp: str) -> dict:
    results: dict[str, Any] = {}
    for handler, concurrencies in configs[:1] if quick else configs:
        port = free_port()
        command = [PY, "bench/naive_server.py", "--port", str(port), "--handler", handler]
        server = Server(f"naive[{handler}]", command, {}, port, RESULTS_DIR / f"{stamp}naive-{handler}.log")
        try:
            entry: dict[str, Any] = {"handler": handler, "ready_s": round(server.wait_ready(600), 1)}
            entry["torch_threads"] = httpx.get(server.url + "/readyz").json()["threads"]
            entry["by_concurrency"] = {}
            durations = QUICK_DURATIONS if quick else FULL_DURATIONS
            for c in QUICK_CONCURRENCIES if quick else concurrencies:
                out = RESULTS_DIR / f"{stamp}naive-{handler}-c{c}.json"
                entry["by_concurrency"][str(c)] = load(server, c, durations, out, None)
            results[handler] = entry
        finally:
            server.stop()
    return results


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def rate(by_concurrency: dict, c: str) -> float | None:
    found = by_concurrency.get(c)
    return found["images_per_s"] if found else None


def peers(results: dict) -> dict[str, dict[str, dict]]:
    """Service configuration -> peer name -> the peer's matching phases by concurrency: 10-crop FP32 and
    INT8 (TorchServe serves FP32 only), and 1-crop against TorchServe's stock handler."""
    found: dict[str, dict[str, dict]] = {"fp32": {}, "int8": {}, "1-crop": {}}
    torchserve = results.get("torchserve", {}).get("configs", {})
    if "stock_1crop" in torchserve:
        found["1-crop"]["TorchServe (stock image_classifier)"] = torchserve["stock_1crop"]["by_concurrency"]
    if "ten_crop" in torchserve:
        found["fp32"]["TorchServe"] = found["int8"]["TorchServe (FP32)"] = torchserve["ten_crop"][
            "by_concurrency"
        ]
    for name, entry in results.get("triton", {}).get("configs", {}).items():
        precision, variant = name.split("-", 1)
        found[precision][f"Triton ({variant})"] = entry["by_concurrency"]
    if results.get("naive"):
        found["fp32"]["naive"] = results["naive"]["sync"]["by_concurrency"]
    return found


def target(value: float | None, goal: float, at_most: bool = False) -> list:
    met = value is not None and (value <= goal if at_most else value >= goal)
    return [value, goal, met]


def derive(results: dict) -> dict:
    """The issue's target ratios from the measured figures; every ratio is between phases of this run."""
    best_crops = results["raw_ort"]["best"]["crops_per_s"]
    service = {name: entry["by_concurrency"] for name, entry in results["service"].items()}
    fp32, int8 = service["default"], service.get("int8", {})
    found = peers(results)
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for precision, ours in (("fp32", fp32), ("int8", int8), ("1-crop", service.get("1-crop", {}))):
        for peer, theirs in found[precision].items():
            for c in ours:
                mine, other = rate(ours, c), rate(theirs, c)
                if mine is not None and other is not None:
                    ratios.setdefault(precision, {}).setdefault(peer, {})[c] = ratio(mine, other)
    best_fp32 = max(r["images_per_s"] for r in fp32.values())
    best_int8 = max((r["images_per_s"] for r in int8.values()), default=None)
    naive_best = max((r["images_per_s"] for r in found["fp32"].get("naive", {}).values()), default=None)
    derived: dict[str, Any] = {
        "raw_best_crops_per_s": best_crops,
        "raw_best_batch": results["raw_ort"]["best"]["batch"],
        "raw_int8_best_crops_per_s": results.get("raw_ort_int8", {}).get("best", {}).get("crops_per_s"),
        "service_best_images_per_s": best_fp32,
        "service_int8_best_images_per_s": best_int8,
        "ratios": ratios,
        "preprocess_4000x3000_ms": results["preprocess"]["4000x3000"]["service"]["median_ms"],
        "preprocess_640x480_ms": results["preprocess"]["640x480"]["service"]["median_ms"],
    }

    def at8(precision: str, prefix: str) -> float | None:
        values = [v["8"] for k, v in ratios.get(precision, {}).items() if k.startswith(prefix) and "8" in v]
        return min(values) if values else None  # against the best variant of that peer

    targets: dict[str, list] = {
        "service FP32 >= 0.85 x raw FP32 capacity": target(ratio(best_fp32 * 10, best_crops), 0.85),
        "service INT8 >= 1.8 x raw FP32 capacity": target(
            ratio(best_int8 * 10, best_crops) if best_int8 else None, 1.8
        ),
        "service FP32 >= 1.3 x TorchServe at c=8": target(at8("fp32", "TorchServe"), 1.3),
        "service FP32 >= 1.0 x Triton at c=8 (best variant)": target(at8("fp32", "Triton"), 1.0),
        "service INT8 > TorchServe at c=8": target(at8("int8", "TorchServe"), 1.0),
        "service INT8 > Triton INT8 at c=8 (best variant)": target(at8("int8", "Triton"), 1.0),
        "service >= 1.5 x naive": target(ratio(best_fp32, naive_best) if naive_best else None, 1.5),
        "4000x3000 preprocess <= 25 ms": target(derived["preprocess_4000x3000_ms"], 25.0, at_most=True),
    }
    for name, phases in (("FP32", fp32), ("INT8", int8)):
        own = phases.get("1", {}).get("server_timings", {}).get("beyond_inference_ms_p50")
        targets[f"c=1 {name}: p50 of (latency - own batch's inference) <= 5 ms"] = target(
            own, 5.0, at_most=True
        )
    derived["targets"] = {k: v for k, v in targets.items() if v[0] is not None}
    return derived


def load_row(server: str, model: str, label: str, concurrency: str, r: dict, crops: int, best: float) -> str:
    lat = r["latency_ms"]
    images = r["images_per_s"]
    cells = [
        server,
        model,
        label,
        concurrency,
        f"{images:.3f}",
        f"{images * crops / best:.2f}",
        f"{lat['p50']:.0f}",
        f"{lat['p95']:.0f}",
        f"{lat['p99']:.0f}",
        f"{r['completed']} ({r['errors']} errors)",
        f"{r['server_cpu_cores']:.2f}",
        f"{r['steal_pct']:.0f}" if "steal_pct" in r else "-",
    ]
    return "| " + " | ".join(cells) + " |"


def raw_rows(label: str, raw: dict) -> list[str]:
    return [
        f"| {label} ms / run | " + " | ".join(f"{r['median_ms']:.0f}" for r in raw["by_batch"]) + " |",
        f"| {label} crops/s | " + " | ".join(f"{r['crops_per_s']:.2f}" for r in raw["by_batch"]) + " |",
    ]


def load_rows(results: dict, best: float) -> list[str]:
    """One row per measured phase of every server."""
    rows = []
    for name, entry in results["service"].items():
        config = entry["config"]
        label = (
            f"{config['crops']}-crop, batch {config['max_batch_size']} rows, "
            f"delay {config['max_queue_delay_ms']} ms"
            + (", gRPC ModelInfer" if config.get("protocol") == "service-grpc" else "")
        )
        for c, r in entry["by_concurrency"].items():
            rows.append(load_row(f"service ({name})", config["model"], label, c, r, config["crops"], best))
    for name, entry in results.get("torchserve", {}).get("configs", {}).items():
        s = entry["settings"]
        crops = 1 if name == "stock_1crop" else 10
        label = f"{crops}-crop, " + ", ".join(f"{k} {v}" for k, v in s.items() if k != "model_name")
        for c, r in entry["by_concurrency"].items():
            rows.append(load_row(f"TorchServe ({name})", MODEL_NAME, label, c, r, crops, best))
    for name, entry in results.get("triton", {}).get("configs", {}).items():
        s = entry["settings"]
        label = (
            f"10-crop, preprocessing {s['preprocessing'].split(' (')[0]}, "
            f"max batch {s.get('max_batch_size')} ({s['batch_unit']}), "
            f"queue delay {s.get('max_queue_delay_us')} us"
        )
        model = Path(s["model_file"]).stem
        for c, r in entry["by_concurrency"].items():
            rows.append(load_row(f"Triton ({name})", model, label, c, r, 10, best))
    for handler, entry in results.get("naive", {}).items():
        label = f"10-crop, {handler} handler, torch threads {entry['torch_threads']}"
        for c, r in entry["by_concurrency"].items():
            rows.append(load_row(f"naive ({handler})", MODEL_NAME, label, c, r, 10, best))
    return rows


def software(results: dict) -> str:
    """The versions each server ran with."""
    m = results["machine"]["versions"]
    parts = [f"service: onnxruntime {m['onnxruntime']}", f"naive: torch {m['torch']}"]
    ts = results.get("torchserve", {}).get("versions", {})
    if ts:
        parts.append(f"TorchServe {ts.get('torchserve')} (torch {ts.get('torch')})")
    triton = results.get("triton", {}).get("versions", {})
    if triton:
        parts.append(
            f"Triton {triton.get('tritonserver')} (nvidia-pytriton {triton.get('nvidia-pytriton')}, "
            f"onnxruntime {triton.get('onnxruntime-gpu')})"
        )
    return "; ".join(parts)


def table(results: dict) -> str:
    """The Markdown tables written into bench/README.md."""
    m, d = results["machine"], results["derived"]
    raw = results["raw_ort"]
    lines = [
        f"Measured {m['date_utc']} on **{m['cpu']}, {m['cores']} cores**, {m['memory_gib']} GiB; "
        f"Python {m['python']}; {software(results)}. "
        + "Models: ResNet-50, random weights (the same weights everywhere), FP32 and its INT8 twin. "
        "Load average at start: "
        + ", ".join(f"{x:.2f}" for x in results["contention"]["load_average"])
        + ("; **a training job was running (contended)**" if results["contention"]["training_job"] else "")
        + ". The steal % column is the CPU time the hypervisor gave to other guests during each phase.",
        "",
        "**Raw ONNX Runtime capacity** (CPU provider, the service's session options, one process, no server)",
        "",
        "| batch (crops) | " + " | ".join(str(r["batch"]) for r in raw["by_batch"]) + " |",
        "|---" * (len(raw["by_batch"]) + 1) + "|",
        *raw_rows("FP32", raw),
        *(raw_rows("INT8", results["raw_ort_int8"]) if "raw_ort_int8" in results else []),
    ]
    options = results.get("ort_options")
    if options:
        lines += [
            "",
            "**ONNX Runtime options** (raw crops/s, one option changed from the service's session; "
            "ratio to the service's in brackets)",
            "",
            "| variant | FP32 10 rows | FP32 60 rows | INT8 10 rows | INT8 60 rows |",
            "|---|---|---|---|---|",
        ]
        for name, by_precision in options["crops_per_s"].items():
            cells = [
                f"{by_precision[p][b]:.2f} ({options['vs_service'][name][p][b]:.2f})"
                for p in ("fp32", "int8")
                for b in ("10", "60")
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**End to end, real JPEG photos, closed loop** (images/s; latency in ms; vs raw: images/s x crops / "
        "raw FP32 best crops/s)",
        "",
        "| server | model | settings | concurrency | images/s | vs raw FP32 | p50 | p95 | p99 | answers | "
        "server CPU cores | steal % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *load_rows(results, d["raw_best_crops_per_s"]),
    ]
    if d["ratios"]:
        lines += [
            "",
            "**Service / peer, images/s at each concurrency**",
            "",
            "| model | peer | c=1 | c=8 | c=32 |",
            "|---|---|---|---|---|",
        ]
        for precision, by_peer in d["ratios"].items():
            for peer, by_c in by_peer.items():
                lines.append(
                    f"| {precision} | {peer} | "
                    + " | ".join(str(by_c.get(c, "-")) for c in ("1", "8", "32"))
                    + " |"
                )
    pre = results["preprocess"]
    lines += [
        "",
        "**Preprocessing** (one thread, median ms per image: decode + resize + 10 crops)",
        "",
        "| JPEG | bytes | service `preprocess` | of which decode | of which resize + crops | "
        "naive torchvision |",
        "|---|---|---|---|---|---|",
    ]
    for label in SIZES:
        p = pre[label]
        naive = p.get("naive_torchvision", {}).get("median_ms")
        lines.append(
            f"| {label} | {p['jpeg_bytes']} | {p['service']['median_ms']:.2f} | "
            f"{p['decode']['median_ms']:.2f} | {p['crops']['median_ms']:.2f} | "
            f"{naive if naive is None else f'{naive:.1f}'} |"
        )
    for name in ("default", "int8"):
        c1 = results["service"].get(name, {}).get("by_concurrency", {}).get("1")
        if c1:
            st = c1["server_timings"]
            lines += [
                "",
                f"**Concurrency 1, service ({name}), medians in ms, all from the same phase**: "
                f"client latency {c1['latency_ms']['p50']:.1f}; the server's own timings: "
                f"decode {st.get('decode_ms_p50')}, queue {st.get('queue_ms_p50')}, "
                f"inference {st.get('inference_ms_p50')}, total {st.get('total_ms_p50')}; "
                f"outside the server's total (HTTP, multipart, JSON, client) "
                f"{st.get('outside_total_ms_p50')}; per request, latency minus its own batch's session run: "
                f"{st.get('beyond_inference_ms_p50')}.",
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
    parser.add_argument("--skip-peers", action="store_true", help="no TorchServe, no Triton")
    parser.add_argument("--skip-options", action="store_true", help="no ONNX Runtime options sweep")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results.json; quick: .work)")
    parser.add_argument(
        "--configs",
        default=",".join(c.name for c in SERVICE_CONFIGS),
        help="service configurations to measure, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per session for the raw and service phases (0: its default); set it to "
        "the cores of a taskset slice, since ONNX Runtime's default counts the machine's cores",
    )
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="print the tables of a results file; no run"
    )
    args = parser.parse_args()
    if args.render:
        rendered = json.loads(args.render.read_text())
        rendered["derived"] = derive(rendered)
        print(table(rendered))
        return 0
    wanted = args.configs.split(",")
    configs = [c for c in SERVICE_CONFIGS if c.name in wanted]
    if len(configs) != len(wanted):
        known = [c.name for c in SERVICE_CONFIGS]
        parser.error(f"--configs: unknown name in {args.configs!r}; known: {known}")
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

    raw_args = ["bench/raw_ort.py", "--threads", str(args.threads)] + (
        ["--seconds", "1", "--min-runs", "2", "--batch-sizes", "1,10,32"] if args.quick else []
    )
    results["raw_ort"] = run_step(raw_args, RESULTS_DIR / f"{stamp}raw_ort.json")
    int8_args = [*raw_args, "--model", str(INT8_MODEL_PATH)]
    results["raw_ort_int8"] = run_step(int8_args, RESULTS_DIR / f"{stamp}raw_ort_int8.json")
    if not (args.quick or args.skip_options):
        results["ort_options"] = run_step(["bench/ort_options.py"], RESULTS_DIR / "ort_options.json")
    pre_args = ["bench/preprocess_bench.py"] + (["--runs", "10"] if args.quick else ["--runs", "60"])
    results["preprocess"] = run_step(pre_args, RESULTS_DIR / f"{stamp}preprocess.json")

    results["headline_config"] = SERVICE_CONFIGS[0].name
    results["service"] = bench_service(args.quick, configs, stamp, args.threads)
    results["naive"] = {} if args.skip_naive else bench_naive(args.quick, NAIVE_CONFIGS, stamp)
    if not args.skip_peers:
        durations = QUICK_DURATIONS if args.quick else FULL_DURATIONS
        peer_c = QUICK_CONCURRENCIES if args.quick else PEER_CONCURRENCIES
        results["torchserve"] = bench_torchserve(args.quick, stamp, durations, peer_c)
        triton_c = (
            {v: QUICK_CONCURRENCIES for v in TRITON_CONCURRENCIES} if args.quick else TRITON_CONCURRENCIES
        )
        models = {"fp32": MODEL_PATH, "int8": INT8_MODEL_PATH}
        results["triton"] = bench_triton(False, stamp, durations, triton_c, models)  # both models, even quick
    results["contention_after"] = contention()
    results["wall_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if "default" in results["service"]:
        results["derived"] = derive(results)
        out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out} ({results['wall_s']:.0f} s)")
    if "derived" in results:
        text = table(results)
        print(text)
        whole = not (args.quick or args.skip_naive or args.skip_peers or args.skip_options)
        if whole and args.out is None and len(configs) == len(SERVICE_CONFIGS):  # a whole run's tables only
            write_readme(text)
            log(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
