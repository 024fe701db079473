"""The Triton peer's server: one ONNX Runtime session bound to Triton Inference Server with PyTriton.

Runs in its own virtualenv (``bench/.work/venv-triton``, made by ``venvs.ensure_venv``), started by
``peer_triton.bench_triton``; it is not imported by the project's code except for :func:`ten_crops`, the
preprocessing both bound variants share, so that the client-side and the server-side variant cut the
same pixels. Two models are bound, both batched by Triton's dynamic batcher:

- ``<stem>-tensor``: ``image`` uint8 [224, 224, 3] per row; the client sends the 10 crops of one photo as
  one request of 10 rows and gets ``logits`` [classes] per row back.
- ``<stem>-bytes``: ``image`` BYTES [1] per request (the JPEG); the bound function decodes and crops every
  photo of the batch, runs the session once on all their rows and answers ``probabilities`` [classes] per
  photo (softmax averaged over its 10 crops).

PyTriton runs the bound functions in this process; ``tritonserver`` (its child) receives the requests,
batches them and hands them over through its Python backend stub.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CROP_SIZE = 224
RESIZE_SIZE = 256


def ten_crops(data: bytes, resize_size: int = RESIZE_SIZE, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Decode a photo, resize its shorter side, cut the 10 crops: uint8 [10, crop, crop, 3].

    As torchvision's ``Resize(int)`` + ``TenCrop``: the longer side scaled and truncated, bilinear
    (antialiased) resize; crops top-left, top-right, bottom-left, bottom-right, centre (origin rounded),
    then their mirrors in the same order (the geometry of ``service/crop_geometry.py``).
    """
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    if width <= height:
        size = resize_size, int(resize_size * height / width)
    else:
        size = int(resize_size * width / height), resize_size
    pixels = np.asarray(rgb.resize(size, Image.Resampling.BILINEAR))
    bottom, right = pixels.shape[0] - crop_size, pixels.shape[1] - crop_size
    origins = [(0, 0), (0, right), (bottom, 0), (bottom, right), (round(bottom / 2), round(right / 2))]
    crops = [pixels[top : top + crop_size, left : left + crop_size] for top, left in origins]
    return np.stack(crops + [crop[:, ::-1] for crop in crops])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def make_session(path: Path) -> tuple[Any, dict[str, Any]]:
    """The session with the service's main options (see ``service/runtime.py``), and those options.

    CPU provider only (asking onnxruntime-gpu for CUDA here only prints errors), ORT's default graph
    optimisation (all), intra-op threads 0 (one per core), errors-only logging.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 0
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    settings = {
        "providers": session.get_providers(),
        "intra_op_num_threads": options.intra_op_num_threads,
        "inter_op_num_threads": options.inter_op_num_threads,
        "graph_optimization_level": str(options.graph_optimization_level),
        "execution_mode": str(options.execution_mode),
        "onnxruntime": ort.__version__,
        # The service also shrinks ORT's CPU memory arena after each run; a Triton user has no reason to.
        "memory_arena_shrinkage": False,
    }
    return session, settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="ONNX file of the project's contract")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-rows", type=int, default=64, help="tensor model's max_batch_size")
    parser.add_argument("--max-batch-images", type=int, default=6, help="bytes model's max_batch_size")
    parser.add_argument("--max-queue-delay-us", type=int, default=5000)
    parser.add_argument("--info", type=Path, help="write the session settings and versions here (JSON)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    # The Python backend stub that tritonserver starts links libpython3.11: tell the loader where this
    # interpreter's is (pytriton hands this environment on to tritonserver).
    libdir = str(sysconfig.get_config_var("LIBDIR"))
    os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)

    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    session, settings = make_session(args.model)
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    output_name = "logits" if "logits" in outputs else outputs[0]

    def run(rows: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([output_name], {input_name: rows})[0], dtype=np.float32)

    @batch
    def infer_tensor(image: np.ndarray) -> dict[str, np.ndarray]:
        """The client's rows as they come: Triton's batcher has already put requests together."""
        return {"logits": run(np.ascontiguousarray(image, dtype=np.uint8))}

    @batch
    def infer_bytes(image: np.ndarray) -> dict[str, np.ndarray]:
        """Every JPEG of the batch to 10 rows, one session run on all of them, softmax mean per photo."""
        rows = np.concatenate([ten_crops(bytes(item[0])) for item in image])
        probabilities = softmax(run(rows)).reshape(len(image), 10, -1).mean(axis=1)
        return {"probabilities": probabilities.astype(np.float32)}

    stem = args.model.stem
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=5,
    )
    delay = DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=f"{stem}-tensor",
            infer_func=infer_tensor,
            inputs=[Tensor(name="image", dtype=np.uint8, shape=(CROP_SIZE, CROP_SIZE, 3))],
            outputs=[Tensor(name="logits", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=args.max_batch_rows, batcher=delay),
        )
        triton.bind(
            model_name=f"{stem}-bytes",
            infer_func=infer_bytes,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(max_batch_size=args.max_batch_images, batcher=delay),
        )
        if args.info:
            args.info.write_text(json.dumps(settings, indent=2) + "\n")
        triton.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
