"""Fixtures of the service tests: a models directory with tiny ONNX models and a running client."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# Starlette nags about its httpx-based TestClient when it is imported; the tests use it on purpose.
warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")

from contract_models import colour_model, publish  # noqa: E402
from svc_testkit import make_settings, running_client  # noqa: E402


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory serving ``colours`` (predicts the dominant colour of an image)."""
    directory = tmp_path_factory.mktemp("models")
    publish(directory / "colours.onnx", colour_model())
    return directory


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator:
    """A TestClient of an app with default limits whose ``colours`` model is ready."""
    with running_client(make_settings(models_dir)) as test_client:
        yield test_client
