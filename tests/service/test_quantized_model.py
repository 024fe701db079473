"""A quantized model is served like any other, beside its FP32 parent, and says what it is."""

from __future__ import annotations

from pathlib import Path

from contract_models import colour_model, publish, write_colour_photos
from svc_testkit import image_bytes, make_settings, running_client

from training.quantize import quantize_model


def test_the_service_serves_the_int8_model_beside_its_parent(tmp_path: Path) -> None:
    fp32 = publish(tmp_path / "models" / "colours.onnx", colour_model())
    write_colour_photos(tmp_path / "colours", "train", 4, 60, 140, seed=0)
    write_colour_photos(tmp_path / "colours", "test", 2, 60, 140, seed=1)
    quantize_model(fp32, tmp_path / "colours", calibration_images=6)
    with running_client(make_settings(fp32.parent), ["colours", "colours-int8"]) as client:
        detail = client.get("/models/colours-int8").json()
        assert detail["precision"] == "int8" and detail["quantization"]["calibration"]["images"] == 6
        assert client.get("/models/colours").json()["precision"] == "fp32"
        photo = image_bytes(color=(20, 40, 230))
        answer = client.post("/classify?model=colours-int8", files={"image": ("b.png", photo)})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "blue"
