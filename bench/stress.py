"""Stress harness: what the service does with hostile input, memory pressure, overload, long runs, model
swaps, killed exports and slow clients. Not a test: it measures, asserts nothing, and writes one JSON.

    python bench/stress.py                           # every phase, full sizes (~1 h, 30 min of it the soak)
    python bench/stress.py --quick                   # every phase shrunk: a smoke run of a few minutes
    python bench/stress.py --phases fuzz,hotswap     # some phases only
    python bench/stress.py --repo ../before --out bench/.work/results/stress-before.json   # another checkout
    python bench/stress.py --service-env MALLOC_ARENA_MAX=2 --phases memory               # allocator knobs

Each phase starts its own ``python -m service`` (the checkout of ``--repo``, same interpreter) on a free
loopback port, with a models directory of its own under ``bench/.work/stress/<out stem>/``, waits for
``/readyz``, runs, and stops it (SIGTERM, SIGKILL after 20 s). A thread samples the service's VmRSS every
150 ms; peaks also come from VmHWM after resetting it (``/proc/PID/clear_refs``). A service above
``--rss-limit-mb`` is killed by the harness (recorded), so a runaway allocation cannot take the machine.

Phases: fuzz (mutated images on every upload endpoint), memory (thin strips, a burst of large images, RSS
after it), saturation (closed-loop rate at a few concurrencies, then 300 clients), soak (RSS growth over
``--soak-minutes``), hotswap (atomic model replacements under traffic), kill (SIGKILLed exports into a
watched directory), slowloris (thousands of connections that never finish their request).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import dataclasses
import io
import json
import os
import random
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from common import (
    MODEL_NAME,
    MODEL_PATH,
    REPO,
    RESULTS_DIR,
    SIZED_DIR,
    WORK,
    load_images,
    machine,
    percentile,
    prepare_images,
    write_json,
)
from fuzz_images import Corpus, noise
from loadgen import client as loadgen_client
from loadgen import send_service
from run import PY, Server, free_port, load, log, write_readme

PHASES = ("fuzz", "memory", "saturation", "soak", "hotswap", "kill", "slowloris")
STRESS_WORK = WORK / "stress"
DEFAULT_OUT = RESULTS_DIR / "stress.json"
SMALL = "resnet20-cifar10"
SHIPPED = REPO / "models" / f"{SMALL}.onnx"  # the same file for every checkout measured
README_START, README_END = "<!-- stress:start -->", "<!-- stress:end -->"
METRIC = "resnet_serve_"
LOADS = METRIC + "model_loads_total"
LOAD_FAILURES = METRIC + "model_load_failures_total"
# CIFAR-10 statistics in pixel units, for the untrained checkpoint the kill phase exports.
CIFAR_MEAN = [125.307, 122.961, 113.866]
CIFAR_STD = [62.993, 62.089, 66.705]
HALF_HEADER = b"POST /classify HTTP/1.1\r\nHost: x\r\n"
SLOW_BODY = (
    b"POST /classify?crops=1 HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=stress\r\n"
    b"Content-Length: 1000000\r\n\r\n--stress\r\n"
)


@dataclass
class Sizes:
    """How big each phase is; the defaults are the full run, :data:`QUICK` the smoke run."""

    fuzz_images: int = 10_000  # /classify requests; plus a tenth as many /classify/batch and v2 requests
    fuzz_clients: int = 8
    fuzz_deadline_s: float = 1200.0
    memory_burst: int = 16
    memory_rounds: int = 3
    memory_after_s: tuple[float, ...] = (10.0, 30.0)
    sat_concurrencies: tuple[int, ...] = (1, 4, 8, 16)
    sat_window: tuple[float, float] = (15.0, 45.0)  # (warm-up s, window s)
    overload_clients: int = 300
    overload_window: tuple[float, float] = (15.0, 60.0)
    soak_minutes: float = 30.0
    soak_growth_from_s: float = 300.0
    hotswap_swaps: int = 100
    hotswap_clients: int = 8
    kills: int = 20
    slowloris_connections: int = 2000
    slowloris_body_connections: int = 200
    slowloris_waits: tuple[float, ...] = (15.0, 70.0)


QUICK = Sizes(
    fuzz_images=1000,
    fuzz_deadline_s=120.0,
    memory_burst=8,
    memory_rounds=1,
    memory_after_s=(10.0,),
    sat_concurrencies=(1, 4),
    sat_window=(3.0, 8.0),
    overload_window=(4.0, 10.0),
    soak_minutes=0.5,
    soak_growth_from_s=15.0,
    hotswap_swaps=15,
    kills=2,
    slowloris_waits=(12.0,),
)


@dataclass
class Context:
    """What every phase needs: options, sizes, the checkout measured and where to write."""

    args: argparse.Namespace
    sizes: Sizes
    repo: Path
    service_env: dict[str, str]
    work: Path
    photos: list[tuple[str, bytes]]
    best_concurrency: int | None = None
    best_rate: float | None = None


# ---- processes and cleanup ------------------------------------------------------------------------------
_LIVE: list[subprocess.Popen] = []  # everything this harness started and has not reaped yet


def _stop_all() -> None:
    """atexit: SIGKILL whatever is still running (a phase's finally normally got there first)."""
    for proc in _LIVE:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally, then atexit


# ---- resident memory -----------------------------------------------------------------------------------
def status_mb(pid: int, key: str) -> float | None:
    """``key`` (VmRSS, VmHWM) of ``/proc/PID/status`` in MB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``; needs root or the same user)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """VmRSS of one process every ``interval`` s in a thread; SIGKILLs it above ``limit_mb``."""

    def __init__(self, pid: int, interval: float = 0.15, limit_mb: float | None = None) -> None:
        self.pid, self.interval, self.limit_mb = pid, interval, limit_mb
        self.samples: list[tuple[float, float]] = []  # (perf_counter, MB)
        self.limit_hit: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = status_mb(self.pid, "VmRSS")
            if rss is None:
                return
            self.samples.append((time.perf_counter(), rss))
            if self.limit_mb and rss > self.limit_mb and self.limit_hit is None:
                self.limit_hit = {"rss_mb": rss, "limit_mb": self.limit_mb, "at": time.time()}
                log(f"service RSS {rss:.0f} MB is above --rss-limit-mb {self.limit_mb:.0f}: SIGKILL")
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                return
            self._stop.wait(self.interval)

    def peak_mb(self, since: float, until: float | None = None) -> float | None:
        end = until if until is not None else float("inf")
        values = [mb for t, mb in self.samples if since <= t <= end]
        return max(values) if values else None

    def at(self, moment: float) -> float | None:
        """The sample nearest to ``moment`` (perf_counter)."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s[0] - moment))[1]


# ---- the service under test ----------------------------------------------------------------------------
class Service:
    """``python -m service`` of the measured checkout, on a free loopback port, with an RSS sampler."""

    def __init__(self, ctx: Context, label: str, models: dict[str, Path], watch: bool = False) -> None:
        self.ctx, self.label, self.watch = ctx, label, watch
        self.dir = ctx.work / label
        shutil.rmtree(self.dir, ignore_errors=True)
        self.models_dir = self.dir / "models"
        self.models_dir.mkdir(parents=True)
        for name, source in models.items():
            place(source, self.models_dir / f"{name}.onnx")
        self.models = list(models)
        self.server: Server | None = None
        self.sampler: RssSampler | None = None
        self.starts = 0
        self.ready_s: list[float] = []
        self.rss_limit_hits: list[dict[str, Any]] = []

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Service:
        port = free_port()
        command = [PY, "-m", "service", "--models-dir", str(self.models_dir), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--log-level", "warning"] + ([] if self.watch else ["--no-watch"])
        env = {"PYTHONPATH": str(self.ctx.repo), "SERVE_PROVIDERS": "cpu", **self.ctx.service_env}
        self.starts += 1
        log_path = self.dir / f"service-{self.starts}.log"
        self.server = Server(f"service[{self.label}]", command, env, port, log_path, cwd=self.ctx.repo)
        _LIVE.append(self.server.proc)
        started = time.perf_counter()
        self.server.wait_ready(300)
        self.wait_models(300 - (time.perf_counter() - started))
        self.ready_s.append(round(time.perf_counter() - started, 1))
        self.sampler = RssSampler(self.pid, limit_mb=self.ctx.args.rss_limit_mb).start()
        return self

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            if self.sampler.limit_hit:
                self.rss_limit_hits.append(self.sampler.limit_hit)
        if self.server is not None:
            self.server.stop(signal.SIGTERM, 20.0)
            with contextlib.suppress(ValueError):
                _LIVE.remove(self.server.proc)

    def wait_models(self, timeout: float) -> None:
        """Until every model placed is served: /readyz only says that one of them is."""
        deadline = time.perf_counter() + timeout
        waiting = list(self.models)
        while waiting:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"models {', '.join(waiting)} not ready after {timeout:.0f} s")
            try:
                status = httpx.get(f"{self.url}/models/{waiting[0]}", timeout=5).json().get("status")
            except (httpx.HTTPError, ValueError):
                status = None
            if status == "ready":
                waiting.pop(0)
            elif status in ("refused", "failed"):
                raise RuntimeError(f"model {waiting[0]} was {status} by the service; see {self.dir}")
            else:
                time.sleep(0.25)

    def restart(self) -> None:
        """A fresh process on the same models directory (after the RSS guard killed the last one)."""
        self.stop()
        self.start()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.proc.pid

    @property
    def alive(self) -> bool:
        return self.server is not None and self.server.proc.poll() is None

    def rss_mb(self) -> float | None:
        return status_mb(self.pid, "VmRSS")

    def metrics(self) -> str | None:
        try:
            response = httpx.get(self.url + "/metrics", timeout=10)
            return response.text if response.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def info(self) -> dict[str, Any]:
        return {"ready_s": self.ready_s, "starts": self.starts, "rss_limit_hits": self.rss_limit_hits}


class RssWindow:
    """RSS before, peak (sampled and VmHWM) and after one stretch of a phase."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.hwm_reset = reset_peak(service.pid)
        self.started = time.perf_counter()
        self.before = service.rss_mb()

    def close(self) -> dict[str, Any]:
        s = self.service
        sampled = s.sampler.peak_mb(self.started) if s.sampler else None
        hwm = status_mb(s.pid, "VmHWM") if self.hwm_reset and s.alive else None
        peaks = [v for v in (sampled, hwm) if v is not None]
        return {
            "before_mb": self.before,
            "peak_mb": max(peaks) if peaks else None,
            "after_mb": s.rss_mb() if s.alive else None,
            "peak_sampled_mb": sampled,
            "peak_hwm_mb": hwm,
        }


def place(source: Path, target: Path) -> None:
    """A model file into a phase's directory: a hard link for the big one, a copy otherwise."""
    if source.stat().st_size > 16 * 2**20:
        with contextlib.suppress(OSError):
            os.link(source, target)
            return
    shutil.copyfile(source, target)


def metric(text: str | None, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` with ``labels``; 0 for a declared family without samples, None when
    the service has no such metric (older code) or /metrics did not answer."""
    if text is None:
        return None
    total: float | None = None
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        found = re.match(r"^([A-Za-z_:][\w:]*)(\{.*\})?\s+(\S+)", line)
        if not found or found.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(found.group(3))
    if total is None and re.search(
        rf"^# TYPE {re.escape(name.removesuffix('_total'))}(_total)? ", text, re.M
    ):
        return 0.0
    return total


def wait_metric(service: Service, name: str, above: float, timeout: float, **labels: str) -> float | None:
    """Seconds until ``name`` exceeds ``above`` on /metrics; None if it did not within ``timeout``."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        value = metric(service.metrics(), name, **labels)
        if value is not None and value > above:
            return time.perf_counter() - started
        time.sleep(0.05)
    return None


def classify_once(
    url: str,
    data: bytes,
    *,
    model: str | None = None,
    crops: int = 1,
    timeout: float = 60.0,
    name: str = "x.jpg",
) -> dict[str, Any]:
    """One ``POST /classify``: status, seconds, and the start of the body unless it is a 200."""
    params = {"crops": str(crops), **({"model": model} if model else {})}
    kind = "image/png" if name.endswith(".png") else "image/jpeg"
    started = time.perf_counter()
    try:
        response = httpx.post(
            url + "/classify", params=params, files={"image": (name, data, kind)}, timeout=timeout
        )
        out: dict[str, Any] = {"status": response.status_code}
        if response.status_code != 200:
            out["body"] = response.text[:300]
    except httpx.HTTPError as exc:
        out = {"status": 0, "body": f"{type(exc).__name__}: {exc}"[:300]}
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def latency(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": round(percentile(values, 50), 1) if values else None,
        "p99": round(percentile(values, 99), 1) if values else None,
        "max": round(max(values), 1) if values else None,
    }


class BackgroundClients:
    """``loadgen.client`` closed-loop clients in a thread of their own, until :meth:`stop` (or ``max_s``)."""

    def __init__(
        self,
        url: str,
        concurrency: int,
        params: dict[str, str],
        images: list[tuple[str, bytes]],
        max_s: float,
        timeout: float = 60.0,
    ) -> None:
        self.url, self.concurrency, self.params, self.images = url, concurrency, params, images
        self.max_s, self.timeout = max_s, timeout
        self.records: list[dict] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> BackgroundClients:
        self._thread.start()
        self._ready.wait(10)
        return self

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        limits = httpx.Limits(
            max_connections=self.concurrency + 2, max_keepalive_connections=self.concurrency
        )
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout, limits=limits) as http:
            self._ready.set()
            begin = time.perf_counter()
            await asyncio.gather(
                *(
                    loadgen_client(
                        w,
                        http,
                        send_service,
                        self.params,
                        self.images,
                        begin,
                        begin + self.max_s,
                        self.records,
                        0.0,
                        self._stop,
                    )
                    for w in range(self.concurrency)
                )
            )

    def stop(self) -> dict[str, Any]:
        """Stop after the requests in flight; what the clients saw."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout + 10)
        failed = [r for r in self.records if r["status"] != 200]
        return {
            "requests": len(self.records),
            "statuses": dict(Counter(str(r["status"]) for r in self.records)),
            "failed": len(failed),
            "failure_samples": [f"{r['status']}: {r.get('error', '')[:200]}" for r in failed[:5]],
            "latency_ms": latency([(r["end"] - r["start"]) * 1000 for r in self.records]),
        }


# ---- phase 1: fuzz ------------------------------------------------------------------------------------
def fuzz_plan(seed: int, count: int) -> list[tuple[str, str, int]]:
    """(endpoint, key, images) of every request, shuffled with the seed: /classify ``count`` times."""
    rng = random.Random(f"{seed}:plan")
    plan = [("classify", f"c{i}", 1) for i in range(count)]
    plan += [("batch", f"b{i}", rng.randint(2, 5)) for i in range(count // 10)]
    plan += [("v2", f"v{i}", 1 if rng.random() < 0.8 else rng.randint(2, 3)) for i in range(count // 10)]
    rng.shuffle(plan)
    return plan


async def fuzz_send(http: httpx.AsyncClient, endpoint: str, samples: list) -> tuple[int, str]:
    """Send one fuzz request; (status, body), status 0 for a connection error or a client timeout."""
    try:
        if endpoint == "classify":
            s = samples[0]
            response = await http.post(
                "/classify", params={"crops": "1"}, files={"image": (s.name, s.data, s.content_type)}
            )
        elif endpoint == "batch":
            files = [("images", (s.name, s.data, s.content_type)) for s in samples]
            response = await http.post("/classify/batch", params={"crops": "1"}, files=files)
        else:
            data = [base64.b64encode(s.data).decode() for s in samples]
            tensor = {"name": "image", "datatype": "BYTES", "shape": [len(data)], "data": data}
            response = await http.post(f"/v2/models/{SMALL}/infer", json={"inputs": [tensor]})
        return response.status_code, response.text
    except httpx.HTTPError as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def batch_items(body: str, count: int) -> list[str] | None:
    """Per-image outcome of a 200 /classify/batch answer: "ok" or "item:<error code>"."""
    try:
        results = json.loads(body)["results"]
    except (ValueError, KeyError, TypeError):
        return None
    if len(results) != count:
        return None
    return ["ok" if r.get("predictions") else f"item:{(r.get('error') or {}).get('code')}" for r in results]


async def fuzz_run(
    ctx: Context, url: str, corpus: Corpus, plan: list[tuple[str, str, int]]
) -> dict[str, Any]:
    sizes = ctx.sizes
    by_kind: dict[str, Counter] = {}
    by_endpoint: dict[str, Counter] = {}
    by_endpoint_kind: dict[str, dict[str, Counter]] = {}
    findings: list[dict[str, Any]] = []
    finding_count: Counter = Counter()
    latencies: list[tuple[float, str, str]] = []
    sent = {"images": 0, "requests": 0}
    findings_dir = ctx.work / "fuzz" / "findings"
    queue = iter(plan)
    stop_at = time.perf_counter() + sizes.fuzz_deadline_s

    def count(endpoint: str, kind: str, outcome: str) -> None:
        by_kind.setdefault(kind, Counter())[outcome] += 1
        by_endpoint.setdefault(endpoint, Counter())[outcome] += 1
        by_endpoint_kind.setdefault(endpoint, {}).setdefault(kind, Counter())[outcome] += 1

    def finding(endpoint: str, sample: Any, status: int, outcome: str, body: str) -> None:
        finding_count[outcome] += 1
        if len(findings) < 30:
            findings_dir.mkdir(parents=True, exist_ok=True)
            (findings_dir / f"{sample.key}.bin").write_bytes(sample.data)
            findings.append(
                {
                    "endpoint": endpoint,
                    "key": sample.key,
                    "kind": sample.kind,
                    "name": sample.name,
                    "bytes": len(sample.data),
                    "status": status,
                    "outcome": outcome,
                    "body": body[:300],
                }
            )

    async def worker(http: httpx.AsyncClient) -> None:
        for endpoint, key, n in queue:  # one iterator shared by all workers: each request is sent once
            if time.perf_counter() > stop_at:
                return
            keys = [key] if endpoint == "classify" else [f"{key}.{k}" for k in range(n)]
            samples = [corpus.sample(k) for k in keys]
            started = time.perf_counter()
            status, body = await fuzz_send(http, endpoint, samples)
            seconds = time.perf_counter() - started
            latencies.append((seconds * 1000, key, "+".join(s.kind for s in samples)))
            sent["requests"] += 1
            sent["images"] += len(samples)
            items = batch_items(body, len(samples)) if endpoint == "batch" and status == 200 else None
            for i, sample in enumerate(samples):
                outcome = items[i] if items else str(status)
                count(endpoint, sample.kind, outcome)
                if (
                    status >= 500
                    or status == 0
                    or outcome in ("item:internal_error", "item:inference_failed")
                ):
                    finding(endpoint, sample, status, outcome, body)

    limits = httpx.Limits(
        max_connections=sizes.fuzz_clients + 2, max_keepalive_connections=sizes.fuzz_clients
    )
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(sizes.fuzz_clients)))
    wall = time.perf_counter() - started
    slowest = sorted(latencies, reverse=True)[:5]
    statuses: Counter = Counter()
    for counts in by_endpoint.values():
        statuses.update(counts)
    return {
        "seed": corpus.seed,
        "planned_requests": len(plan),
        "requests": sent["requests"],
        "images_sent": sent["images"],
        "stopped_at_deadline": sent["requests"] < len(plan),
        "clients": sizes.fuzz_clients,
        "send_s": round(wall, 1),
        "requests_per_s": round(sent["requests"] / wall, 1) if wall else None,
        "outcomes": dict(statuses.most_common()),
        "by_endpoint": {k: dict(v.most_common()) for k, v in sorted(by_endpoint.items())},
        "by_kind": {k: dict(v.most_common()) for k, v in sorted(by_kind.items())},
        "by_endpoint_kind": {
            e: {k: dict(v.most_common()) for k, v in sorted(kinds.items())}
            for e, kinds in sorted(by_endpoint_kind.items())
        },
        # Unmutated images refused by /classify or as a batch item (a v2 request fails as a whole, so a
        # valid image beside a bad one there counts the bad one's status).
        "valid_not_ok": sum(
            n
            for e in ("classify", "batch")
            for k, n in by_endpoint_kind.get(e, {}).get("valid", Counter()).items()
            if k not in ("200", "ok")
        ),
        "findings": sum(finding_count.values()),
        "findings_by_outcome": dict(finding_count),
        "finding_samples": findings,
        "findings_dir": str(findings_dir) if findings else None,
        "latency_ms": latency([ms for ms, _, _ in latencies]),
        "slowest": [{"ms": round(ms, 1), "key": key, "kinds": kinds} for ms, key, kinds in slowest],
    }


def phase_fuzz(ctx: Context) -> dict[str, Any]:
    """Mutated images on /classify, /classify/batch and v2 infer; any 5xx or dropped connection counts."""
    log("fuzz: building the corpus")
    corpus = Corpus(ctx.args.seed, [data for _, data in ctx.photos[:4]])
    plan = fuzz_plan(ctx.args.seed, ctx.args.fuzz_images or ctx.sizes.fuzz_images)
    with Service(ctx, "fuzz", {SMALL: SHIPPED}) as service:
        window = RssWindow(service)
        log(f"fuzz: {len(plan)} requests, {ctx.sizes.fuzz_clients} clients")
        result = asyncio.run(fuzz_run(ctx, service.url, corpus, plan))
        name, photo = ctx.photos[0]
        result["good_request_after"] = classify_once(service.url, photo, model=SMALL, name=name)
        result["service_alive_after"] = service.alive
        result["rss"] = window.close()
        result["service"] = service.info()
    return result


# ---- phase 2: memory ----------------------------------------------------------------------------------
def memory_images(ctx: Context) -> dict[str, tuple[str, bytes]]:
    """(file name, bytes) of the strips and the large images, made once under bench/.work/stress/."""
    from PIL import Image

    folder = STRESS_WORK / "images"
    folder.mkdir(parents=True, exist_ok=True)

    def made(name: str, build: Callable[[], Any]) -> tuple[str, bytes]:
        path = folder / name
        if not path.is_file():
            buffer = io.BytesIO()
            build().save(buffer, "PNG")
            path.write_bytes(buffer.getvalue())
        return name, path.read_bytes()

    import skimage.data

    coffee = Image.fromarray(skimage.data.coffee())

    def big_rgb() -> Any:  # 10x10 blocks of the photo: real content, and PNG keeps it small
        return coffee.resize((800, 600)).resize((8000, 6000), Image.Resampling.NEAREST)

    def big_rgba(side: int) -> Any:
        square = coffee.crop((100, 0, 500, 400)).resize((side // 10, side // 10)).convert("RGBA")
        square.putalpha(Image.linear_gradient("L").resize((side // 10, side // 10)))
        return square.resize((side, side), Image.Resampling.NEAREST)

    jpeg = SIZED_DIR / "coffee_4000x3000.jpg"
    return {
        "strip_1x5000": made("strip_1x5000.png", lambda: noise(1, 5000, 1)),
        "strip_1x20000": made("strip_1x20000.png", lambda: noise(1, 20000, 2)),
        "jpeg_4000x3000": (jpeg.name, jpeg.read_bytes()),
        "png_8000x6000": made("blocks_8000x6000.png", big_rgb),
        "rgba_png_6000x6000": made("rgba_6000x6000.png", lambda: big_rgba(6000)),
        # 64,000,000 pixels, SERVE_MAX_IMAGE_PIXELS' default: the costliest image a request may carry
        # (decoded as RGBA, composited over white, converted to RGB).
        "rgba_png_8000x8000": made("rgba_8000x8000.png", lambda: big_rgba(8000)),
    }


def ensure_big_model() -> None:
    if not MODEL_PATH.is_file():
        log("exporting the random-weight ResNet-50 (bench/make_model.py)")
        subprocess.run([PY, "bench/make_model.py"], cwd=REPO, check=True, timeout=1800)


def warm(service: Service, photos: list[tuple[str, bytes]], count: int = 5) -> list[int]:
    """A few normal 10-crop requests on the big model, so the baseline RSS is the warmed-up one."""
    statuses = []
    for name, data in photos[:count]:
        statuses.append(classify_once(service.url, data, model=MODEL_NAME, crops=10, name=name)["status"])
    time.sleep(2.0)
    return statuses


async def burst(url: str, uploads: list[tuple[str, bytes]], timeout: float) -> tuple[Counter, list[float]]:
    """All ``uploads`` at once, 10-crop on the big model; their statuses and seconds."""
    statuses: Counter = Counter()
    seconds: list[float] = []
    limits = httpx.Limits(max_connections=len(uploads) + 2)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:

        async def one(name: str, data: bytes) -> None:
            kind = "image/png" if name.endswith(".png") else "image/jpeg"
            started = time.perf_counter()
            try:
                response = await http.post(
                    "/classify", params={"model": MODEL_NAME}, files={"image": (name, data, kind)}
                )
                statuses[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[f"0:{type(exc).__name__}"] += 1
            seconds.append(time.perf_counter() - started)

        await asyncio.gather(*(one(name, data) for name, data in uploads))
    return statuses, seconds


# Sent alone by the memory phase (10-crop on the ResNet-50): peak RSS of one request.
SINGLE_IMAGES = ("strip_1x5000", "strip_1x20000", "rgba_png_8000x8000")


def phase_memory(ctx: Context) -> dict[str, Any]:
    """Thin strips (their resized size is what hurts) and the largest image a request may carry, one at a
    time; then bursts of large images: is memory given back?"""
    ensure_big_model()
    images = memory_images(ctx)
    result: dict[str, Any] = {
        "images": {label: {"file": name, "bytes": len(data)} for label, (name, data) in images.items()},
        "strips": {},
    }
    with Service(ctx, "memory", {MODEL_NAME: MODEL_PATH, SMALL: SHIPPED}) as service:
        result["warm_statuses"] = warm(service, ctx.photos)
        result["baseline_mb"] = service.rss_mb()
        for label in SINGLE_IMAGES:
            if not service.alive:
                service.restart()
                warm(service, ctx.photos)
            name, data = images[label]
            log(f"memory: {label} on {MODEL_NAME}, 10-crop")
            window = RssWindow(service)
            answer = classify_once(service.url, data, model=MODEL_NAME, crops=10, timeout=300, name=name)
            time.sleep(3.0)
            limit_hit = service.sampler.limit_hit if service.sampler else None
            result["strips"][label] = {**answer, **window.close(), "killed_at_rss_limit": limit_hit}
        if not service.alive:
            service.restart()
        result["burst_warm_statuses"] = warm(service, ctx.photos)
        big = [images[k] for k in ("jpeg_4000x3000", "png_8000x6000", "rgba_png_6000x6000")]
        uploads = [big[i % len(big)] for i in range(ctx.sizes.memory_burst)]
        window = RssWindow(service)
        statuses: Counter = Counter()
        seconds: list[float] = []
        for round_ in range(ctx.sizes.memory_rounds):
            log(f"memory: burst {round_ + 1}/{ctx.sizes.memory_rounds} of {len(uploads)} large images")
            got, took = asyncio.run(burst(service.url, uploads, timeout=300.0))
            statuses.update(got)
            seconds += took
        ended = time.perf_counter()
        burst_rss = window.close()
        after: dict[str, float | None] = {}
        for wait in ctx.sizes.memory_after_s:
            time.sleep(max(0.0, ended + wait - time.perf_counter()))
            after[f"{wait:g}s"] = service.rss_mb() if service.alive else None
        baseline = burst_rss["before_mb"]
        last = list(after.values())[-1] if after else None
        result["burst"] = {
            "concurrent": len(uploads),
            "rounds": ctx.sizes.memory_rounds,
            "mix": [name for name, _ in big],
            "statuses": dict(statuses),
            "latency_s": latency(seconds),
            "baseline_mb": baseline,
            "peak_mb": burst_rss["peak_mb"],
            "peak_hwm_mb": burst_rss["peak_hwm_mb"],
            "after_mb": after,
            "retained_mb": round(last - baseline, 1) if last is not None and baseline is not None else None,
            "killed_at_rss_limit": service.sampler.limit_hit if service.sampler else None,
        }
        result["service"] = service.info()
    return result


# ---- phase 3: saturation ------------------------------------------------------------------------------
def phase_saturation(ctx: Context) -> dict[str, Any]:
    """Closed-loop rate at a few concurrencies, then 300 clients: goodput, fast 503s, latency of the 200s."""
    ensure_big_model()
    sizes = ctx.sizes
    out_dir = ctx.work / "saturation"
    result: dict[str, Any] = {"rates": {}}
    with Service(ctx, "saturation", {MODEL_NAME: MODEL_PATH}) as service:
        assert service.server is not None
        for c in sizes.sat_concurrencies:
            r = load(
                service.server,
                c,
                {c: sizes.sat_window},
                out_dir / f"c{c}.json",
                MODEL_NAME,
                ["--timeout", "120"],
            )
            result["rates"][str(c)] = {
                k: r[k]
                for k in ("images_per_s", "completed", "errors", "statuses", "latency_ms", "server_cpu_cores")
            }
        best = max(result["rates"].items(), key=lambda kv: kv[1]["images_per_s"])
        ctx.best_concurrency, ctx.best_rate = int(best[0]), best[1]["images_per_s"]
        result["best"] = {"concurrency": ctx.best_concurrency, "images_per_s": ctx.best_rate}
        clients = sizes.overload_clients
        cap = 0.0 if ctx.args.no_honour_retry_after else ctx.args.retry_after_cap
        window = RssWindow(service)
        r = load(
            service.server,
            clients,
            {clients: sizes.overload_window},
            out_dir / f"overload-c{clients}.json",
            MODEL_NAME,
            ["--timeout", "120", "--honour-retry-after", str(cap)],
        )
        rss = window.close()
        statuses = r["statuses"]
        by_status = r["latency_ms_by_status"]
        answered = sum(statuses.values())
        result["overload"] = {
            "clients": clients,
            "warmup_s": sizes.overload_window[0],
            "window_s": sizes.overload_window[1],
            "honour_retry_after_cap_s": cap,
            "answers": answered,
            "count_200": statuses.get("200", 0),
            "count_503": statuses.get("503", 0),
            "count_504": statuses.get("504", 0),
            "count_other": answered - sum(statuses.get(s, 0) for s in ("200", "503", "504")),
            "statuses": statuses,
            "retry_after_503": r["retry_after_503"],
            "goodput_per_s": r["images_per_s"],
            "goodput_vs_best": round(r["images_per_s"] / ctx.best_rate, 3) if ctx.best_rate else None,
            "latency_200_ms": by_status.get("200"),
            "latency_503_ms": by_status.get("503"),
            "latency_504_ms": by_status.get("504"),
            "error_samples": r["error_samples"],
            "drain_s": r["drain_s"],
            "server_cpu_cores": r["server_cpu_cores"],
            "rss": rss,
        }
        result["service"] = service.info()
    return result


# ---- phase 4: soak ------------------------------------------------------------------------------------
def phase_soak(ctx: Context) -> dict[str, Any]:
    """Steady 10-crop load at the best concurrency for ``--soak-minutes``: does the RSS keep growing?"""
    ensure_big_model()
    c = ctx.args.soak_concurrency or ctx.best_concurrency or 8
    minutes = ctx.args.soak_minutes or ctx.sizes.soak_minutes
    duration = minutes * 60.0
    warmup = 10.0 if not ctx.args.quick else 4.0
    with Service(ctx, "soak", {MODEL_NAME: MODEL_PATH}) as service:
        assert service.server is not None and service.sampler is not None
        started = time.perf_counter()
        cap = 0.0 if ctx.args.no_honour_retry_after else ctx.args.retry_after_cap  # as real clients do
        r = load(
            service.server, c, {c: (warmup, duration)}, ctx.work / "soak" / "load.json", MODEL_NAME,
            ["--timeout", "120", "--honour-retry-after", str(cap)],
        )  # fmt: skip
        window_start, window_end = started + warmup, started + warmup + duration
        series = []
        t = window_start
        while t <= window_end + 1e-6:
            series.append([round(t - window_start, 1), service.sampler.at(t)])
            t += 10.0
        growth_from = min(ctx.sizes.soak_growth_from_s, duration / 3)
        at_from = service.sampler.at(window_start + growth_from)
        at_end = service.sampler.at(window_end)
        growth = round(100.0 * (at_end - at_from) / at_from, 2) if at_from and at_end else None
        result = {
            "concurrency": c,
            "minutes": minutes,
            "images_per_s": r["images_per_s"],
            "completed": r["completed"],
            "errors": r["errors"],
            "statuses": r["statuses"],
            "error_samples": r["error_samples"],
            "latency_ms": r["latency_ms"],
            "rss_series_mb": series,
            "growth_from_s": growth_from,
            "rss_from_mb": at_from,
            "rss_end_mb": at_end,
            "rss_peak_mb": service.sampler.peak_mb(window_start, window_end),
            "growth_pct": growth,
            "goal_growth_pct": 5.0,
            "service": service.info(),
        }
    return result


# ---- phase 5: hotswap ---------------------------------------------------------------------------------
def phase_hotswap(ctx: Context) -> dict[str, Any]:
    """Atomic replacements of the served file under 8 classifying clients: no request may fail."""
    swaps = ctx.args.swaps or ctx.sizes.hotswap_swaps
    with Service(ctx, "hotswap", {SMALL: SHIPPED}, watch=True) as service:
        target = service.models_dir / f"{SMALL}.onnx"
        text = service.metrics()
        loads_before = metric(text, LOADS, model=SMALL)
        failures_before = metric(text, LOAD_FAILURES, model=SMALL)
        clients = BackgroundClients(
            service.url, ctx.sizes.hotswap_clients, {"model": SMALL, "crops": "10"}, ctx.photos,
            max_s=swaps * 12.0 + 60.0,
        ).start()  # fmt: skip
        time.sleep(1.0)
        seen: list[float] = []
        missed = 0
        try:
            for i in range(swaps):
                loads = metric(service.metrics(), LOADS, model=SMALL) or 0.0
                temporary = service.models_dir / f"{SMALL}.onnx.swap{i}.tmp"
                shutil.copyfile(SHIPPED, temporary)
                os.replace(temporary, target)
                waited = wait_metric(service, LOADS, loads, 10.0, model=SMALL)
                if waited is None:
                    missed += 1
                else:
                    seen.append(waited * 1000)
                time.sleep(0.2)
            time.sleep(1.0)
        finally:
            seen_by_clients = clients.stop()
        text = service.metrics()
        loads_after = metric(text, LOADS, model=SMALL)
        result = {
            "replacements": swaps,
            "clients": ctx.sizes.hotswap_clients,
            "loads_before": loads_before,
            "loads_after": loads_after,
            "loads_counted": (loads_after - loads_before)
            if loads_after is not None and loads_before
            else None,
            "loads_not_seen_within_10s": missed,
            "replace_to_loaded_ms": latency(seen),
            "load_failures_before": failures_before,
            "load_failures_after": metric(text, LOAD_FAILURES, model=SMALL),
            "client": seen_by_clients,
            "failed_requests": seen_by_clients["failed"],
            "service": service.info(),
        }
    return result


# ---- phase 6: kill ------------------------------------------------------------------------------------
def make_checkpoint(path: Path) -> None:
    """An untrained ResNet-20 in ``train.py``'s checkpoint format, written by ``save_checkpoint``."""
    import onnx
    import torch

    from training.checkpoint import save_checkpoint
    from training.config import TrainConfig
    from training.models import build_model

    meta = {p.key: p.value for p in onnx.load(str(SHIPPED), load_external_data=False).metadata_props}
    labels = json.loads(meta["labels"])
    config = TrainConfig(arch="resnet20", dataset="cifar10")
    results = {"mean": CIFAR_MEAN, "std": CIFAR_STD, "resize_size": int(meta["resize_size"])}
    torch.manual_seed(0)
    # The config leaves the shortcut to the architecture (None), as build_model does by default.
    network = build_model(config.arch, num_classes=len(labels), stride_in="1x1")
    state = {
        "model": network.state_dict(),
        # The results go into the config too, where exporters before the config/results split read them.
        "config": {**dataclasses.asdict(config), **results},
        "results": results,
        "classes": labels,
        "history": [],
        "iteration": 0,
        "best_error": None,
    }
    save_checkpoint(state, path)


def ensure_checkpoint() -> Path:
    path = STRESS_WORK / "resnet20-untrained.pt"
    if not path.is_file():
        log(f"kill: writing an untrained ResNet-20 checkpoint to {path}")
        command = [PY, str(Path(__file__).resolve()), "--make-checkpoint", str(path)]
        subprocess.run(command, cwd=REPO, check=True, timeout=600)
    return path


def check_models_dir(directory: Path) -> dict[str, Any]:
    """Every ``*.onnx`` must load in onnx and ONNX Runtime; everything else is a stray file."""
    import onnx
    import onnxruntime as ort

    unreadable, strays, models = [], [], []
    for path in sorted(directory.iterdir()):
        if not path.name.endswith(".onnx"):
            strays.append(path.name)
            continue
        models.append(path.name)
        try:
            onnx.load(str(path))
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            unreadable.append({"file": path.name, "bytes": path.stat().st_size, "error": str(exc)[:200]})
    return {"models": models, "unreadable": unreadable, "strays": strays}


class Exporter:
    """``training/export.py CKPT --models-dir DIR`` of the measured checkout, in its own process group."""

    def __init__(
        self, ctx: Context, checkpoint: Path, models_dir: Path, scratch: Path, log_path: Path
    ) -> None:
        self.command = [PY, "training/export.py", str(checkpoint), "--models-dir", str(models_dir)]
        self.env = {**os.environ, "PYTHONPATH": str(ctx.repo), "TMPDIR": str(scratch)}
        self.cwd, self.log_path = ctx.repo, log_path

    def start(self) -> subprocess.Popen:
        with self.log_path.open("a") as out:
            proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group this harness created for it
        proc.wait()


def leftovers(scratch: Path) -> list[str]:
    """The exporter's ``export-*`` temporary directories a kill left in its TMPDIR (not torch's caches)."""
    return sorted(p.name for p in scratch.iterdir() if p.name.startswith("export-"))


def signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
        return stat.st_ino, stat.st_mtime_ns
    except OSError:
        return None


def phase_kill(ctx: Context) -> dict[str, Any]:
    """Exports SIGKILLed at random moments into a watched directory: no partial model may appear."""
    checkpoint = ensure_checkpoint()
    kills = ctx.args.kills or ctx.sizes.kills
    rng = random.Random(f"{ctx.args.seed}:kill")
    with Service(ctx, "kill", {SMALL: SHIPPED}, watch=True) as service:
        scratch = service.dir / "tmp"
        scratch.mkdir()
        target = service.models_dir / f"{SMALL}.onnx"
        exporter = Exporter(ctx, checkpoint, service.models_dir, scratch, service.dir / "export.log")
        clients = BackgroundClients(
            service.url, 1, {"model": SMALL, "crops": "1"}, ctx.photos, max_s=3600.0
        ).start()
        runs: list[dict[str, Any]] = []
        try:
            timings = []
            for attempt in range(1 if ctx.args.quick else 2):  # the first is cold (imports, caches)
                log(f"kill: export {attempt + 1} to its end, to time it")
                loads = metric(service.metrics(), LOADS, model=SMALL) or 0.0
                started = time.perf_counter()
                proc = exporter.start()
                try:
                    rc = proc.wait(900)
                except subprocess.TimeoutExpired:
                    Exporter.kill(proc)
                    rc = None
                timings.append(round(time.perf_counter() - started, 1))
                loaded = wait_metric(service, LOADS, loads, 15.0, model=SMALL)
            duration = timings[-1]
            baseline = {
                "rc": rc,
                "seconds": timings,
                "loaded_after_s": None if loaded is None else round(loaded, 2),
                **check_models_dir(service.models_dir),
            }
            for i in range(kills):
                delay = rng.uniform(0.0, duration)
                before = signature(target)
                loads = metric(service.metrics(), LOADS, model=SMALL) or 0.0
                proc = exporter.start()
                try:
                    rc = proc.wait(delay)
                    killed = False
                except subprocess.TimeoutExpired:
                    Exporter.kill(proc)
                    killed, rc = True, None
                published = signature(target) != before
                loaded = wait_metric(service, LOADS, loads, 15.0, model=SMALL) if published else None
                time.sleep(0.5)
                check = check_models_dir(service.models_dir)
                runs.append(
                    {
                        "kill_at_s": round(delay, 2),
                        "killed": killed,
                        "rc": rc,
                        "published": published,
                        "loaded_after_s": None if loaded is None else round(loaded, 2),
                        "files": sorted(check["models"] + check["strays"]),
                        "unreadable": check["unreadable"],
                        "strays": len(check["strays"]),
                        "scratch_left": len(leftovers(scratch)),
                    }
                )
                log(f"kill {i + 1}/{kills}: at {delay:.1f} s, killed={killed}, published={published}")
        finally:
            seen_by_client = clients.stop()
        final = check_models_dir(service.models_dir)
        text = service.metrics()
        result = {
            "export_s": duration,
            "baseline_export": baseline,
            "runs": runs,
            "kills": sum(r["killed"] for r in runs),
            "completed_exports": sum(not r["killed"] and r["rc"] == 0 for r in runs),
            "published": sum(r["published"] for r in runs),
            "unreadable_onnx": sum(len(r["unreadable"]) for r in runs),
            "stray_files": final["strays"],
            "stray_count": len(final["strays"]),
            "scratch_dirs_left": leftovers(scratch),
            "load_failures": metric(text, LOAD_FAILURES),
            "loads": metric(text, LOADS, model=SMALL),
            "client": seen_by_client,
            "failed_requests": seen_by_client["failed"],
            "service": service.info(),
        }
    return result


# ---- phase 7: slowloris -------------------------------------------------------------------------------
def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft open-file limit to the hard one; the limits before."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


class Held:
    """Sockets that sent ``payload`` and then nothing; tells which ones the server has closed."""

    def __init__(self, port: int, count: int, payload: bytes, open_deadline_s: float = 60.0) -> None:
        self.selector = selectors.DefaultSelector()  # epoll: no FD_SETSIZE limit
        self.open: dict[int, socket.socket] = {}
        self.closed = 0
        self.answers: Counter = Counter()  # the first line of what the server sent before closing
        self.connect_errors: Counter = Counter()
        started = time.perf_counter()
        for _ in range(count):
            if time.perf_counter() - started > open_deadline_s:
                self.connect_errors["open_deadline"] += (
                    count - len(self.open) - sum(self.connect_errors.values())
                )
                break
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(payload)
                sock.setblocking(False)
            except OSError as exc:
                self.connect_errors[type(exc).__name__] += 1
                continue
            self.open[sock.fileno()] = sock
            self.selector.register(sock, selectors.EVENT_READ, bytearray())
        self.open_s = round(time.perf_counter() - started, 2)

    def poll(self) -> int:
        """Read what arrived without blocking; the number of sockets the server still holds open."""
        for key, _ in self.selector.select(timeout=0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            received: bytearray = key.data
            gone = False
            while True:
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError:  # ECONNRESET
                    gone = True
                    break
                if not chunk:
                    gone = True
                    break
                received += chunk
            if gone:
                line = (
                    bytes(received).split(b"\r\n", 1)[0].decode("latin-1")[:40] if received else "(nothing)"
                )
                self.answers[line] += 1
                self.closed += 1
                self.selector.unregister(sock)
                del self.open[sock.fileno()]
                sock.close()
        return len(self.open)

    def close(self) -> None:
        for sock in self.open.values():
            with contextlib.suppress(OSError):
                self.selector.unregister(sock)
            sock.close()
        self.open.clear()
        self.selector.close()


def slowloris_variant(
    ctx: Context, service: Service, count: int, payload: bytes, waits: tuple[float, ...]
) -> dict[str, Any]:
    name, photo = ctx.photos[0]
    before = service.rss_mb()
    held = Held(int(service.url.rsplit(":", 1)[1]), count, payload)
    opened_at = time.perf_counter()
    result: dict[str, Any] = {
        "connections": count,
        "opened": len(held.open),
        "connect_errors": dict(held.connect_errors),
        "open_s": held.open_s,
        "rss_before_mb": before,
        "checks": [],
    }
    try:
        held.poll()
        result["normal_request_at_open"] = classify_once(
            service.url, photo, model=SMALL, timeout=30, name=name
        )
        result["rss_opened_mb"] = service.rss_mb()
        for wait in waits:
            time.sleep(max(0.0, opened_at + wait - time.perf_counter()))
            still = held.poll()
            text = service.metrics()
            result["checks"].append(
                {
                    "after_s": wait,
                    "held_open": still,
                    "closed_by_server": held.closed,
                    "server_answers": dict(held.answers),
                    "normal_request": classify_once(service.url, photo, model=SMALL, timeout=30, name=name),
                    "rss_mb": service.rss_mb(),
                    "server_connections_open": metric(text, METRIC + "http_connections_open"),
                    "server_closed": metric(text, METRIC + "http_connections_closed_total"),
                }
            )
            log(f"slowloris: {still}/{len(held.open) + held.closed} still open after {wait:g} s")
    finally:
        held.close()
    time.sleep(3.0)  # let the server see them go before the next variant
    return result


def phase_slowloris(ctx: Context) -> dict[str, Any]:
    """Thousands of requests that never finish their header (or body): are they closed, does service work?"""
    waits = ctx.args.slowloris_wait or ctx.sizes.slowloris_waits
    with Service(ctx, "slowloris", {SMALL: SHIPPED}) as service:
        limits = raise_nofile()  # after the service started: it keeps the limit it would have had
        try:
            result = {
                "nofile_before": list(limits),
                "headers": slowloris_variant(
                    ctx, service, ctx.sizes.slowloris_connections, HALF_HEADER, waits
                ),
                "body": slowloris_variant(
                    ctx, service, ctx.sizes.slowloris_body_connections, SLOW_BODY, waits
                ),
            }
        finally:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        name, photo = ctx.photos[0]
        result["normal_request_after"] = classify_once(service.url, photo, model=SMALL, name=name)
        result["service"] = service.info()
    return result


PHASE_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "fuzz": phase_fuzz,
    "memory": phase_memory,
    "saturation": phase_saturation,
    "soak": phase_soak,
    "hotswap": phase_hotswap,
    "kill": phase_kill,
    "slowloris": phase_slowloris,
}


# ---- the report ---------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def answers(counts: dict[str, int]) -> str:
    """``{"200": 3}`` as ``3 x 200``."""
    return ", ".join(f"{n} x {line}" for line, n in counts.items()) or "none"


def summary_rows(results: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """(phase, what was measured, goal, met) for the table; phases that failed say so."""
    phases = results["phases"]
    for name in PHASES:
        if name not in phases:
            continue
        p = phases[name]
        if "error" in p:
            yield name, f"harness error: {p['error'][:150]}", "-", "-"
            continue
        if name == "fuzz":
            rss = p["rss"]
            good = p["good_request_after"]["status"]
            outcomes = ", ".join(f"{k}: {v}" for k, v in list(p["outcomes"].items())[:6])
            yield (
                "fuzz",
                f"{p['images_sent']} images in {p['requests']} requests ({outcomes}); 5xx/dropped: "
                f"{p['findings']}; good request after: {good}; RSS {fmt(rss['before_mb'])} / "
                f"{fmt(rss['peak_mb'])} / {fmt(rss['after_mb'])} MB (before/peak/after)",
                "0 5xx/dropped, 200 after",
                met(p["findings"] == 0 and good == 200),
            )
        elif name == "memory":
            for label, s in p["strips"].items():
                killed = " (killed by the harness at the RSS limit)" if s["killed_at_rss_limit"] else ""
                yield (
                    f"memory {label.removeprefix('strip_').replace('rgba_png_', 'RGBA ')} PNG",
                    f"{s['status']} in {s['seconds']:.1f} s; RSS peak {fmt(s['peak_mb'])} MB (before "
                    f"{fmt(s['before_mb'])}), after {fmt(s['after_mb'])} MB{killed}",
                    "-",
                    "-",
                )
            b = p["burst"]
            after = ", ".join(f"+{k} {fmt(v)}" for k, v in b["after_mb"].items())
            yield (
                "memory burst",
                f"{b['concurrent']} large images x {b['rounds']} rounds ({answers(b['statuses'])}); RSS "
                f"baseline {fmt(b['baseline_mb'])}, peak {fmt(b['peak_mb'])}, {after} MB; retained "
                f"{fmt(b['retained_mb'])} MB",
                "-",
                "-",
            )
        elif name == "saturation":
            rates = ", ".join(f"c={c}: {r['images_per_s']:.2f}" for c, r in p["rates"].items())
            yield "saturation rate", f"images/s {rates}; best c={p['best']['concurrency']}", "-", "-"
            o = p["overload"]
            l200, l503 = o["latency_200_ms"] or {}, o["latency_503_ms"] or {}
            cap = o["honour_retry_after_cap_s"]
            honoured = f"up to {cap:g} s" if cap else "no"
            yield (
                f"saturation {o['clients']} clients",
                f"200: {o['count_200']}, 503: {o['count_503']} ({o['retry_after_503']} with Retry-After), "
                f"504: {o['count_504']}, other: {o['count_other']}; goodput {o['goodput_per_s']:.2f}/s = "
                f"{fmt(o['goodput_vs_best'], 2)} x best; 200 p50/p99 {fmt(l200.get('p50'))}/"
                f"{fmt(l200.get('p99'))} ms; 503 p50/p99 {fmt(l503.get('p50'))}/{fmt(l503.get('p99'))} ms; "
                f"RSS peak {fmt(o['rss']['peak_mb'])} MB; Retry-After honoured: {honoured}",
                "-",
                "-",
            )
        elif name == "soak":
            growth = p["growth_pct"]
            yield (
                "soak",
                f"c={p['concurrency']}, {p['minutes']:g} min: {p['images_per_s']:.2f} images/s, "
                f"{p['errors']} errors; RSS {fmt(p['rss_from_mb'])} MB at {p['growth_from_s']:g} s -> "
                f"{fmt(p['rss_end_mb'])} MB at the end ({fmt(growth, 2)}%)",
                "growth <= 5%, 0 errors",
                met(None if growth is None else growth <= 5.0 and p["errors"] == 0),
            )
        elif name == "hotswap":
            yield (
                "hotswap",
                f"{p['replacements']} replacements, loads {fmt(p['loads_before'])} -> "
                f"{fmt(p['loads_after'])} (not seen: {p['loads_not_seen_within_10s']}), load failures "
                f"{fmt(p['load_failures_after'])}; "
                f"{p['client']['requests']} requests, {p['failed_requests']} failed",
                "0 failed requests",
                met(p["failed_requests"] == 0),
            )
        elif name == "kill":
            ok = (
                p["unreadable_onnx"] == 0
                and not p["scratch_dirs_left"]
                and not p["load_failures"]
                and p["failed_requests"] == 0
            )
            yield (
                "kill",
                f"{p['kills']} kills, {p['completed_exports']} exports completed (one takes "
                f"{p['export_s']:.0f} s); unreadable .onnx {p['unreadable_onnx']}; stray files "
                f"{p['stray_count']}, scratch dirs left {len(p['scratch_dirs_left'])}; load failures "
                f"{fmt(p['load_failures'])}; {p['client']['requests']} requests, "
                f"{p['failed_requests']} failed",
                "0 unreadable, 0 scratch dirs left, 0 load failures, 0 failed",
                met(ok),
            )
        elif name == "slowloris":
            for variant in ("headers", "body"):
                v = p[variant]
                checks = "; ".join(
                    f"{c['held_open']} open after {c['after_s']:g} s ({c['closed_by_server']} closed by the "
                    f"server: {answers(c['server_answers'])}; normal request "
                    f"{c['normal_request']['status']}, RSS {fmt(c['rss_mb'])} MB)"
                    for c in v["checks"]
                )
                label = "half header" if variant == "headers" else "slow body"
                statuses = [c["normal_request"]["status"] for c in v["checks"]]
                yield (
                    f"slowloris {label}",
                    f"{v['opened']}/{v['connections']} opened; {checks}",
                    "normal requests 200",
                    met(bool(statuses) and all(s == 200 for s in statuses)),
                )


def header_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    env = " ".join(f"{k}={v}" for k, v in results["service_env"].items()) or "none"
    git = results.get("repo_git") or {}
    quick = " **Quick (smoke) run: not the real figures.**" if results["quick"] else ""
    return (
        f"Measured {m['date_utc']} on {m['cpu']}, {m['cores']} cores; service from `{results['repo']}` "
        f"(commit {git.get('commit') or '?'}, {git.get('changed_files', '?')} changed files); service "
        f"environment: {env}.{quick}"
    )


def markdown(results: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The table for bench/README.md; with ``before``, that run's figures in a column of their own."""
    if before is None:
        lines = [header_line(results), "", "| phase | measured | goal | met |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
        return "\n".join(lines)
    old = {phase: measured for phase, measured, _, _ in summary_rows(before)}
    lines = [f"Before: {header_line(before)}", "", f"After: {header_line(results)}", ""]
    lines += ["| phase | before | after | goal | met (after) |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {old.get(a, '-')} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    return "\n".join(lines)


def merged(paths: list[Path]) -> dict[str, Any]:
    """Results files as one: the first file's header, each phase from the last file that has it."""
    runs = [json.loads(path.read_text()) for path in paths]
    result = {**runs[0], "phases": {}}
    for run in runs:
        result["phases"].update(run["phases"])
    return result


def console(results: dict[str, Any]) -> str:
    lines = [header_line(results).replace("**", "")]
    for phase, measured, goal, ok in summary_rows(results):
        lines.append(f"{phase:<26} {ok.replace('*', ''):<4} {measured}  [goal: {goal}]")
    return "\n".join(lines)


def git_info(repo: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "changed_files": len(changed)}


# ---- main ---------------------------------------------------------------------------------------------
def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key, value


def seconds_list(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated, run in the order above")
    p.add_argument("--quick", action="store_true", help="every phase shrunk: a smoke run of a few minutes")
    p.add_argument(
        "--repo", type=Path, default=REPO, help="checkout whose service (and exporter) is measured"
    )
    p.add_argument(
        "--service-env", type=env_pair, action="append", default=[], metavar="K=V", help="env of the service"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT})")
    p.add_argument("--readme", action="store_true", help="write the table into bench/README.md")
    p.add_argument("--seed", type=int, default=0, help="fuzz mutations and kill moments")
    p.add_argument("--rss-limit-mb", type=float, default=8192.0, help="SIGKILL the service above this RSS")
    p.add_argument("--fuzz-images", type=int, help="/classify requests of the fuzz (default 10000)")
    p.add_argument("--soak-minutes", type=float, help="default 30")
    p.add_argument("--soak-concurrency", type=int, help="default: the best of the saturation phase, else 8")
    p.add_argument("--swaps", type=int, help="hotswap replacements (default 100)")
    p.add_argument("--kills", type=int, help="killed exports (default 20)")
    p.add_argument("--slowloris-wait", type=seconds_list, help="seconds to check at, e.g. 15,70")
    p.add_argument("--retry-after-cap", type=float, default=30.0, help="longest Retry-After a client honours")
    p.add_argument(
        "--no-honour-retry-after", action="store_true", help="saturation and soak clients retry at once"
    )
    p.add_argument(
        "--render",
        type=Path,
        action="append",
        metavar="JSON",
        help="run nothing: print (and with --readme write) the table of these results files, phases of "
        "later files replacing earlier ones",
    )
    p.add_argument("--before", type=Path, metavar="JSON", help="with --render: the old code's results")
    p.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)  # the kill phase's helper
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint)
        return 0
    if args.render:
        rendered = merged(args.render)
        print(console(rendered), flush=True)
        if args.readme:
            before = merged([args.before]) if args.before else None
            write_readme(markdown(rendered, before), README_START, README_END)
        return 0
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        print(f"unknown phases: {', '.join(unknown)} (choose from {', '.join(PHASES)})", file=sys.stderr)
        return 2
    repo = args.repo.resolve()
    if not (repo / "service" / "__main__.py").is_file():
        print(f"{repo} has no service/__main__.py", file=sys.stderr)
        return 2
    atexit.register(_stop_all)
    signal.signal(signal.SIGTERM, _terminated)
    prepare_images()
    ctx = Context(
        args=args,
        sizes=QUICK if args.quick else Sizes(),
        repo=repo,
        service_env=dict(args.service_env),
        work=STRESS_WORK / args.out.stem,
        photos=load_images(),
    )
    results: dict[str, Any] = {
        "quick": args.quick,
        "repo": str(repo),
        "repo_git": git_info(repo),
        "service_env": ctx.service_env,
        "args": {
            k: v if isinstance(v, (int, float, bool, type(None))) else str(v) for k, v in vars(args).items()
        },
        "sizes": dataclasses.asdict(ctx.sizes),
        "machine": machine(),
        "phases": {},
    }
    started = time.perf_counter()
    for name in [p for p in PHASES if p in phases]:
        log(f"=== phase {name}")
        began = time.perf_counter()
        try:
            results["phases"][name] = PHASE_FUNCTIONS[name](ctx)
        except KeyboardInterrupt:  # the phase's finally blocks have stopped its processes by now
            log(f"interrupted during phase {name}; {args.out} has the phases before it")
            return 130
        except Exception as exc:
            log(f"phase {name} failed: {type(exc).__name__}: {exc}")
            results["phases"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        results["phases"][name]["wall_s"] = round(time.perf_counter() - began, 1)
        results["wall_s"] = round(time.perf_counter() - started, 1)
        write_json(args.out, results)
    log(f"wrote {args.out} ({results['wall_s']:.0f} s)")
    print(console(results), flush=True)
    if args.readme:
        write_readme(markdown(results), README_START, README_END)
        log("updated bench/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
