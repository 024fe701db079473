"""TorchServe as a benchmark peer: the same random-weight ResNet-50, served as TorchServe's users serve it.

Two models, each measured with ``loadgen.py --protocol torchserve`` (the JPEG as the raw body of
``POST /predictions/{model}``):

* ``ten_crop``: a custom handler (``bench/torchserve/ten_crop_handler.py``, a ``BaseHandler`` subclass)
  doing the service's test: resize the shorter side to 256, 4 corner + centre 224 crops and their
  mirrors, ImageNet mean/std, softmax averaged over the 10; a TorchServe batch of N requests is one
  forward of N x 10 rows. Compare with the service's ``crops=10``.
* ``stock_1crop``: TorchServe's own ``image_classifier`` handler (Resize 256, CenterCrop 224, top 5).
  Compare with the service's ``crops=1``.

Both archives hold the eager model: ``bench/torchserve/resnet50.py`` (the one ``nn.Module`` class
TorchServe's loader wants, built like ``training.models.build_model("resnet50")``), ``training/models.py``
as an extra file (named ``training_models.py``) and ``bench/.work/resnet50-random.pt`` as the state dict.

TorchServe lives in its own virtualenv (``bench/.work/venv-torchserve``): installed into the project's
``.venv`` it would downgrade numpy and protobuf there. Its batching (workers, torch threads per worker,
batch size, max batch delay) is tuned per model with short loads before the measured phases; every
setting tried and its figures are in the results. Everything generated goes to ``bench/.work/torchserve/``.

    .venv/bin/python bench/peer_torchserve.py --quick --concurrency 1,8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from common import BENCH, REPO, RESULTS_DIR, STATE_PATH, WORK, prepare_images, write_json
from harness import Server, descendants, free_port, load, log, processes
from venvs import ensure_venv, venv_versions

VENV = WORK / "venv-torchserve"
TS_WORK = WORK / "torchserve"
STORE = TS_WORK / "model-store"
RUNS = TS_WORK / "runs"
HANDLERS = BENCH / "torchserve"
MODEL_FILE = HANDLERS / "resnet50.py"
# training/models.py travels in the .mar under this name (MODEL_FILE imports it): a plain `models` would
# be shadowed by the repository's models/ directory for mypy and for anything run from the repo root.
NETWORK_FILE = REPO / "training" / "models.py"
NETWORK_MODULE = "training_models"

# torch/torchvision: the exact pair this machine's wheels hold; captum: the stock vision handler imports
# it; pyyaml: ts.utils imports yaml, which the torchserve wheel does not declare.
PACKAGES = (
    "torch==2.14.1",
    "torchvision==0.29.1",
    "torchserve",
    "torch-model-archiver",
    "captum",
    "pyyaml",
    "pillow",
    "numpy",
)
VERSIONED = ("torchserve", "torch-model-archiver", "torch", "torchvision", "captum", "pillow", "numpy")


@dataclass(frozen=True)
class Settings:
    """What a TorchServe user tunes for CPU throughput."""

    workers: int  # worker processes (min = max)
    threads: int  # torch intra-op threads per worker (OMP_NUM_THREADS)
    batch_size: int  # requests per forward
    max_batch_delay_ms: int  # how long a worker waits to fill a batch

    @property
    def label(self) -> str:
        return f"w{self.workers}-t{self.threads}-b{self.batch_size}-d{self.max_batch_delay_ms}"


@dataclass(frozen=True)
class Phase:
    model: str
    handler: str  # a handler file, or the name of one of TorchServe's own
    crops: int
    candidates: tuple[Settings, ...]  # tried with short loads; the best is measured
    quick_candidates: tuple[Settings, ...]


# 2 cores: one worker using both, or two of one thread each; batching across requests or not.
PHASES = {
    "ten_crop": Phase(
        "resnet50-10crop",
        str(HANDLERS / "ten_crop_handler.py"),
        10,
        (
            Settings(1, 2, 1, 0),
            Settings(1, 2, 4, 20),
            Settings(1, 2, 8, 50),
            Settings(2, 1, 1, 0),
            Settings(2, 1, 4, 20),
        ),
        (Settings(1, 2, 4, 20), Settings(2, 1, 1, 0)),
    ),
    "stock_1crop": Phase(
        "resnet50-stock",
        "image_classifier",
        1,
        (
            Settings(1, 2, 1, 0),
            Settings(1, 2, 8, 10),
            Settings(1, 2, 16, 20),
            Settings(2, 1, 1, 0),
            Settings(2, 1, 8, 10),
        ),
        (Settings(1, 2, 8, 10), Settings(2, 1, 1, 0)),
    ),
}
TUNE_CONCURRENCY = 8
TUNE_DURATIONS = {TUNE_CONCURRENCY: (10.0, 20.0)}
QUICK_TUNE_DURATIONS = {TUNE_CONCURRENCY: (4.0, 8.0)}


def versions(python: Path) -> dict[str, str | None]:
    """Installed versions in TorchServe's venv (its own Python too) and the Java that runs the frontend."""
    found = venv_versions(python, VERSIONED)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True)
    found["java"] = java.stderr.splitlines()[0] if java.stderr else None
    return found


def build_mar(phase: Phase) -> Path:
    """``torch-model-archiver`` -> ``model-store/{model}.mar``; again only when an input is newer."""
    mar = STORE / f"{phase.model}.mar"
    inputs = [STATE_PATH, MODEL_FILE, NETWORK_FILE]
    if Path(phase.handler).is_file():
        inputs.append(Path(phase.handler))
    if mar.is_file() and mar.stat().st_mtime > max(p.stat().st_mtime for p in inputs):
        return mar
    STORE.mkdir(parents=True, exist_ok=True)
    log(f"archiving {mar.name}")
    network = TS_WORK / "staging" / f"{NETWORK_MODULE}.py"
    network.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(NETWORK_FILE, network)
    command = [
        str(VENV / "bin" / "torch-model-archiver"), "--model-name", phase.model, "--version", "1.0",
        "--model-file", str(MODEL_FILE), "--serialized-file", str(STATE_PATH),
        "--extra-files", str(network), "--handler", phase.handler,
        "--export-path", str(STORE), "--force",
    ]  # fmt: skip
    subprocess.run(command, cwd=TS_WORK, check=True)
    return mar


class TorchServe(Server):
    """``torchserve --start --foreground`` from TorchServe's venv, one model with the given settings.

    Ready once the model's workers are (``/ping`` says Healthy as soon as the frontend is up, even while
    a worker fails to load). ``stop`` signals Java itself: the ``torchserve`` launcher does not forward
    signals, so signalling it alone would leave Java and its workers running.
    """

    def __init__(self, phase: Phase, settings: Settings, run_dir: Path) -> None:
        self.model, self.settings, self.run_dir = phase.model, settings, run_dir
        if run_dir.exists():
            shutil.rmtree(run_dir)
        (run_dir / "tmp").mkdir(parents=True)
        port, management, metrics = free_port(), free_port(), free_port()
        self.management_url = f"http://127.0.0.1:{management}"
        model = {
            "1.0": {
                "defaultVersion": True,
                "marName": f"{phase.model}.mar",
                "minWorkers": settings.workers,
                "maxWorkers": settings.workers,
                "batchSize": settings.batch_size,
                "maxBatchDelay": settings.max_batch_delay_ms,
                "responseTimeout": 600,  # as the service's request timeout: a timeout is no measurement
            }
        }
        config = run_dir / "config.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{port}\n"
            f"management_address={self.management_url}\n"
            f"metrics_address=http://127.0.0.1:{metrics}\n"
            f"default_workers_per_model={settings.workers}\n"
            f"models={json.dumps({phase.model: model})}\n"
        )
        command = [
            str(VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
            "--model-store", str(STORE), "--models", f"{phase.model}={phase.model}.mar",
            "--ts-config", str(config),
        ]  # fmt: skip
        env = {
            "OMP_NUM_THREADS": str(settings.threads),  # the workers inherit it: torch's intra-op threads
            "TMPDIR": str(run_dir / "tmp"),  # the launcher's pid file (one TorchServe per TMPDIR)
            "TEMP": str(run_dir / "tmp"),  # Java's tmpdir: the unpacked .mar, the workers' sockets
            "LOG_LOCATION": str(run_dir / "logs"),
            "METRICS_LOCATION": str(run_dir / "logs"),
        }
        super().__init__(
            f"torchserve[{phase.model} {settings.label}]",
            command,
            env,
            port,
            run_dir / "server.log",
            cwd=run_dir,
            ready_path="/ping",
        )

    def wait_ready(self, timeout: float = 300.0) -> float:
        started = time.perf_counter()
        super().wait_ready(timeout)
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                described = httpx.get(f"{self.management_url}/models/{self.model}", timeout=2).json()
                ready = sum(w["status"] == "READY" for w in described[0]["workers"])
                if ready >= self.settings.workers:
                    return time.perf_counter() - started
            except (httpx.HTTPError, ValueError, LookupError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: workers not ready after {timeout:.0f} s; see {self.log_path}")

    def send_stop(self, sig: signal.Signals) -> None:
        """``sig`` to Java, the launcher's child: it stops its workers and exits, and the launcher follows."""
        table = processes()
        for pid in descendants(self.proc.pid, table):
            if table[pid][0] == self.proc.pid:
                os.kill(pid, sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> list[int]:
        killed = super().stop(sig, timeout)
        shutil.rmtree(self.run_dir / "tmp", ignore_errors=True)  # the unpacked .mar, ~100 MB a run
        return killed


async def send(http: httpx.AsyncClient, name: str, data: bytes, options: dict[str, str]) -> httpx.Response:
    """``POST /predictions/{model}`` with the JPEG as the raw body (the model's handler sets the crops)."""
    return await http.post(
        f"/predictions/{options['model']}", content=data, headers={"Content-Type": "image/jpeg"}
    )


def measure(
    phase: Phase, settings: Settings, durations: dict[int, tuple[float, float]], run_dir: Path, out_stem: str
) -> dict[str, Any]:
    """Start TorchServe with ``settings``, load it at each concurrency of ``durations``, stop it."""
    server = TorchServe(phase, settings, run_dir)
    try:
        entry: dict[str, Any] = {"ready_s": round(server.wait_ready(), 1), "by_concurrency": {}}
        for c in durations:
            out = RESULTS_DIR / f"{out_stem}-c{c}.json"
            entry["by_concurrency"][str(c)] = load(
                server, c, durations, out, phase.model, protocol="torchserve", crops=phase.crops
            )
        return entry
    finally:
        server.stop()


def bench_torchserve(
    quick: bool, stamp: str, durations: dict[int, tuple[float, float]], concurrencies: tuple[int, ...]
) -> dict:
    """Each phase: tune on short loads at c=8, then measure the best setting at ``concurrencies``."""
    python = ensure_venv(VENV, list(PACKAGES))
    if not STATE_PATH.is_file():
        from make_model import make_model

        make_model()
    results: dict[str, Any] = {"versions": versions(python), "configs": {}}
    measured = {c: durations[c] for c in concurrencies}
    for key, phase in PHASES.items():
        mar = build_mar(phase)
        tried = []
        for settings in phase.quick_candidates if quick else phase.candidates:
            entry = measure(
                phase,
                settings,
                QUICK_TUNE_DURATIONS if quick else TUNE_DURATIONS,
                RUNS / f"{stamp}{key}-tune-{settings.label}",
                f"{stamp}torchserve-{key}-tune-{settings.label}",
            )
            result = entry["by_concurrency"][str(TUNE_CONCURRENCY)]
            tried.append(
                {
                    "settings": asdict(settings),
                    "images_per_s": result["images_per_s"],
                    "p50_ms": result["latency_ms"]["p50"],
                    "errors": result["errors"],
                    "server_cpu_cores": result["server_cpu_cores"],
                }
            )
        best = max(tried, key=lambda t: (t["errors"] == 0, t["images_per_s"]))
        chosen = Settings(**best["settings"])
        log(f"torchserve {key}: chose {chosen.label} of {[t['settings'] for t in tried]}")
        entry = measure(phase, chosen, measured, RUNS / f"{stamp}{key}", f"{stamp}torchserve-{key}")
        results["configs"][key] = {
            "model": phase.model,
            "handler": Path(phase.handler).name,
            "crops": phase.crops,
            "mar_bytes": mar.stat().st_size,
            "settings": {**asdict(chosen), "rows_per_batch": chosen.batch_size * phase.crops},
            "tuning": {"concurrency": TUNE_CONCURRENCY, "tried": tried},
            **entry,
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="two settings tuned per model, short phases")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts")
    parser.add_argument("--warmup", type=float, help="seconds (default 5 quick, 20 full)")
    parser.add_argument("--duration", type=float, help="seconds of each window (default 15 quick, 60 full)")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default bench/.work/results/[quick-]torchserve.json)"
    )
    args = parser.parse_args()
    concurrencies = tuple(int(c) for c in args.concurrency.split(","))
    warmup = args.warmup if args.warmup is not None else (5.0 if args.quick else 20.0)
    duration = args.duration if args.duration is not None else (15.0 if args.quick else 60.0)
    stamp = "quick-" if args.quick else ""
    prepare_images()
    load_average = os.getloadavg()  # anything else running makes the figures meaningless
    results = bench_torchserve(
        args.quick, stamp, {c: (warmup, duration) for c in concurrencies}, concurrencies
    )
    out = args.out or RESULTS_DIR / f"{stamp}torchserve.json"
    write_json(out, {"load_average_at_start": load_average, **results})
    print(f"load average at start {load_average}; {json.dumps(results['versions'])}")
    for key, config in results["configs"].items():
        print(f"{key}: chose {config['settings']}")
        for tried in config["tuning"]["tried"]:
            print(f"  tried {tried}")
        for c, result in config["by_concurrency"].items():
            latency = result["latency_ms"]
            print(
                f"  c={c}: {result['images_per_s']:.3f} images/s, p50 {latency['p50']} ms, "
                f"p99 {latency['p99']} ms, {result['completed']} answers, {result['errors']} errors, "
                f"server CPU {result['server_cpu_cores']} cores"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
