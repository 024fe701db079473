"""Triton Inference Server as a benchmark peer: the same .onnx file in ONNX Runtime, bound with PyTriton.

PyTriton 0.7.0 ships a ``tritonserver`` binary that runs on a CPU; installed into the project's ``.venv`` it
would downgrade numpy and protobuf there, so it lives in a virtualenv of its own (``venvs.ensure_venv``,
``bench/.work/venv-triton``). ``triton_server.py`` runs in it and binds two models per ONNX file, both
behind Triton's dynamic batcher with the service's queue delay (5 ms) and batch limit (64 rows):

- ``<stem>-bytes``: the client sends the JPEG (BYTES [1]); the bound function decodes and cuts the 10
  crops of every photo of the batch, runs the session on all their rows at once and answers the softmax
  mean per photo. Its batch unit is a request (a photo), so its limit is 6 photos = 60 rows.
- ``<stem>-tensor``: the client decodes and cuts the crops (:func:`send_tensor`, in a worker thread) and
  sends uint8 [10, 224, 224, 3]; Triton batches rows (limit 64, so 6 photos of 10 rows); the client
  averages the softmax of its 10 rows of logits.

Requests are KServe v2 ``POST /v2/models/<name>/infer`` with Triton's binary tensor data extension (a JSON
header, then the raw tensors; outputs come back the same way). A sender checks the answer it parses; a
malformed one becomes a 502 response whose text says what was wrong, so the load generator counts it as
an error and keeps the reason.

    .venv/bin/python bench/peer_triton.py --quick                 # c=1 and 8, 5 s warm-up + 15 s each
    .venv/bin/python bench/peer_triton.py --model bench/.work/models/resnet50-random-int8.onnx
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import CROP_SIZE, MODEL_PATH, RESULTS_DIR, WORK, prepare_images, write_json
from harness import Server, free_port, load, log
from triton_server import softmax, ten_crops
from venvs import ensure_venv, venv_versions

VENV = WORK / "venv-triton"
TRITON_WORK = WORK / "triton"  # PyTriton's workspaces (PYTRITON_HOME) and the session settings
SERVER_SCRIPT = Path(__file__).resolve().parent / "triton_server.py"
CROPS = 10
MAX_BATCH_ROWS = 64  # the service's default max batch (rows)
MAX_QUEUE_DELAY_US = 5000  # the service's default queue delay (5 ms)
HEADER = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8, "INT64": np.int64}
QUICK_DURATIONS = (5.0, 15.0)  # warm-up s, window s of every concurrency in a standalone --quick run
VARIANTS = {
    "bytes": "in the bound function (PIL decode + resize + 10 crops per photo, serially, before the run)",
    "tensor": "in the client (PIL decode + resize + 10 crops in a worker thread of the load generator)",
}


VERSIONED = ("nvidia-pytriton", "onnxruntime-gpu", "numpy", "pillow", "tritonclient")


def requirements() -> list[str]:
    """PyTriton, and the onnxruntime-gpu build the service uses (not the plain onnxruntime package)."""
    return ["nvidia-pytriton==0.7.0", f"onnxruntime-gpu=={version('onnxruntime-gpu')}", "pillow", "numpy"]


# ---------------------------------------------------------------- the client side (loadgen's senders)


def infer_body(name: str, datatype: str, shape: list[int], raw: bytes, output: str) -> tuple[bytes, int]:
    """A binary-extension request: JSON header + one input's raw bytes; the output asked for in binary."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + raw, len(header)


async def post_infer(
    http: httpx.AsyncClient, model: str, name: str, datatype: str, shape: list[int], raw: bytes, output: str
) -> httpx.Response:
    body, header_length = infer_body(name, datatype, shape, raw, output)
    return await http.post(
        f"/v2/models/{model}/infer",
        content=body,
        headers={HEADER: str(header_length), "Content-Type": "application/octet-stream"},
    )


def read_output(response: httpx.Response, output: str) -> np.ndarray:
    """The named output of a binary-extension (or plain JSON) answer; ValueError when it is malformed."""
    content = response.content
    length = int(response.headers.get(HEADER, len(content)))
    header = json.loads(content[:length])
    offset = length
    for item in header.get("outputs", []):
        size = int(item.get("parameters", {}).get("binary_data_size", 0))
        if item["name"] == output:
            dtype = DTYPES[item["datatype"]]
            if size:
                values = np.frombuffer(content[offset : offset + size], dtype=dtype)
            else:
                values = np.asarray(item["data"], dtype=dtype)
            return values.reshape(item["shape"])
        offset += size
    raise ValueError(f"no output {output!r} in the answer")


def checked(response: httpx.Response, output: str, per_photo: bool) -> httpx.Response:
    """``response`` if its output is a distribution over the classes (after the client's softmax mean
    of its rows when not ``per_photo``), else a 502 saying why (the load generator counts an error)."""
    if response.status_code != 200:
        return response
    try:
        values = read_output(response, output)
        if per_photo:
            if values.shape[0] != 1:
                raise ValueError(f"{output} shape {values.shape}, expected [1, classes]")
            probabilities = values[0]
        else:
            if values.shape[0] != CROPS:
                raise ValueError(f"{output} shape {values.shape}, expected [{CROPS}, classes]")
            probabilities = softmax(values.astype(np.float64)).mean(axis=0)
        total = float(probabilities.sum())
        if not np.isfinite(probabilities).all() or abs(total - 1.0) > 1e-3:
            raise ValueError(f"not a distribution (sum {total})")
    except (ValueError, KeyError, TypeError) as exc:
        return httpx.Response(502, text=f"malformed answer: {exc}", request=response.request)
    return response


def _crops(options: dict[str, str]) -> None:
    if options.get("crops", str(CROPS)) != str(CROPS):
        raise ValueError(f"the Triton peer serves {CROPS}-crop only, not crops={options['crops']}")


async def send_bytes(
    http: httpx.AsyncClient, name: str, data: bytes, options: dict[str, str]
) -> httpx.Response:
    """The JPEG as a BYTES [1, 1] tensor (4-byte little-endian length + bytes); [1, classes] back."""
    _crops(options)
    raw = struct.pack("<I", len(data)) + data
    response = await post_infer(http, options["model"], "image", "BYTES", [1, 1], raw, "probabilities")
    return checked(response, "probabilities", per_photo=True)


async def send_tensor(
    http: httpx.AsyncClient, name: str, data: bytes, options: dict[str, str]
) -> httpx.Response:
    """The client's 10 crops as uint8 [10, 224, 224, 3]; their logits back, softmax-averaged here."""
    _crops(options)
    rows = await asyncio.to_thread(ten_crops, data)  # CPU work: off the event loop the other clients share
    shape = [CROPS, CROP_SIZE, CROP_SIZE, 3]
    response = await post_infer(http, options["model"], "image", "UINT8", shape, rows.tobytes(), "logits")
    return checked(response, "logits", per_photo=False)


# ---------------------------------------------------------------- the runner


def model_settings(server: Server, model: str) -> dict[str, Any]:
    """What Triton really runs the bound model with (PyTriton fills in some of the config)."""
    config = httpx.get(f"{server.url}/v2/models/{model}/config", timeout=10).json()
    batching = config.get("dynamic_batching", {})
    return {
        "max_batch_size": config["max_batch_size"],
        "max_queue_delay_us": int(batching.get("max_queue_delay_microseconds", 0)),
        "preferred_batch_size": batching.get("preferred_batch_size"),
        "instances": sum(int(g.get("count", 1)) for g in config.get("instance_group", [])),
        "backend": config.get("backend"),
    }


def batch_counts(metrics_url: str, model: str) -> tuple[float, float]:
    """(batch items, executions) of ``model`` so far, from Triton's Prometheus metrics."""
    counts = {"nv_inference_count": 0.0, "nv_inference_exec_count": 0.0}
    for line in httpx.get(f"{metrics_url}/metrics", timeout=10).text.splitlines():
        name, _, rest = line.partition("{")
        if name in counts and f'model="{model}"' in rest:
            counts[name] += float(line.rsplit(" ", 1)[1])
    return counts["nv_inference_count"], counts["nv_inference_exec_count"]


def bench_triton(
    quick: bool,
    stamp: str,
    durations: dict[int, tuple[float, float]],
    concurrencies: dict[str, tuple[int, ...]],
    models: dict[str, Path],
) -> dict:
    """Each model (precision label -> ONNX path) in its own Triton server; each variant (``bytes``: the
    bound function preprocesses, ``tensor``: the client does) at its ``concurrencies``.

    ``quick``: the first model only (a smoke run).
    """
    python = ensure_venv(VENV, requirements())
    versions = venv_versions(python, VERSIONED)
    results: dict[str, Any] = {"versions": versions, "configs": {}}
    TRITON_WORK.mkdir(parents=True, exist_ok=True)
    for precision, path in list(models.items())[: 1 if quick else None]:
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        session_info = TRITON_WORK / f"{stamp}{precision}-session.json"
        session_info.unlink(missing_ok=True)
        command = [
            str(python), str(SERVER_SCRIPT), "--model", str(path),
            "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
            "--max-batch-rows", str(MAX_BATCH_ROWS), "--max-batch-images", str(MAX_BATCH_ROWS // CROPS),
            "--max-queue-delay-us", str(MAX_QUEUE_DELAY_US), "--info", str(session_info),
        ]  # fmt: skip
        server = Server(
            f"triton[{precision}]",
            command,
            {"PYTRITON_HOME": str(TRITON_WORK / "home")},
            http_port,
            RESULTS_DIR / f"{stamp}triton-{precision}.log",
            ready_path="/v2/health/ready",
        )
        try:
            ready_s = server.wait_ready()
            for variant in VARIANTS:  # PyTriton loads the models after the server is up
                server.ready_path = f"/v2/models/{path.stem}-{variant}/ready"
                ready_s += server.wait_ready()
            versions["tritonserver"] = httpx.get(f"{server.url}/v2", timeout=10).json()["version"]
            session = json.loads(session_info.read_text())
            for variant, where in VARIANTS.items():
                if not concurrencies.get(variant):
                    continue
                model = f"{path.stem}-{variant}"
                entry: dict[str, Any] = {
                    "settings": {
                        "model_file": str(path),
                        "model_name": model,
                        "preprocessing": where,
                        **model_settings(server, model),
                        "batch_unit": "photo (10 rows)" if variant == "bytes" else "row",
                        "ort": session,
                    },
                    "ready_s": round(ready_s, 1),
                    "by_concurrency": {},
                }
                for c in concurrencies.get(variant, ()):
                    out = RESULTS_DIR / f"{stamp}triton-{precision}-{variant}-c{c}.json"
                    items, runs = batch_counts(metrics_url, model)
                    result = load(server, c, durations, out, model, protocol=f"triton-{variant}")
                    items_after, runs_after = batch_counts(metrics_url, model)
                    # over the whole phase (warm-up and drain included), as Triton counts them
                    rows = (items_after - items) * (CROPS if variant == "bytes" else 1)
                    result["rows_per_session_run"] = round(rows / max(runs_after - runs, 1.0), 2)
                    entry["by_concurrency"][str(c)] = result
                results["configs"][f"{precision}-{variant}"] = entry
        finally:
            killed = server.stop()
        if killed:
            results.setdefault("killed_after_stop", {})[precision] = killed
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 s warm-up + 15 s per concurrency")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument("--model", type=Path, default=MODEL_PATH, help="ONNX file of the project's contract")
    parser.add_argument("--label", help="precision label (default: int8 if the file name says so, else fp32)")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default bench/.work/results/[quick-]triton.json)"
    )
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"{args.model} not found (python bench/make_model.py makes the default)")
    prepare_images()
    concurrencies = tuple(int(c) for c in args.concurrency.split(","))
    if args.quick:
        durations = dict.fromkeys(concurrencies, QUICK_DURATIONS)
    else:
        from run import FULL_DURATIONS

        durations = {c: FULL_DURATIONS.get(c, FULL_DURATIONS[8]) for c in concurrencies}
    label = args.label or ("int8" if "int8" in args.model.stem else "fp32")
    stamp = "quick-" if args.quick else ""
    per_variant = dict.fromkeys(VARIANTS, concurrencies)
    results = bench_triton(args.quick, stamp, durations, per_variant, {label: args.model.resolve()})
    out = args.out or RESULTS_DIR / f"{stamp}triton.json"
    write_json(out, results)
    log(f"wrote {out}; versions {results['versions']}")
    for name, entry in results["configs"].items():
        for c, result in entry["by_concurrency"].items():
            log(
                f"{name} c={c}: {result['images_per_s']:.3f} images/s, p50 {result['latency_ms']['p50']} ms, "
                f"{result['completed']} answers, {result['errors']} errors {result['error_samples']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
