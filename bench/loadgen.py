"""Closed-loop HTTP load generator, run as its own process (never inside the server it measures).

``--concurrency`` clients each send one ``POST /classify`` (multipart field ``image``, a real JPEG photo
taken round-robin) and send the next as soon as the answer arrives. Answers that complete during the
first ``--warmup`` seconds are discarded; the measurement window is the next ``--duration`` seconds.
Throughput is the successful answers completed inside the window divided by its length; latency
percentiles are over those same answers. After the window no new request starts and the ones in flight
are awaited (not counted), so the server is idle when the next phase starts.

``--explain`` adds ``explain=true`` to every ``/classify`` request (class activation maps; the summary's
``explain`` says so).

``--honour-retry-after CAP`` makes each client behave like a well-behaved one under overload: after a 503
carrying ``Retry-After`` it sleeps that many seconds (at most CAP) before its next request. The summary
counts the answers per status, the 503s that carried ``Retry-After``, and latency percentiles per status.

``--protocol`` says how one photo becomes one request: ``service`` (this project's ``/classify``) or a
peer's own protocol, whose sender lives beside that peer's runner (``PROTOCOLS``). A sender returns the
response; only the service's answers carry server timings.

Writes a JSON summary (``--out``) with the per-request records, and prints one line.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from common import IMAGES_DIR, load_images, median, percentile, write_json

TIMING_KEYS = ("decode_ms", "queue_ms", "inference_ms", "explain_ms", "total_ms")

# One request for one photo: (client, photo file name, photo bytes, options) -> the response.
Sender = Callable[[httpx.AsyncClient, str, bytes, dict[str, str]], Awaitable[httpx.Response]]


BOUNDARY = "resnet-serve-loadgen-5f0c9e2a"


def multipart_image(name: str, data: bytes) -> bytes:
    """The multipart/form-data body of ``curl -F image=@name``, built with one concatenation.

    httpx's own ``files=`` encoder streams the body in Python-level chunks, client CPU that would be counted
    as latency of the server under test (figures in bench/README.md; TorchServe's and Triton's senders post
    bytes prepared the same cheap way).
    """
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


async def send_service(
    http: httpx.AsyncClient, name: str, data: bytes, options: dict[str, str]
) -> httpx.Response:
    """``POST /classify`` with the photo as multipart field ``image`` (``options``: query parameters)."""
    return await http.post(
        "/classify",
        params=options,
        content=multipart_image(name, data),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


# protocol -> (module in bench/, sender function in it); "service" is send_service above
PROTOCOLS: dict[str, tuple[str, str]] = {
    "service": ("", "send_service"),
    "service-grpc": ("grpc_client", "send"),
    "torchserve": ("peer_torchserve", "send"),
    "triton-bytes": ("peer_triton", "send_bytes"),
    "triton-tensor": ("peer_triton", "send_tensor"),
}


def sender(protocol: str) -> Sender:
    module, function = PROTOCOLS[protocol]
    if not module:
        return send_service
    found: Sender = getattr(importlib.import_module(module), function)
    return found


async def client(
    worker: int,
    http: httpx.AsyncClient,
    send: Sender,
    params: dict[str, str],
    images: list[tuple[str, bytes]],
    start_at: float,
    stop_at: float,
    records: list[dict],
    honour_retry_after: float = 0.0,
    stop: asyncio.Event | None = None,
) -> None:
    """One closed-loop client until ``stop_at`` (or ``stop`` is set); ``honour_retry_after``: sleep cap."""
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    i = worker
    while time.perf_counter() < stop_at and not (stop is not None and stop.is_set()):
        name, data = images[i % len(images)]
        i += 1
        started = time.perf_counter()
        record: dict = {"worker": worker, "image": name, "start": started}
        try:
            response = await send(http, name, data, params)
            record["status"] = response.status_code
            if response.status_code == 200:
                timings = response.json().get("timings") if send is send_service else None
                if isinstance(timings, dict):
                    record["timings"] = {k: timings[k] for k in TIMING_KEYS if k in timings}
            else:
                record["error"] = response.text[:300]
                if "retry-after" in response.headers:
                    record["retry_after"] = response.headers["retry-after"]
        except httpx.HTTPError as exc:
            record["status"] = 0
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["end"] = time.perf_counter()
        records.append(record)
        if honour_retry_after > 0 and record["status"] == 503 and "retry_after" in record:
            try:
                pause = min(honour_retry_after, max(0.0, float(record["retry_after"])))
            except ValueError:  # an HTTP date: not sent by this service; wait the cap
                pause = honour_retry_after
            await asyncio.sleep(min(pause, max(0.0, stop_at - time.perf_counter())))


async def run(args: argparse.Namespace) -> dict:
    images = load_images()
    if args.images:
        images = images[: args.images]
    if not images:
        raise SystemExit(f"no photos in {IMAGES_DIR}: bench/run.py (or ab_service.py) writes them")
    params = {"crops": str(args.crops)}
    if args.model:
        params["model"] = args.model
    if args.explain:
        params["explain"] = "true"
    limits = httpx.Limits(
        max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency + 4
    )
    timeout = httpx.Timeout(args.timeout)
    records: list[dict] = []
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=timeout) as http:
        begin = time.perf_counter()
        window_start = begin + args.warmup
        window_end = window_start + args.duration
        ramp = args.warmup / 3 if args.ramp is None else args.ramp
        tasks = [
            asyncio.create_task(
                client(
                    w,
                    http,
                    sender(args.protocol),
                    params,
                    images,
                    begin + ramp * w / args.concurrency,
                    window_end,
                    records,
                    args.honour_retry_after,
                )
            )
            for w in range(args.concurrency)
        ]
        await asyncio.gather(*tasks)
        drained = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)

    window = [r for r in records if window_start <= r["end"] <= window_end]
    ok = [r for r in window if r["status"] == 200]
    errors = [r for r in window if r["status"] != 200]
    latencies = [(r["end"] - r["start"]) * 1000 for r in ok]
    server: dict[str, float] = {}
    for key in TIMING_KEYS:
        values = [r["timings"][key] for r in ok if key in r.get("timings", {})]
        if values:
            server[f"{key}_p50"] = round(median(values), 2)
    # Little's law per client (closed loop, no think time): each client's rate is 1 / its mean latency.
    # Unlike the window count it does not depend on where the window edges fall between completions.
    per_client: dict[int, list[float]] = {}
    for r in ok:
        per_client.setdefault(r["worker"], []).append(r["end"] - r["start"])
    little = sum(len(v) / sum(v) for v in per_client.values()) if per_client else 0.0
    overhead = [
        (r["end"] - r["start"]) * 1000 - r["timings"]["total_ms"]
        for r in ok
        if "total_ms" in r.get("timings", {})
    ]
    if overhead:
        server["outside_total_ms_p50"] = round(median(overhead), 2)
    beyond = [
        (r["end"] - r["start"]) * 1000 - r["timings"]["inference_ms"]
        for r in ok
        if "inference_ms" in r.get("timings", {})
    ]
    if beyond:  # client latency minus the session run of the request's own batch, per request
        server["beyond_inference_ms_p50"] = round(median(beyond), 2)
    statuses: dict[str, int] = {}
    by_status: dict[int, list[float]] = {}
    for r in window:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
        by_status.setdefault(r["status"], []).append((r["end"] - r["start"]) * 1000)
    summary = {
        "url": args.url,
        "concurrency": args.concurrency,
        "crops": args.crops,
        "explain": args.explain,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "drain_s": round(drained - window_end, 2),
        "images": len(images),
        "completed": len(ok),
        "errors": len(errors),
        "error_samples": sorted({f"{r['status']}: {r.get('error', '')[:120]}" for r in errors})[:5],
        "images_per_s": round(len(ok) / args.duration, 4),
        "images_per_s_little": round(little, 4),
        "clients_seen": len(per_client),
        "ramp_s": round(ramp, 2),
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "mean": round(sum(latencies) / len(latencies), 1) if latencies else None,
            "min": round(min(latencies), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
        },
        "server_timings": server,
        "statuses": statuses,
        "retry_after_503": sum(1 for r in window if r["status"] == 503 and "retry_after" in r),
        "honour_retry_after_s": args.honour_retry_after,
        "latency_ms_by_status": {
            str(status): {
                "n": len(values),
                "p50": round(percentile(values, 50), 1),
                "p99": round(percentile(values, 99), 1),
            }
            for status, values in sorted(by_status.items())
        },
        "loadgen_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "records": [
            {
                "start_s": round(r["start"] - window_start, 4),
                "latency_ms": round((r["end"] - r["start"]) * 1000, 2),
                "status": r["status"],
                "image": r["image"],
                **r.get("timings", {}),
            }
            for r in window
        ],
    }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", help="model name (the service's model query parameter)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="service")
    parser.add_argument("--crops", type=int, default=10)
    parser.add_argument("--explain", action="store_true", help="ask for class activation maps (explain=true)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds whose answers are discarded")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the measurement window")
    parser.add_argument(
        "--ramp", type=float, help="clients start evenly spread over this many seconds (default warm-up / 3)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request client timeout")
    parser.add_argument("--images", type=int, default=0, help="use only the first N photos (0: all)")
    parser.add_argument(
        "--honour-retry-after",
        type=float,
        default=0.0,
        metavar="CAP",
        help="after a 503 with Retry-After, sleep that many seconds (at most CAP) first (0: never)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    if args.out:
        write_json(args.out, summary)
    keys = ("concurrency", "completed", "errors", "images_per_s", "images_per_s_little", "latency_ms")
    line = {k: summary[k] for k in keys}
    print(json.dumps(line))
    return 0 if summary["completed"] and not summary["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
