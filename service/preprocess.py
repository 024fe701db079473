"""Image decoding and the paper's 10-crop testing, shared by the service, the evaluator and training.

:func:`make_crops` resizes with Pillow (bilinear, antialiased) and cuts the crops that
``service.crop_geometry`` defines, in its order: 4 corners and the centre, then their mirrors
(``crops[5 + i] == crops[i][:, ::-1]``); ``crops=1`` is the centre crop alone.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.crop_geometry import CROP_COUNTS as CROP_COUNTS
from service.crop_geometry import crop_windows, resized_size
from service.errors import ImageTooLarge, InvalidImage

log = logging.getLogger(__name__)

# Formats Pillow may open: the ones users send. Everything else (EPS, PSD, ...) is refused
# before any plugin parses it. (Camera JPEGs that Pillow calls MPO open through the JPEG plugin.)
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# JPEGs are decoded at a reduced scale (1/2 .. 1/8) while the shorter side stays at least this many
# times the resize target, so the final antialiased resize still has real pixels to average.
DRAFT_FACTOR = 2
# Pixels an image may have once its shorter side is resized: a thin strip of a few hundred bytes
# (1x5000) would otherwise become 256x1,280,000 pixels (about 1 GB) at ImageNet's resize size.
# 4 million is a 61:1 panorama at 256 (about 12 MB an RGB copy) and no limit for ordinary photos.
DEFAULT_MAX_RESIZED_PIXELS = 4_000_000
WHITE = (255, 255, 255)
# Pixels of a wide (16/32-bit) image converted to 8 bits at a time.
BLOCK_PIXELS = 1 << 20


def _damage(exc: Exception) -> str:
    return "truncated" if "truncat" in str(exc).lower() or isinstance(exc, EOFError) else "corrupt"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("empty image: the upload has no bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage("not a decodable image: send JPEG, PNG, WebP, BMP, GIF or TIFF") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has more pixels than the limit of {max_pixels}: {exc}") from None
    except Exception as exc:  # Pillow plugins raise many types on corrupt headers
        raise InvalidImage(f"{_damage(exc)} image header: {exc}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
        )
    return image


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16/32-bit integer or float single-channel image to 0-255.

    The scale is chosen on the whole image; the arithmetic runs a block of rows at a time, so its
    wide temporaries stay near ``BLOCK_PIXELS`` however large the image (64M float pixels would
    otherwise need several GB of float64 copies).
    """
    if mode == "F":
        unit = np.fmax.reduce(values, axis=None, initial=0.0) <= 1.0  # fmax skips NaN
        convert = lambda v: _float_to_8bit(v, unit)  # noqa: E731
    else:
        wide = mode.startswith("I;16") or values.max(initial=0) > 255
        convert = lambda v: _int_to_8bit(v, wide)  # noqa: E731
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, BLOCK_PIXELS // max(1, values.shape[1]))
    for start in range(0, values.shape[0], rows):
        out[start : start + rows] = convert(values[start : start + rows])
    return out


def _float_to_8bit(values: np.ndarray, unit: bool) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64))
    values = values * 255.0 if unit else values
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _int_to_8bit(values: np.ndarray, wide: bool) -> np.ndarray:
    values = values.astype(np.int64)
    if wide:
        return ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    return np.clip(values, 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency is composited over white, 16-bit is scaled."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I", "F") or mode.startswith("I;16"):
        return Image.fromarray(_to_8bit(np.asarray(image), mode), "L").convert("RGB")
    try:
        if image.has_transparency_data:
            rgba = image if mode == "RGBA" else image.convert("RGBA")
            # Pasting through the alpha band onto opaque white is alpha compositing over white,
            # without alpha_composite's full-size RGBA copies: a 64M-pixel RGBA image needs one more
            # image's memory, not four.
            white = Image.new("RGB", rgba.size, WHITE)
            white.paste(rgba, mask=rgba)
            return white
        return image.convert("RGB")
    except ValueError as exc:
        raise InvalidImage(f"unsupported colour mode {mode}: {exc}") from None


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    draft_size: int | None = None,
    resize_check: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``data`` (JPEG, PNG, WebP, BMP, GIF first frame, TIFF) into an upright RGB image.

    ``draft_size``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale while both sides stay at least
    this large. ``resize_check``: ``(resize_size, max_resized_pixels)``, checked on the declared size
    before any pixel is decoded (see :func:`check_resized_pixels`). Raises :class:`InvalidImage`
    (empty, truncated, corrupt, unknown format) or :class:`ImageTooLarge` (more than ``max_pixels``
    declared pixels, or too many once resized) with a message for the client.
    """
    image = _open(data, max_pixels)
    if resize_check is not None:
        check_resized_pixels(image.width, image.height, *resize_check)
    if draft_size and image.format in ("JPEG", "MPO"):
        image.draft(None, (draft_size, draft_size))
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has more pixels than the limit of {max_pixels}: {exc}") from None
    except Exception as exc:
        raise InvalidImage(f"{_damage(exc)} image: {exc}") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)  # not a copy: an upright image is left as it is
    except Exception as exc:  # a broken EXIF block should not cost the user the image
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
    return to_rgb(image)


def check_resized_pixels(width: int, height: int, resize_size: int, max_pixels: int) -> tuple[int, int]:
    """The resized (width, height); :class:`ImageTooLarge` when it would exceed ``max_pixels`` pixels.

    Called before anything of that size is allocated, so a tiny upload cannot claim gigabytes.
    """
    size = resized_size(width, height, resize_size)
    if size[0] * size[1] > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height}: with its shorter side resized to {resize_size} it would be "
            f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels, above the limit of {max_pixels} "
            "pixels after resizing; send a less elongated image (crop it first)"
        )
    return size


def make_crops(
    image: Image.Image,
    resize_size: int,
    crop_size: int,
    crops: int,
    *,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
) -> np.ndarray:
    """Resize the shorter side to ``resize_size`` and cut ``crops`` (1 or 10) square crops.

    Returns uint8 ``[crops, crop_size, crop_size, 3]`` in the order of ``service.crop_geometry``.
    :class:`ImageTooLarge` when the resized image would exceed ``max_resized_pixels``.
    """
    if resize_size < crop_size:
        raise ValueError(f"resize_size {resize_size} is smaller than crop_size {crop_size}")
    size = check_resized_pixels(image.width, image.height, resize_size, max_resized_pixels)
    windows = crop_windows(*size, crop_size, crops)
    if image.mode != "RGB":
        image = to_rgb(image)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    mirrored: np.ndarray | None = None
    out = np.empty((crops, crop_size, crop_size, 3), dtype=np.uint8)
    for i, window in enumerate(windows):
        source, left = pixels, window.left
        if window.mirrored:
            # Mirrors are cut from the mirrored image: Pillow flips it in C in a fraction of the time numpy
            # takes to copy five crops through a negative stride (same pixels, ~1-2 ms less per image).
            if mirrored is None:
                mirrored = np.asarray(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
            source, left = mirrored, image.width - window.left - crop_size
        out[i] = source[window.top : window.top + crop_size, left : left + crop_size]
    return out


def preprocess(
    data: bytes,
    *,
    resize_size: int,
    crop_size: int,
    crops: int,
    max_pixels: int,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
) -> np.ndarray:
    """Encoded image bytes to model rows exactly as the service does it (decode, draft, crops)."""
    rows, _ = preprocess_sized(
        data,
        resize_size=resize_size,
        crop_size=crop_size,
        crops=crops,
        max_pixels=max_pixels,
        max_resized_pixels=max_resized_pixels,
    )
    return rows


def preprocess_sized(
    data: bytes,
    *,
    resize_size: int,
    crop_size: int,
    crops: int,
    max_pixels: int,
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS,
) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`preprocess`'s rows and the (width, height) of the resized image they were cut from, whose
    ``service.crop_geometry`` windows place each crop (class activation maps are put back there)."""
    image = decode_image(
        data,
        max_pixels=max_pixels,
        draft_size=resize_size * DRAFT_FACTOR,
        resize_check=(resize_size, max_resized_pixels),
    )
    rows = make_crops(image, resize_size, crop_size, crops, max_resized_pixels=max_resized_pixels)
    return rows, resized_size(image.width, image.height, resize_size)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    shifted = logits.astype(np.float32) - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)
