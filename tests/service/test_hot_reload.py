"""Hot reload under traffic: new versions swap in atomically, broken files never replace a good one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from contract_models import colour_model, metric_value, publish
from svc_testkit import (
    LiveServer,
    gate_model,
    image_bytes,
    make_settings,
    wait_ready,
    wait_until,
)

PNG = {"content-type": "image/png"}
FRENCH = ("rouge", "vert", "bleu")


class Traffic:
    """Posts red images in a loop and records (status, version, label) of every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                response = http.post(
                    "/classify?crops=1&top_k=1", content=image_bytes((250, 0, 0)), headers=PNG
                )
                body = response.json()
                if response.status_code == 200:
                    self.answers.append((200, body["version"], body["predictions"][0]["label"]))
                else:
                    self.answers.append((response.status_code, "", str(body)))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def count(self) -> int:
        return len(self.answers)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[LiveServer, httpx.Client, Path]]:
    publish(tmp_path / "colours.onnx", colour_model(version="v1"))
    with LiveServer(make_settings(tmp_path, watch=True)) as server, httpx.Client(base_url=server.url) as http:
        yield server, http, tmp_path


def served(http: httpx.Client, name: str = "colours") -> dict:
    return http.get(f"/models/{name}").json()


def test_new_versions_swap_in_under_traffic_and_broken_files_keep_the_old(live: tuple) -> None:
    _server, http, directory = live
    with Traffic(str(http.base_url)) as traffic:
        wait_until(lambda: traffic.count() >= 3, what="traffic")
        publish(directory / "colours.onnx", colour_model(FRENCH, version="v2"))
        wait_until(lambda: served(http)["version"] == "v2", what="v2 swapped in")
        seen = traffic.count()
        wait_until(lambda: traffic.count() >= seen + 3, what="traffic on v2")

        (directory / "colours.onnx").write_bytes(b"\x08\x07 corrupt, half-copied model")
        wait_until(lambda: served(http)["error"] is not None, what="the corrupt file reported")
        info = served(http)
        assert info["status"] == "ready" and info["version"] == "v2"

        publish(directory / "colours.onnx", colour_model(version="v3", drop=["resize_size"]))
        wait_until(lambda: "resize_size" in (served(http)["error"] or ""), what="the refused file reported")
        seen = traffic.count()
        wait_until(lambda: traffic.count() >= seen + 3, what="traffic after the broken files")
    answers = traffic.answers
    assert all(status == 200 for status, _, _ in answers), [a for a in answers if a[0] != 200][:3]
    versions = [version for _, version, _ in answers]
    first_v2 = versions.index("v2")
    assert set(versions[:first_v2]) == {"v1"} and set(versions[first_v2:]) == {"v2"}  # one clean switch
    assert answers[-1][2] == "rouge"  # the new labels answer afterwards
    assert served(http)["version"] == "v2" and served(http)["status"] == "ready"
    metrics = http.get("/metrics").text
    assert metric_value(metrics, "resnet_serve_model_loads_total", {"model": "colours"}) == 2
    assert metric_value(metrics, "resnet_serve_model_load_failures_total", {"model": "colours"}) >= 2
    assert metric_value(metrics, "resnet_serve_model_info", {"model": "colours", "version": "v1"}) == 0


def test_requests_in_flight_finish_on_the_old_session(live: tuple) -> None:
    server, http, directory = live
    registry = server.app.state.service.registry
    old = registry.resolve("colours")
    gate = gate_model(server.app, "colours")
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(http.post, "/classify?top_k=1", content=image_bytes((250, 0, 0)), headers=PNG)
        assert gate.entered.wait(10)
        publish(directory / "colours.onnx", colour_model(FRENCH, version="v2"))
        wait_until(lambda: served(http)["version"] == "v2", what="v2 swapped in")
        fresh = http.post("/classify?top_k=1", content=image_bytes((250, 0, 0)), headers=PNG).json()
        assert (fresh["version"], fresh["predictions"][0]["label"]) == ("v2", "rouge")
        assert old.session is not None  # still held by the request in flight
        gate.gate.set()
        finished = in_flight.result().json()
    assert (finished["version"], finished["predictions"][0]["label"]) == ("v1", "red")
    wait_until(lambda: old.session is None, what="the old session released")


def test_files_appear_and_disappear(live: tuple) -> None:
    _server, http, directory = live
    publish(directory / "extra.onnx", colour_model(version="x1"))
    wait_ready(http, ["colours", "extra"])
    response = http.post("/classify?model=extra", content=image_bytes(), headers=PNG)
    assert response.status_code == 200 and response.json()["version"] == "x1"
    (directory / "extra.onnx").unlink()
    wait_until(lambda: http.get("/models/extra").status_code == 404, what="extra unloaded")
    assert http.post("/classify?model=extra", content=image_bytes(), headers=PNG).status_code == 404
    assert http.post("/classify", content=image_bytes(), headers=PNG).json()["model"] == "colours"
