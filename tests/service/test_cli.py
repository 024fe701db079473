"""``python -m service``: options, environment variables, and a real start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from contract_models import colour_model, free_port, publish
from svc_testkit import image_bytes, wait_until

from service.__main__ import main, parse_settings

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_every_option_and_its_environment_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in ("--models-dir", "--host", "--port", "--default-model", "--log-level", "--providers",
                   "--max-batch-size", "--max-queue-delay-ms", "--max-upload-bytes", "--watch"):  # fmt: skip
        assert option in result.stdout, option
    for env in ("SERVE_MODELS_DIR", "SERVE_PORT", "SERVE_AUTH_TOKEN", "SERVE_ADMIN_TOKEN"):
        assert env in result.stdout, env
    assert "--auth-token" not in result.stdout  # secrets come from the environment only


def test_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_PORT", "9000")
    monkeypatch.setenv("SERVE_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("SERVE_WATCH", "false")
    monkeypatch.setenv("SERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    from_env = parse_settings([])
    assert (from_env.port, str(from_env.models_dir), from_env.watch) == (9000, "/srv/models", False)
    assert from_env.cors_origin_list == ["https://a.example", "https://b.example"]
    overridden = parse_settings(
        ["--port", "9100", "--models-dir", "elsewhere", "--watch", "--providers", "cpu"]
    )
    assert (overridden.port, str(overridden.models_dir), overridden.watch) == (9100, "elsewhere", True)
    assert overridden.provider_list == ["CPUExecutionProvider"]


def test_invalid_settings_exit_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "not-a-port"]) == 2
    assert "port" in capsys.readouterr().err


def test_python_m_service_serves_a_models_directory(tmp_path: Path) -> None:
    publish(tmp_path / "colours.onnx", colour_model())
    port = free_port()
    env = os.environ | {"SERVE_PROVIDERS": "cpu", "SERVE_INTRA_OP_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--models-dir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz").status_code == 200
            except httpx.TransportError:
                return process.poll() is not None  # stop waiting if it died

        wait_until(ready, timeout=60, what="python -m service ready")
        assert process.poll() is None
        response = httpx.post(f"{url}/classify", files={"image": ("cat.png", image_bytes(), "image/png")})
        assert response.status_code == 200 and response.json()["predictions"][0]["label"] == "red"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert "Traceback" not in stderr.decode()
