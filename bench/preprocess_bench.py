"""Preprocessing ms per image: the service's decode + 10 crops on a 640x480 and a 4000x3000 JPEG.

Times ``service.preprocess.preprocess`` (what the service's thread pool runs for each upload: decode
with JPEG draft scaling, EXIF transpose, resize of the shorter side, 10 crops) and, as a breakdown,
``decode_image`` and ``make_crops`` alone. For comparison it also times the naive baseline's
preprocessing (full-size PIL decode, torchvision ``Resize(256)`` + ``TenCrop(224)`` + ``ToTensor`` +
``Normalize``). One thread, median of ``--runs`` runs after ``--warmup`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from common import CROP_SIZE, RESIZE_SIZE, SIZED_DIR, SIZES, median, percentile, write_json


def timed(fn: Callable[[], object], runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": round(median(times), 3),
        "p90_ms": round(percentile(times, 90), 3),
        "min_ms": round(min(times), 3),
        "runs": runs,
    }


def naive_pipeline() -> Callable[[bytes], object]:
    import io

    import torch
    from PIL import Image
    from torchvision import transforms

    torch.set_num_threads(1)
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    tf = transforms.Compose(
        [
            transforms.Resize(RESIZE_SIZE),
            transforms.TenCrop(CROP_SIZE),
            transforms.Lambda(
                lambda crops: torch.stack([normalize(transforms.ToTensor()(c)) for c in crops])
            ),
        ]
    )

    def run(data: bytes) -> object:
        return tf(Image.open(io.BytesIO(data)).convert("RGB"))

    return run


def measure(runs: int, warmup: int, naive: bool = True) -> dict[str, dict[str, Any]]:
    from service.preprocess import DRAFT_FACTOR, decode_image, make_crops, preprocess

    max_pixels = 64_000_000
    draft_size = RESIZE_SIZE * DRAFT_FACTOR
    results: dict[str, dict[str, Any]] = {}
    for label in SIZES:
        data = (SIZED_DIR / f"coffee_{label}.jpg").read_bytes()
        image = decode_image(data, max_pixels=max_pixels, draft_size=draft_size)
        service = partial(
            preprocess, data, resize_size=RESIZE_SIZE, crop_size=CROP_SIZE, crops=10, max_pixels=max_pixels
        )
        entry: dict[str, Any] = {
            "jpeg_bytes": len(data),
            "decoded_size": list(image.size),
            "service": timed(service, runs, warmup),
            "decode": timed(
                partial(decode_image, data, max_pixels=max_pixels, draft_size=draft_size), runs, warmup
            ),
            "crops": timed(partial(make_crops, image, RESIZE_SIZE, CROP_SIZE, 10), runs, warmup),
        }
        if naive:
            entry["naive_torchvision"] = timed(partial(naive_pipeline(), data), max(3, runs // 5), 1)
        results[label] = entry
        line = f"{label:>9}: service {entry['service']['median_ms']:7.2f} ms"
        line += f" (decode {entry['decode']['median_ms']:.2f} + crops {entry['crops']['median_ms']:.2f})"
        if naive:
            line += f"; naive torchvision {entry['naive_torchvision']['median_ms']:.1f} ms"
        print(line)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = measure(args.runs, args.warmup, naive=not args.no_naive)
    if args.out:
        write_json(args.out, result)
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
