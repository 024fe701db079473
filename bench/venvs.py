"""The peers' own virtualenvs under ``bench/.work``: installing TorchServe or PyTriton into the project's
environment would downgrade numpy and protobuf there, so each peer runs from a venv of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness import log


def ensure_venv(venv: Path, packages: list[str]) -> Path:
    """The python of ``venv`` holding ``packages``: made once, made afresh when the list changes.

    pip's output goes to ``venv/pip.log``; a failed install raises with that path.
    """
    python = venv / "bin" / "python"
    marker = venv / "bench-packages.txt"
    wanted = "\n".join(packages) + "\n"
    if python.is_file() and marker.is_file() and marker.read_text() == wanted:
        return python
    log(f"making {venv}: {' '.join(packages)}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip_log = venv / "pip.log"
    with pip_log.open("w") as out:
        done = subprocess.run(
            [str(python), "-m", "pip", "install", *packages],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=3600,
        )
    if done.returncode:
        raise RuntimeError(f"pip install into {venv} failed ({done.returncode}); see {pip_log}")
    marker.write_text(wanted)
    return python


def venv_versions(python: Path, packages: tuple[str, ...]) -> dict[str, str | None]:
    """The venv's Python version and each package's installed version (None: not installed)."""
    script = (
        "import json, platform, sys\n"
        "from importlib.metadata import PackageNotFoundError, version\n"
        "found = {'python': platform.python_version()}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        found[name] = version(name)\n"
        "    except PackageNotFoundError:\n"
        "        found[name] = None\n"
        "print(json.dumps(found))\n"
    )
    run = subprocess.run([str(python), "-c", script, *packages], capture_output=True, text=True, check=True)
    found: dict[str, str | None] = json.loads(run.stdout)
    return found
