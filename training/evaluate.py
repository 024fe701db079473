"""Evaluate an exported ONNX model on an ImageFolder exactly as the service would classify its images.

``python training/evaluate.py MODEL.onnx --data DIR [--crops 1|10]`` reads the model's contract metadata
with the reader the service uses (``service.model_contract``), decodes and crops every image with the
service's own code (``service.preprocess.preprocess``: same decoder, JPEG draft, resize and crops), runs
the crops through an ONNX Runtime session made by ``service.runtime.create_session`` in batches, and
averages the softmax over an image's crops as the service does. It prints top-1/top-5 error, a per-class
table and images/s, and with ``--out DIR`` writes ``summary.json``, ``per_class.json``, ``per_class.csv``
and ``confusion.png``.

Data: ``DIR/test`` (or ``DIR/val``) when present, else ``DIR`` itself, holding one folder per class.
Folder names must be model labels (any subset of them), or, for models with many classes such as
ImageNet, all be output indices (``DIR/285/cat.jpg`` is class 285).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.atomic_file import atomic_write_bytes
from service.defaults import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_PROVIDERS, DEFAULT_TRT_CACHE_DIR
from service.image_errors import ImageError
from service.model_contract import InvalidModelError, ModelMetadata, read_model_metadata
from service.preprocess import CROP_COUNTS, preprocess, softmax
from service.runtime import create_session
from training.data import DataError, scan_split, split_dir

log = logging.getLogger(__name__)

TOP_K = 5
WORST_SHOWN = 20  # per-class rows printed when there are many classes (all of them go to per_class.csv)

# ---------------------------------------------------------------- data


@dataclass
class Dataset:
    """Image files with the model output index of their class."""

    directory: Path
    paths: list[Path]
    targets: np.ndarray


def split_root(data: Path, split: str = "test") -> Path:
    """``DATA/<split>`` when present (the test split may be ``val``), else ``DATA`` itself."""
    try:
        return split_dir(data, split)
    except DataError:
        if not data.is_dir():
            raise DataError(f"{data} is not a directory") from None
        return data


def class_indices(folders: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Model output index of each class folder: by label name, or by index when every folder is a number."""
    position = {name: i for i, name in enumerate(labels)}
    if all(name in position for name in folders):
        return [position[name] for name in folders]
    if all(name.isdigit() and int(name) < len(labels) for name in folders):
        return [int(name) for name in folders]
    unknown = [name for name in folders if name not in position]
    raise DataError(
        f"class folders {', '.join(unknown[:10])} are not labels of the model (which has "
        f"{', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''}); name each folder after a label, "
        f"or name every folder by its output index (0..{len(labels) - 1})"
    )


def spread_limit(targets: Sequence[int], limit: int | None) -> list[int]:
    """Indices of at most ``limit`` files, taken round-robin over the classes so each one is represented."""
    if limit is None or limit >= len(targets):
        return list(range(len(targets)))
    seen: dict[int, int] = {}
    rank = []
    for target in targets:
        rank.append(seen.get(target, 0))
        seen[target] = rank[-1] + 1
    order = sorted(range(len(targets)), key=lambda i: (rank[i], targets[i]))
    return sorted(order[:limit])


def load_dataset(data: Path, labels: Sequence[str], limit: int | None = None) -> Dataset:
    """Scan the class folders (the training package's scanner) and map them onto the model's outputs."""
    root = split_root(data)
    files = scan_split(root.parent, root.name)
    mapping = class_indices(files.classes, labels)
    targets = [mapping[label] for label in files.labels]
    keep = spread_limit(targets, limit)
    return Dataset(root, [files.paths[i] for i in keep], np.array([targets[i] for i in keep], dtype=np.int64))


# ---------------------------------------------------------------- inference


@dataclass
class Predictions:
    """Mean softmax over each image's crops, for the images that decoded; timings for the whole pass."""

    probabilities: np.ndarray  # [images, classes]
    kept: np.ndarray  # indices into the dataset of the images that decoded
    skipped: list[str]
    seconds: float
    inference_seconds: float


def load_rows(path: Path, meta: ModelMetadata, crops: int, max_pixels: int) -> np.ndarray | str:
    """The service's model rows for one file, or the reason the service would refuse it."""
    try:
        return preprocess(
            path.read_bytes(),
            resize_size=meta.resize_size,
            crop_size=meta.crop_size,
            crops=crops,
            max_pixels=max_pixels,
        )
    except (ImageError, OSError) as exc:
        return f"{path}: {exc}"


def open_session(
    model: Path, meta: ModelMetadata, providers: Sequence[str] | None, batch_size: int, crops: int
) -> Any:
    """A session made as the service makes one (``providers`` named as the service names them)."""
    return create_session(
        model,
        list(providers or DEFAULT_PROVIDERS.split(",")),
        DEFAULT_TRT_CACHE_DIR,
        input_name=meta.input_name,
        crop_size=meta.crop_size,
        max_batch_size=max(batch_size, crops),
    )


def chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict(
    session: Any, meta: ModelMetadata, paths: Sequence[Path], crops: int, batch_size: int, threads: int
) -> Predictions:
    """Classify ``paths``: crops of several images per session run, the next batch decoding meanwhile."""
    per_run = max(1, batch_size // crops)
    probabilities: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[str] = []
    inference = 0.0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def submit(batch: Sequence[Path]) -> list[Future[np.ndarray | str]]:
            return [pool.submit(load_rows, path, meta, crops, DEFAULT_MAX_IMAGE_PIXELS) for path in batch]

        batches = chunks(paths, per_run)
        pending = submit(next(batches, []))
        index = 0
        while pending:
            results = [future.result() for future in pending]
            pending = submit(next(batches, []))  # decode the next batch while this one runs
            rows = [r for r in results if not isinstance(r, str)]
            skipped += [r for r in results if isinstance(r, str)]
            kept += [index + i for i, r in enumerate(results) if not isinstance(r, str)]
            index += len(results)
            if rows:
                run_started = time.perf_counter()
                logits = session.run([meta.output_name], {meta.input_name: np.concatenate(rows)})[0]
                inference += time.perf_counter() - run_started
                probabilities.append(softmax(logits).reshape(len(rows), crops, -1).mean(axis=1))
    for reason in skipped:
        log.warning("skipped %s", reason)
    width = meta.num_classes
    stacked = np.concatenate(probabilities) if probabilities else np.zeros((0, width), np.float32)
    return Predictions(
        stacked, np.array(kept, dtype=np.int64), skipped, time.perf_counter() - started, inference
    )


# ---------------------------------------------------------------- metrics


@dataclass
class ClassResult:
    index: int
    label: str
    images: int
    top1_error: float
    top5_error: float


@dataclass
class Evaluation:
    """Everything ``evaluate`` measured; ``summary()`` is what goes to summary.json."""

    model: str
    data: str
    crops: int
    images: int
    skipped: int
    top1_error: float
    top5_error: float
    images_per_s: float
    inference_images_per_s: float
    providers: list[str]
    per_class: list[ClassResult]
    confusion_classes: list[int]
    confusion: np.ndarray = field(repr=False)
    labels: Sequence[str] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        names = [self.labels[i] for i in self.confusion_classes]
        fields = {k: v for k, v in asdict(self).items() if k not in ("per_class", "confusion", "labels")}
        return {**fields, "confusion_labels": names, "confusion": self.confusion.tolist()}


def top_k_hits(probabilities: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Whether each target is among its row's ``k`` highest probabilities (``k`` capped at the classes)."""
    k = min(k, probabilities.shape[1])
    best = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    return (best == targets[:, None]).any(axis=1)


def per_class(
    targets: np.ndarray, top1: np.ndarray, top5: np.ndarray, labels: Sequence[str]
) -> list[ClassResult]:
    """Top-1/top-5 error of every class that has images, in output-index order."""
    results = []
    for index in np.unique(targets):
        mine = targets == index
        results.append(
            ClassResult(
                int(index),
                labels[index],
                int(mine.sum()),
                float(np.mean(~top1[mine])),
                float(np.mean(~top5[mine])),
            )
        )
    return results


def confusion_matrix(targets: np.ndarray, predicted: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Counts [true, predicted] over the classes that occur as a target or a prediction (not all 1,000)."""
    classes = sorted(set(targets.tolist()) | set(predicted.tolist()))
    position = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(targets.tolist(), predicted.tolist(), strict=True):
        matrix[position[t], position[p]] += 1
    return classes, matrix


# ---------------------------------------------------------------- the evaluation


def evaluate(
    model: Path,
    data: Path,
    crops: int = 1,
    batch_size: int = 64,
    limit: int | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> Evaluation:
    """Evaluate ``model`` on ``data`` the way the service classifies images."""
    if crops not in CROP_COUNTS:
        raise ValueError(f"crops must be 1 or 10, not {crops}")
    meta = read_model_metadata(model)
    dataset = load_dataset(data, meta.labels, limit)
    session = open_session(model, meta, providers, batch_size, crops)
    workers = threads or min(8, os.cpu_count() or 1)
    result = predict(session, meta, dataset.paths, crops, batch_size, workers)
    if not len(result.kept):
        raise DataError(f"none of the {len(dataset.paths)} images under {dataset.directory} could be decoded")
    targets = dataset.targets[result.kept]
    top1 = result.probabilities.argmax(axis=1) == targets
    top5 = top_k_hits(result.probabilities, targets, TOP_K)
    classes, matrix = confusion_matrix(targets, result.probabilities.argmax(axis=1))
    count = len(targets)
    return Evaluation(
        model=str(model),
        data=str(dataset.directory),
        crops=crops,
        images=count,
        skipped=len(result.skipped),
        top1_error=float(np.mean(~top1)),
        top5_error=float(np.mean(~top5)),
        images_per_s=count / result.seconds if result.seconds else 0.0,
        inference_images_per_s=count / result.inference_seconds if result.inference_seconds else 0.0,
        providers=list(session.get_providers()),
        per_class=per_class(targets, top1, top5, meta.labels),
        confusion_classes=classes,
        confusion=matrix,
        labels=meta.labels,
    )


# ---------------------------------------------------------------- reporting


def class_table(rows: list[ClassResult]) -> list[str]:
    """The per-class lines to print: all of them, or the worst ones when there are many classes."""
    shown = rows if len(rows) <= 2 * WORST_SHOWN else sorted(rows, key=lambda r: -r.top1_error)[:WORST_SHOWN]
    lines = [f"{'class':<24} {'images':>7} {'top-1 err':>10} {'top-5 err':>10}"]
    lines += [f"{r.label[:24]:<24} {r.images:>7} {r.top1_error:>10.2%} {r.top5_error:>10.2%}" for r in shown]
    if len(shown) < len(rows):
        lines.append(f"({len(shown)} worst of {len(rows)} classes; --out writes them all to per_class.csv)")
    return lines


def report(result: Evaluation) -> str:
    head = [
        f"model {result.model} on {result.data}: {result.images} images, {result.crops}-crop"
        + (f", {result.skipped} skipped (not decodable)" if result.skipped else ""),
        f"top-1 error {result.top1_error:.2%}  top-5 error {result.top5_error:.2%}",
        f"{result.images_per_s:.1f} images/s end to end (decode + inference), "
        f"{result.inference_images_per_s:.1f} images/s inference only, on {', '.join(result.providers)}",
    ]
    return "\n".join([*head, "", *class_table(result.per_class)])


def plot_confusion(result: Evaluation, target: Path) -> None:
    """Confusion counts (rows: true class, columns: predicted) over the classes that occur."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [result.labels[i] for i in result.confusion_classes]
    n = len(names)
    side = min(4 + 0.35 * n, 30)
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    image = ax.imshow(result.confusion, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 60:
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
    if n <= 25:
        for (row, col), value in np.ndenumerate(result.confusion):
            if value:
                colour = "white" if value > result.confusion.max() / 2 else "black"
                ax.text(col, row, str(value), ha="center", va="center", fontsize=8, color=colour)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{Path(result.model).name}: {result.crops}-crop, top-1 error {result.top1_error:.2%}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(target, buffer.getvalue())


def write_outputs(result: Evaluation, out: Path) -> None:
    """summary.json, per_class.json, per_class.csv and confusion.png under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in result.per_class]
    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "summary.json", json.dumps(result.summary(), indent=2).encode())
    atomic_write_bytes(out / "per_class.json", json.dumps(rows, indent=2).encode())
    atomic_write_bytes(out / "per_class.csv", csv_text.getvalue().encode())
    plot_confusion(result, out / "confusion.png")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python training/evaluate.py", description=__doc__)
    parser.add_argument("model", type=Path, help="an ONNX model following models/README.md")
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root or split directory")
    parser.add_argument("--crops", type=int, choices=CROP_COUNTS, default=1, help="1 (centre) or 10 crops")
    parser.add_argument("--batch-size", type=int, default=64, help="most crops in one session run")
    parser.add_argument("--limit", type=int, help="evaluate at most N images (spread over the classes)")
    parser.add_argument("--out", type=Path, help="write summary.json, per_class.json/.csv, confusion.png")
    parser.add_argument(
        "--providers",
        default=DEFAULT_PROVIDERS,
        help="ONNX Runtime providers, best first, as the service names them (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be positive")
    try:
        result = evaluate(
            args.model, args.data, args.crops, args.batch_size, args.limit, args.providers.split(",")
        )
    except (DataError, InvalidModelError) as exc:
        log.error("%s", exc)
        return 1
    print(report(result))
    if args.out:
        write_outputs(result, args.out)
        print(f"wrote {args.out}/summary.json, per_class.json, per_class.csv, confusion.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
