"""Class activation maps (``explain=true``): exact against a numpy reference, in the image's coordinates,
off for models without a feature output, and bad parameters refused with 422."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from contract_models import colour_cam_model, colour_model, metric_value, publish
from fastapi.testclient import TestClient
from PIL import Image
from svc_testkit import image_bytes, make_settings, running_client

from service.crop_geometry import crop_windows, resized_size
from service.preprocess import preprocess

CROP, RESIZE, CELL = 32, 36, 4
GRID = CROP // CELL


def split_photo(width: int = 50, height: int = 40, blue_from: int = 30, seed: int = 0) -> bytes:
    """A PNG, red left of column ``blue_from`` and blue from it on, with noise so no two crops agree."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (height, width, 3)).astype(np.int32)
    pixels[:, :blue_from, 0] += 180
    pixels[:, blue_from:, 2] += 180
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def decode_heatmap(entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """(gray, alpha) of an explanation's PNG, checked against its declared grid."""
    image = Image.open(io.BytesIO(base64.b64decode(entry["heatmap_png"])))
    assert image.format == "PNG" and image.mode == "LA"
    pixels = np.asarray(image)
    assert pixels.shape == (entry["grid_height"], entry["grid_width"], 2)
    return pixels[..., 0], pixels[..., 1]


@pytest.fixture(scope="module")
def explain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    publish(directory / "cam.onnx", colour_cam_model(crop=CROP, resize=RESIZE, cell=CELL))
    publish(directory / "plain.onnx", colour_model())
    return directory


@pytest.fixture(scope="module")
def cam_client(explain_dir: Path) -> Iterator[TestClient]:
    with running_client(make_settings(explain_dir), names=("cam", "plain")) as client:
        yield client


def classify(client: TestClient, data: bytes, query: str, path: str = "/classify") -> dict:
    response = client.post(f"{path}?{query}", files={"image": ("photo.png", data, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def reference_map(model_path: Path, data: bytes, crops: int, index: int) -> np.ndarray:
    """The class map written out pixel by pixel from the model's own features and weights."""
    from onnx import load, numpy_helper

    model = load(str(model_path))
    weights = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "classifier.weight")
    rows = preprocess(data, resize_size=RESIZE, crop_size=CROP, crops=crops, max_pixels=10**8)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    features = session.run(["features"], {"image": rows})[0]  # [crops, 3, g, g]
    crop_maps = np.tensordot(weights[index], features, axes=([0], [1]))  # [crops, g, g]
    with Image.open(io.BytesIO(data)) as image:
        width, height = resized_size(image.width, image.height, RESIZE)
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    for crop_map, window in zip(crop_maps, crop_windows(width, height, CROP, crops), strict=True):
        for y in range(window.top, window.top + CROP):
            for x in range(window.left, window.left + CROP):
                column = x - window.left
                if window.mirrored:  # the mirrored crop saw this pixel in its column CROP - 1 - column
                    column = CROP - 1 - column
                total[y, x] += crop_map[(y - window.top) // CELL, column // CELL]
                count[y, x] += 1
    grid = np.full((-(-height // CELL), -(-width // CELL)), np.nan)
    for gy in range(grid.shape[0]):
        for gx in range(grid.shape[1]):
            block = (slice(gy * CELL, (gy + 1) * CELL), slice(gx * CELL, (gx + 1) * CELL))
            seen = count[block] > 0
            if seen.any():
                grid[gy, gx] = (total[block][seen] / count[block][seen]).mean()
    return grid


@pytest.mark.parametrize("crops", [10, 1])
def test_the_map_of_a_contract_model_equals_a_numpy_reference(
    cam_client: TestClient, explain_dir: Path, crops: int
) -> None:
    data = split_photo()
    body = classify(
        cam_client, data, f"model=cam&crops={crops}&explain=true&explain_class=blue&explain_class=0"
    )
    blue, red = body["explanations"]
    assert (blue["label"], blue["index"], red["label"], red["index"]) == ("blue", 2, "red", 0)
    probabilities = {p["label"]: p["probability"] for p in body["predictions"]}
    assert blue["probability"] == probabilities["blue"] and red["probability"] == probabilities["red"]
    for entry, index in ((blue, 2), (red, 0)):
        expected = reference_map(explain_dir / "cam.onnx", data, crops, index)
        gray, alpha = decode_heatmap(entry)
        seen = ~np.isnan(expected)
        assert np.array_equal(alpha == 255, seen) and not alpha[~seen].any()
        assert entry["value_min"] == pytest.approx(expected[seen].min(), rel=1e-5)
        assert entry["value_max"] == pytest.approx(expected[seen].max(), rel=1e-5)
        scaled = (expected[seen] - expected[seen].min()) / (expected[seen].max() - expected[seen].min()) * 255
        assert np.abs(gray[seen].astype(float) - scaled).max() <= 0.5 + 1e-3
    if crops == 1:  # the centre crop of a 45x36 image leaves the outer columns unseen
        assert not alpha[:, 0].any() and not alpha[:, -1].any()


def test_the_map_lies_where_the_class_is_in_the_photo(cam_client: TestClient) -> None:
    """Blue on the right of the photo: the blue map's mass is on the right, the red map's on the left,
    with 10 crops (mirrors put back unflipped) as with one."""
    for crops in (10, 1):
        body = classify(cam_client, split_photo(blue_from=30), f"model=cam&crops={crops}&explain=true")
        (top,) = body["explanations"]  # the top-1 class by default
        assert top["label"] == body["predictions"][0]["label"] == "red"
        for label, side in (("blue", "right"), ("red", "left")):
            entry = classify(
                cam_client,
                split_photo(blue_from=30),
                f"model=cam&crops={crops}&explain=true&explain_class={label}",
            )["explanations"][0]
            gray, alpha = decode_heatmap(entry)
            weights = np.where(alpha == 255, gray.astype(float), 0.0)
            centre_x = (weights.sum(axis=0) * (np.arange(gray.shape[1]) + 0.5)).sum() / weights.sum()
            boundary = 30 / 50 * gray.shape[1]
            assert (centre_x > boundary) if side == "right" else (centre_x < boundary), (
                label,
                crops,
                centre_x,
            )


def test_probabilities_are_the_same_with_and_without_explain(cam_client: TestClient) -> None:
    data = split_photo(seed=3)
    plain = classify(cam_client, data, "model=cam")
    explained = classify(cam_client, data, "model=cam&explain=true")
    assert "explanations" not in plain and "explain_ms" not in plain["timings"]
    assert plain["predictions"] == explained["predictions"]
    assert explained["timings"]["explain_ms"] >= 0
    assert explained["timings"]["total_ms"] >= explained["timings"]["explain_ms"]


def test_the_batch_endpoint_explains_each_image_and_a_bad_one_fails_alone(cam_client: TestClient) -> None:
    files = [
        ("images", ("split.png", split_photo(), "image/png")),
        ("images", ("broken.png", b"\x89PNG nope", "image/png")),
        ("images", ("blue.png", image_bytes((20, 40, 240), size=(40, 40)), "image/png")),
    ]
    response = cam_client.post("/classify/batch?model=cam&explain=true&explain_class=blue", files=files)
    assert response.status_code == 200
    first, broken, blue = response.json()["results"]
    assert [e["label"] for e in first["explanations"]] == ["blue"]
    assert broken["error"]["code"] == "invalid_image" and broken["explanations"] is None
    _, alpha = decode_heatmap(blue["explanations"][0])
    assert (alpha == 255).all() and blue["explanations"][0]["grid_width"] == GRID + 1  # 40 px at 36: 36x36
    assert blue["timings"]["explain_ms"] >= 0


def test_a_model_without_a_feature_output_says_explanations_are_not_available(cam_client: TestClient) -> None:
    data = image_bytes(size=(40, 40))
    for path in ("/classify", "/classify/batch"):
        field = "image" if path == "/classify" else "images"
        response = cam_client.post(
            f"{path}?model=plain&explain=true", files={field: ("a.png", data, "image/png")}
        )
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "explanation_unavailable"
        assert "explanations not available for this model" in error["message"]
    # the model still classifies, and so does the service
    assert classify(cam_client, data, "model=plain")["predictions"][0]["label"] == "red"
    assert classify(cam_client, data, "model=cam&explain=true")["explanations"]


@pytest.mark.parametrize(
    "query",
    [
        "explain=maybe",
        "explain_class=blue",  # without explain=true
        "explain=true&explain_class=purple",
        "explain=true&explain_class=3",
        "explain=true&explain_class=-1",
        "explain=true&explain_class=blue&explain_class=2",  # the same class twice
        "explain=true" + "&explain_class=red" * 11,
    ],
)
def test_bad_explain_parameters_get_422(cam_client: TestClient, query: str) -> None:
    response = cam_client.post(
        f"/classify?model=cam&{query}", files={"image": ("a.png", image_bytes(), "image/png")}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_parameter"
    assert "Traceback" not in response.text


def test_explanations_are_timed_in_the_metrics(cam_client: TestClient) -> None:
    def count() -> float:
        page = cam_client.get("/metrics").text
        return metric_value(page, "resnet_serve_explain_duration_seconds_count", {"model": "cam"})

    before = count()
    classify(cam_client, split_photo(), "model=cam&explain=true")
    classify(cam_client, split_photo(), "model=cam")
    assert count() == before + 1


def test_models_show_what_explains_them(cam_client: TestClient) -> None:
    models = {m["name"]: m for m in cam_client.get("/models").json()["models"]}
    assert models["cam"]["cam"] == {"features": "features", "weights": "classifier.weight"}
    assert models["plain"]["cam"] is None


# ---------------------------------------------------------------- the ImageNet ResNet-50 (weights tests)

REPO = Path(__file__).resolve().parents[2]
# Hand-drawn boxes (left, top, right, bottom) in the photos' own pixels: the cat's head and shoulders in
# chelsea (451x300; the background right of x=390 is out), the cup with its handle in coffee (600x400; the
# saucer and the table are out).
PHOTOS = {
    "chelsea": ({"Egyptian_cat", "tabby", "tiger_cat"}, (60, 0, 390, 300)),
    "coffee": ({"espresso", "cup", "coffee_mug"}, (170, 15, 415, 305)),
}


@pytest.fixture(scope="module")
def resnet50_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the imported ResNet-50 and its feature output: the published one when it came
    from the cached weights package and has it, else a fresh import."""
    from service.model_contract import read_model_metadata

    pytest.importorskip("torch", reason="the import needs the training extra")
    from training import import_resnet50 as importer

    tarball = REPO / "cache" / importer.TARBALL_NAME
    if not tarball.is_file():
        pytest.skip(f"{tarball} is absent: run `python training/import_resnet50.py` to download it")
    directory = tmp_path_factory.mktemp("r50")
    published = REPO / "models" / importer.MODEL_FILE
    if published.is_file():
        meta = read_model_metadata(published)
        if meta.cam is not None and meta.checkpoint_sha256 == importer.TARBALL_SHA256:
            (directory / published.name).symlink_to(published)
            return directory
    importer.import_resnet50(tarball.parent, directory, tarball)
    return directory


@pytest.mark.weights
@pytest.mark.slow
@pytest.mark.parametrize("crops", [10, 1])
def test_the_resnet50_map_lies_on_the_object_it_names(resnet50_dir: Path, crops: int) -> None:
    """The map of the top-1 class of chelsea (a cat) and coffee (a cup): its centre of mass in the
    hand-drawn box, most of its mass inside, and at least twice as dense inside as outside."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (the dev extra) has the photos")
    settings = make_settings(resnet50_dir, max_batch_size=10)
    with running_client(settings, names=("resnet50-imagenet",)) as client:
        for name, (classes, (left, top, right, bottom)) in PHOTOS.items():
            pixels = getattr(skimage_data, name)()
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            plain = classify(client, buffer.getvalue(), f"crops={crops}")
            body = classify(client, buffer.getvalue(), f"crops={crops}&explain=true")
            assert body["predictions"] == plain["predictions"]
            (entry,) = body["explanations"]
            assert entry["label"] == body["predictions"][0]["label"] and entry["label"] in classes
            gray, alpha = decode_heatmap(entry)
            height, width = pixels.shape[:2]
            resized_width, resized_height = resized_size(width, height, 256)
            # each photo pixel's grid cell (32 pixels of the resized photo: 224 / 7)
            rows = (np.arange(height) * resized_height / height // 32).astype(int)
            cols = (np.arange(width) * resized_width / width // 32).astype(int)
            values = np.where(alpha == 255, gray, 0).astype(float)[rows][:, cols]
            seen = (alpha == 255)[rows][:, cols]
            ys, xs = np.mgrid[0:height, 0:width]
            centre = ((values * xs).sum() / values.sum(), (values * ys).sum() / values.sum())
            assert left <= centre[0] <= right and top <= centre[1] <= bottom, (name, crops, centre)
            inside = (xs >= left) & (xs < right) & (ys >= top) & (ys < bottom)
            share = values[inside].sum() / values.sum()
            assert share > 0.5, (name, crops, share)
            if (~inside & seen).any():  # (chelsea's centre crop sees nothing outside the box)
                density = values[inside & seen].mean() / values[~inside & seen].mean()
                assert density >= 2.0, (name, crops, density)
