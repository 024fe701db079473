"""Loading and swapping versions: a loaded model serves at once, and a version checked is the one served."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from contract_models import colour_model, publish, with_outputs
from svc_testkit import image_bytes, make_settings, running_client

from service import loader
from service.batcher import DynamicBatcher
from service.errors import ModelNotFound
from service.loader import ModelLoader
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.routers import v2

RED = np.full((1, 8, 8, 3), (250, 0, 0), dtype=np.uint8)


def test_a_loaded_model_answers_through_its_batcher_at_once(tmp_path: Path) -> None:
    """Whatever the graph calls its logits output, the loader returns a model with a running batcher."""
    path = publish(tmp_path / "scores.onnx", with_outputs(colour_model(), "scores", "probs"))

    async def load_and_submit() -> np.ndarray:
        model = await ModelLoader(make_settings(tmp_path), Metrics()).load("scores", path)
        try:
            return (await model.batcher.submit(RED)).outputs
        finally:
            await model.batcher.close()

    logits = asyncio.run(load_and_submit())
    assert logits.shape == (1, 3) and logits.argmax() == 0


def test_a_version_swapped_out_is_not_served_under_its_name(tmp_path: Path) -> None:
    publish(tmp_path / "colours.onnx", colour_model(version="v1"))

    async def swap() -> str:
        registry = ModelRegistry(make_settings(tmp_path), Metrics())
        await registry.scan()
        assert registry.resolve("colours", "v1").metadata.version == "v1"
        publish(tmp_path / "colours.onnx", colour_model(version="v2"))
        await registry.scan()
        try:
            with pytest.raises(ModelNotFound, match="has no version 'v1' \\(serving 'v2'\\)"):
                async with registry.use("colours", "v1"):
                    pass
            async with registry.use("colours") as served:
                return served.metadata.version
        finally:
            await registry.close()

    assert asyncio.run(swap()) == "v2"


def test_v2_infer_serves_the_version_it_admitted_or_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version swapped in while the body is read does not answer a request for the old one."""
    publish(tmp_path / "colours.onnx", colour_model(version="v1"))
    red = base64.b64encode(image_bytes((250, 0, 0))).decode()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [red]}]}
    with running_client(make_settings(tmp_path)) as client:
        model = client.app.state.service.registry.resolve("colours")  # type: ignore[attr-defined]
        real = v2.parse_request

        def swapped_while_reading(body: bytes, header_length: str | None) -> Any:
            model.metadata = replace(model.metadata, version="v2")  # as if v2 had been swapped in
            return real(body, header_length)

        monkeypatch.setattr(v2, "parse_request", swapped_while_reading)
        response = client.post("/v2/models/colours/versions/v1/infer", json=body)
        assert response.status_code == 404
        assert response.json() == {"error": "model 'colours' has no version 'v1' (serving 'v2')"}


def test_only_a_run_with_nothing_queued_behind_it_gives_the_arena_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arena shrinkage costs a run a few per cent: a burst's last run asks for it, at most every 5 s."""
    path = publish(tmp_path / "colours.onnx", colour_model())
    clock, queued, asked = [100.0], [0], []

    class Recording:
        def __init__(self, session: Any) -> None:
            self.session = session

        def run(self, outputs: Any, feeds: dict[str, np.ndarray], run_options: Any = None) -> Any:
            asked.append(run_options is not None)
            return self.session.run(outputs, feeds, run_options)

    monkeypatch.setattr(loader.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(DynamicBatcher, "depth", property(lambda _: queued[0]))

    async def scenario() -> None:
        model = await ModelLoader(make_settings(tmp_path), Metrics()).load("colours", path)
        model.session = Recording(model.session)
        try:
            for now, behind in ((100.0, 0), (101.0, 0), (106.0, 3), (107.0, 0), (108.0, 0)):
                clock[0], queued[0] = now, behind
                assert model.infer(RED).shape == (1, 3)
        finally:
            await model.batcher.close()

    asyncio.run(scenario())
    assert asked == [True, False, False, True, False]


def test_a_preferred_default_that_is_still_loading_stays_the_default(tmp_path: Path) -> None:
    """The default does not flip from the CIFAR model to the ImageNet one when the latter finishes loading:
    until then a request for the default model is told it is still loading (503)."""
    from service.errors import ServiceUnavailable
    from service.registry import ModelEntry, ModelState

    registry = ModelRegistry(make_settings(tmp_path), Metrics())
    cifar = ModelEntry("resnet20-cifar10", tmp_path / "resnet20-cifar10.onnx", state=ModelState.READY)
    cifar.current = object()  # type: ignore[assignment]  # serving: any version object
    imagenet = ModelEntry("resnet50-imagenet", tmp_path / "resnet50-imagenet.onnx")  # loading
    registry._entries = {e.name: e for e in (cifar, imagenet)}
    assert registry.default_name() == "resnet50-imagenet"
    with pytest.raises(ServiceUnavailable, match="still loading"):
        registry.resolve(None)
    imagenet.state = ModelState.FAILED  # a file that does not load leaves the CIFAR model the default
    assert registry.default_name() == "resnet20-cifar10"


def test_the_base_models_directory_is_served_beneath_the_models_directory(tmp_path: Path) -> None:
    """The image's shipped models stay served when a models directory is mounted over /app/models, and a
    file of the same name in the mounted directory replaces the shipped one."""
    base, mounted = tmp_path / "shipped", tmp_path / "mounted"
    for name in ("resnet50-imagenet", "resnet20-cifar10"):
        publish(base / f"{name}.onnx", colour_model())
    publish(mounted / "resnet20-cifar10.onnx", colour_model())
    publish(mounted / "mine.onnx", colour_model())
    settings = make_settings(mounted, base_models_dir=base)
    with running_client(settings, ["resnet50-imagenet", "resnet20-cifar10", "mine"]) as client:
        files = {m["name"]: m["file"] for m in client.get("/models").json()["models"]}
        assert files == {
            "mine": str(mounted / "mine.onnx"),
            "resnet20-cifar10": str(mounted / "resnet20-cifar10.onnx"),  # the mounted file wins
            "resnet50-imagenet": str(base / "resnet50-imagenet.onnx"),
        }
        assert client.get("/models").json()["default_model"] == "resnet50-imagenet"
