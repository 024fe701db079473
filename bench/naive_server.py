"""The naive baseline most teams write: FastAPI + PyTorch eager, torchvision 10-crop per request, no batching.

Same API shape as the service's ``POST /classify`` (multipart field ``image``; ``crops`` 1 or 10;
``top_k``), same network and weights (``bench/.work/resnet50-random.pt``, the state dict the ONNX file
was exported from), same normalisation. Each request decodes the full-size image with PIL, applies
``Resize(256)`` + ``TenCrop(224)`` + ``ToTensor`` + ``Normalize``, and runs its 10 crops as one batch
through the eager model. ``torch.set_num_threads`` is left at its default.

``--handler sync`` (default) is a plain ``def`` endpoint, which FastAPI runs in its thread pool, so
concurrent requests run concurrent forwards; ``--handler async`` is an ``async def`` endpoint that
blocks the event loop, so requests run one at a time.

    python bench/naive_server.py --port 8081
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import torch
import uvicorn
from common import CROP_SIZE, RESIZE_SIZE, STATE_PATH
from fastapi import FastAPI, File, HTTPException, UploadFile
from make_model import build_network
from PIL import Image
from torchvision import transforms


def build_app(handler: str = "sync") -> FastAPI:
    network = build_network()
    network.load_state_dict(torch.load(STATE_PATH, map_location="cpu"))
    network.eval()
    labels = [f"class{i}" for i in range(1000)]
    to_tensor = transforms.ToTensor()
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    resize = transforms.Resize(RESIZE_SIZE)
    ten_crop = transforms.TenCrop(CROP_SIZE)
    center_crop = transforms.CenterCrop(CROP_SIZE)

    with torch.no_grad():  # one warm-up forward, as any server would do at start
        network(torch.zeros(10, 3, CROP_SIZE, CROP_SIZE))

    app = FastAPI(title="naive baseline")

    def classify_image(data: bytes, crops: int, top_k: int) -> dict:
        started = time.perf_counter()
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception as exc:
            raise HTTPException(400, f"invalid image: {exc}") from None
        resized = resize(image)
        chosen = ten_crop(resized) if crops == 10 else (center_crop(resized),)
        batch = torch.stack([normalize(to_tensor(c)) for c in chosen])
        decoded = time.perf_counter()
        with torch.no_grad():
            logits = network(batch)
        inferred = time.perf_counter()
        probabilities = torch.softmax(logits, dim=1).mean(dim=0)
        values, indices = probabilities.topk(top_k)
        return {
            "model": "resnet50-random",
            "crops": crops,
            "predictions": [
                {"label": labels[i], "index": int(i), "probability": float(p)}
                for p, i in zip(values.tolist(), indices.tolist(), strict=True)
            ],
            "timings": {
                "decode_ms": round((decoded - started) * 1000, 3),
                "queue_ms": 0.0,
                "inference_ms": round((inferred - decoded) * 1000, 3),
                "total_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        }

    if handler == "sync":

        @app.post("/classify")
        def classify(
            image: UploadFile = File(...), model: str | None = None, crops: int = 10, top_k: int = 5
        ) -> dict:
            return classify_image(image.file.read(), crops, top_k)

    else:

        @app.post("/classify")
        async def classify_async(
            image: UploadFile = File(...), model: str | None = None, crops: int = 10, top_k: int = 5
        ) -> dict:
            return classify_image(await image.read(), crops, top_k)

    @app.get("/readyz")
    def readyz() -> dict:
        return {"status": "ready", "threads": torch.get_num_threads()}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--handler", choices=("sync", "async"), default="sync")
    args = parser.parse_args()
    uvicorn.run(build_app(args.handler), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
