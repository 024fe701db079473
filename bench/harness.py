"""What every benchmark server phase shares: a server subprocess, and one load phase against it.

``bench/run.py`` drives the service, the naive baseline and the peers (TorchServe, Triton) through these,
so each is started as its users start it and measured by the same load generator.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from common import REPO, cpu_totals, steal_pct

PY = sys.executable


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processes() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, start time in ticks, user + system CPU ticks) of every live process."""
    found: dict[int, tuple[int, int, int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we read
            continue
        found[int(stat.parent.name)] = (int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))
    return found


def descendants(pid: int, table: dict[int, tuple[int, int, int]] | None = None) -> dict[int, int]:
    """pid -> start time of every live descendant of ``pid`` (the start time tells a reused pid apart)."""
    table = processes() if table is None else table
    tree: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, started, _) in table.items():
            if ppid == parent and child not in tree:
                tree[child] = started
                frontier.append(child)
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants, all threads.

    A peer such as TorchServe serves from a Java frontend plus Python worker processes: its CPU is the tree's.
    """
    table = processes()
    tree = {pid, *descendants(pid, table)}
    return sum(table[p][2] for p in tree if p in table) / os.sysconf("SC_CLK_TCK")


class Server:
    """A server subprocess, up once ``ready_path`` (default: the service's ``/readyz``) answers 200."""

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        port: int,
        log_path: Path,
        cwd: Path = REPO,
        ready_path: str = "/readyz",
    ) -> None:
        self.name, self.port, self.log_path, self.ready_path = name, port, log_path, ready_path
        self.url = f"http://127.0.0.1:{port}"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w")
        log(f"starting {name}: {' '.join(command)}")
        self.proc = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 300.0) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.log_path}")

    def send_stop(self, sig: signal.Signals) -> None:
        """How ``stop`` asks the server to stop: ``sig`` to the process it started."""
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGINT, timeout: float = 30.0) -> list[int]:
        """Ask the server to stop with ``sig``; SIGKILL it after ``timeout`` s, and any process it started
        that outlived it (a peer's backend or worker). Returns the pids that had to be killed."""
        tree = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.send_stop(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        table = processes()
        left = [pid for pid, started in tree.items() if table.get(pid, (0, -1, 0))[1] == started]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if left:
            log(f"{self.name}: killed {len(left)} process(es) it left behind: {left}")
        return left


def load(
    server: Server,
    concurrency: int,
    durations: dict,
    out: Path,
    model: str | None,
    extra: list[str] | None = None,
    protocol: str = "service",
    crops: int = 10,
    url: str | None = None,
) -> dict:
    """Run ``loadgen.py`` against ``server`` (at ``url`` if given: another port of it; ``extra``: more
    loadgen options); its summary, no records."""
    warmup, duration = durations[concurrency]
    command = [
        PY, "bench/loadgen.py", "--url", url or server.url, "--protocol", protocol,
        "--concurrency", str(concurrency), "--crops", str(crops),
        "--warmup", str(warmup), "--duration", str(duration), "--out", str(out),
    ]  # fmt: skip
    if model:
        command += ["--model", model]
    command += extra or []
    cpu_before, t_before, stat_before = cpu_seconds(server.proc.pid), time.perf_counter(), cpu_totals()
    log(f"load {server.name} c={concurrency} ({warmup:g} s warm-up + {duration:g} s)")
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    cpu_after, t_after = cpu_seconds(server.proc.pid), time.perf_counter()
    print(done.stdout.strip(), done.stderr.strip()[-2000:], sep="\n", flush=True)
    result = json.loads(out.read_text())
    result["server_cpu_cores"] = round((cpu_after - cpu_before) / (t_after - t_before), 3)
    result["steal_pct"] = steal_pct(stat_before, cpu_totals())
    result.pop("records")  # kept in the per-phase file under bench/.work/results/
    return result
