"""Paths, the benchmark images and machine facts shared by the scripts of ``bench/``."""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

WORK = BENCH / ".work"  # everything generated (gitignored: /bench/.work/)
MODELS_DIR = WORK / "models"
MODEL_NAME = "resnet50-random"
MODEL_PATH = MODELS_DIR / f"{MODEL_NAME}.onnx"
INT8_MODEL_NAME = f"{MODEL_NAME}-int8"
INT8_MODEL_PATH = MODELS_DIR / f"{INT8_MODEL_NAME}.onnx"  # the same weights quantized by training/quantize.py
STATE_PATH = WORK / f"{MODEL_NAME}.pt"  # the same weights for the PyTorch eager baseline
IMAGES_DIR = WORK / "images"  # the real JPEG photos the load generator sends
SIZED_DIR = WORK / "sized"  # 640x480 and 4000x3000 JPEGs for the preprocessing benchmark
RESULTS_DIR = WORK / "results"

JPEG_QUALITY = 90
SIZES = {"640x480": (640, 480), "4000x3000": (4000, 3000)}

# ImageNet statistics in pixel units (torchvision's Normalize, times 255).
MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]
CROP_SIZE = 224
RESIZE_SIZE = 256


def _jpeg(image: Any, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def prepare_images() -> dict[str, Any]:
    """Write the photos once: foolbox's 20 ImageNet JPEGs, skimage's chelsea and coffee, two sized JPEGs."""
    from PIL import Image

    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    SIZED_DIR.mkdir(parents=True, exist_ok=True)
    if len(list(IMAGES_DIR.glob("*.jpg"))) < 22:
        from training.imagenet_samples import FOOLBOX, FOOLBOX_WHEEL, foolbox_imagenet, foolbox_wheel

        cached = REPO / "cache" / FOOLBOX_WHEEL  # the tests keep one here
        wheel = cached if cached.is_file() else foolbox_wheel(WORK)
        if wheel is None:
            raise RuntimeError(f"pip could not download {FOOLBOX} (the benchmark photos)")
        for sample in foolbox_imagenet(wheel):
            (IMAGES_DIR / sample.name).write_bytes(sample.data)
        import skimage.data

        for name in ("chelsea", "coffee"):
            pixels = getattr(skimage.data, name)()
            (IMAGES_DIR / f"skimage_{name}.jpg").write_bytes(_jpeg(Image.fromarray(pixels)))
    # The sized JPEGs come from the coffee photo (600x400), centre-cropped to 4:3 and resized.
    import skimage.data

    photo = Image.fromarray(skimage.data.coffee())
    width = photo.height * 4 // 3
    left = (photo.width - width) // 2
    photo = photo.crop((left, 0, left + width, photo.height))
    for label, size in SIZES.items():
        path = SIZED_DIR / f"coffee_{label}.jpg"
        if not path.is_file():
            path.write_bytes(_jpeg(photo.resize(size, Image.Resampling.LANCZOS)))
    return describe_images()


def load_images() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(IMAGES_DIR.glob("*.jpg"))]


def describe_images() -> dict[str, Any]:
    from PIL import Image

    photos = []
    for path in sorted(IMAGES_DIR.glob("*.jpg")):
        with Image.open(path) as image:
            photos.append({"name": path.name, "size": list(image.size), "bytes": path.stat().st_size})
    sized = {}
    for label in SIZES:
        path = SIZED_DIR / f"coffee_{label}.jpg"
        sized[label] = {"file": path.name, "bytes": path.stat().st_size}
    return {"photos": photos, "sized": sized}


# Package names per component, the first one installed is reported (onnxruntime-gpu or onnxruntime).
PACKAGES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "numpy": ("numpy",),
    "pillow": ("pillow",),
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "httpx": ("httpx",),
}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name, packages in PACKAGES.items():
        versions[name] = None
        for package in packages:
            try:
                versions[name] = version(package)
                break
            except PackageNotFoundError:
                continue
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),  # the cores this process may run on (taskset, cpuset)
        "vnni": "vnni" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else None,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
        "load_average": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def cpu_totals() -> tuple[int, int]:
    """(all, steal) CPU ticks of the machine so far, from /proc/stat (zeros where there is none)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    return sum(values), values[7]


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of CPU time the hypervisor gave to other guests between two ``cpu_totals`` readings."""
    total = after[0] - before[0]
    return round(100.0 * (after[1] - before[1]) / total, 1) if total else 0.0


def percentile(values: list[float], q: float) -> float:
    """``q``-th percentile (0-100) with linear interpolation, as numpy's default."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: list[float]) -> float:
    return percentile(values, 50.0)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def override_session_options(entries: dict[str, str], attributes: dict[str, str]) -> None:
    """Make every ONNX Runtime session created from now on in this process use these options.

    An experiment hook (``raw_ort.py --entry/--set``, ``ort_options.py``): the session stays the one
    ``service.runtime.create_session`` makes, with one option changed. ``entries`` are session config entries
    (``session.intra_op.allow_spinning=0``); ``attributes`` are ``SessionOptions`` attributes, an enum by its
    name (``graph_optimization_level=ORT_ENABLE_BASIC``, ``execution_mode=ORT_PARALLEL``) or an integer.
    """
    import onnxruntime as ort

    original = ort.SessionOptions

    def value(raw: str) -> Any:
        for enum in (ort.GraphOptimizationLevel, ort.ExecutionMode):
            if hasattr(enum, raw):
                return getattr(enum, raw)
        return int(raw)

    def options() -> Any:
        made = original()
        for key, raw in entries.items():
            made.add_session_config_entry(key, raw)
        for name, raw in attributes.items():
            if not hasattr(made, name):
                raise ValueError(f"SessionOptions has no attribute {name!r}")
            setattr(made, name, value(raw))
        return made

    ort.SessionOptions = options
