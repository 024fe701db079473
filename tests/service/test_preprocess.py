"""Decoding (formats, modes, EXIF, draft, bad input) and the geometry of the 10 crops."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from svc_testkit import declared_size_png, image_bytes

from service.crop_geometry import CropWindow, crop_origins, crop_windows, resized_size
from service.errors import ImageTooLarge, InvalidImage
from service.preprocess import decode_image, make_crops, preprocess, softmax

BIG = 10**9


def position_image(width: int, height: int) -> Image.Image:
    """Red grows with the column and green with the row of each pixel."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([xs * 250 // (width - 1), ys * 250 // (height - 1), np.zeros_like(xs)], axis=-1)
    pixels = pixels.astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encoded(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


# ---- geometry --------------------------------------------------------------------------------
def test_ten_crops_are_corners_centre_and_their_mirrors() -> None:
    image = position_image(12, 10)  # shorter side already 10: no resize
    crops = make_crops(image, resize_size=10, crop_size=6, crops=10)
    assert crops.shape == (10, 6, 6, 3) and crops.dtype == np.uint8
    pixels = np.asarray(image)
    expected_origins = [(0, 0), (0, 6), (4, 0), (4, 6), (2, 3)]  # (top, left): tl, tr, bl, br, centre
    for i, (top, left) in enumerate(expected_origins):
        np.testing.assert_array_equal(crops[i], pixels[top : top + 6, left : left + 6])
        np.testing.assert_array_equal(crops[5 + i], crops[i][:, ::-1])
    # the mirror really flips: its first column is the original's last one
    assert crops[5][0, 0, 0] == pixels[0, 5, 0] != crops[0][0, 0, 0]


def test_one_crop_is_the_centre_crop() -> None:
    image = position_image(12, 10)
    one = make_crops(image, resize_size=10, crop_size=6, crops=1)
    ten = make_crops(image, resize_size=10, crop_size=6, crops=10)
    assert one.shape == (1, 6, 6, 3)
    np.testing.assert_array_equal(one[0], ten[4])


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((40, 20), (20, 10)),
        ((20, 40), (10, 20)),
        ((33, 20), (16, 10)),
        ((10, 10), (10, 10)),
        ((39, 20), (19, 10)),
    ],
)
def test_shorter_side_is_resized_keeping_the_aspect_ratio(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert resized_size(*size, 10) == expected


def test_geometry_is_torchvisions() -> None:
    # Resize(256): a 640x427 photo becomes 383x256 (the longer side truncated, not rounded to 384) ...
    assert resized_size(640, 427, 256) == (383, 256)
    # ... and center_crop(224) rounds its origin: (256 - 224) / 2 = 16, (383 - 224) / 2 = 79.5 -> 80
    assert crop_origins(383, 256, 224)[4] == (16, 80)


def test_ten_windows_are_corners_centre_then_the_same_mirrored() -> None:
    windows = crop_windows(12, 10, 6, crops=10)
    corners_and_centre = [(0, 0), (0, 6), (4, 0), (4, 6), (2, 3)]
    assert windows[:5] == [CropWindow(top, left) for top, left in corners_and_centre]
    assert windows[5:] == [CropWindow(top, left, mirrored=True) for top, left in corners_and_centre]
    assert crop_windows(12, 10, 6, crops=1) == [CropWindow(2, 3)]
    with pytest.raises(ValueError, match="1 or 10"):
        crop_windows(12, 10, 6, crops=2)


def test_crops_come_from_the_resized_image() -> None:
    # 40x20 becomes 20x10: with crop 10 the right-hand crops start at column 10 of the resized image
    image = position_image(40, 20)
    crops = make_crops(image, resize_size=10, crop_size=10, crops=10)
    assert crop_origins(20, 10, 10) == [(0, 0), (0, 10), (0, 0), (0, 10), (0, 5)]
    assert crops[1][:, :, 0].mean() > crops[0][:, :, 0].mean() + 100  # red grows with x


def test_resize_is_antialiased() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([checker] * 3, axis=-1), "RGB")
    crops = make_crops(image, resize_size=8, crop_size=8, crops=1)
    # averaging gives flat grey; sampling without antialiasing would keep black and white pixels
    assert abs(float(crops.mean()) - 127.5) < 10 and float(crops.std()) < 10


def test_make_crops_rejects_bad_arguments() -> None:
    image = position_image(12, 10)
    with pytest.raises(ValueError, match="1 or 10"):
        make_crops(image, 10, 6, crops=5)
    with pytest.raises(ValueError, match="smaller than crop_size"):
        make_crops(image, 4, 6, crops=1)


# ---- formats and modes -----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_format_decodes_to_rgb(fmt: str) -> None:
    image = decode_image(image_bytes((200, 30, 40), size=(24, 16), fmt=fmt), max_pixels=BIG)
    assert image.mode == "RGB" and image.size == (24, 16)
    assert np.abs(np.asarray(image, dtype=int) - [200, 30, 40]).max() <= 12


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    pixel = decode_image(buffer.getvalue(), max_pixels=BIG).getpixel((4, 4))
    assert pixel == (255, 0, 0)


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encoded(image, "PNG", transparency=1)  # index 1 (red) is fully transparent


def _sixteen_bit(fmt: str) -> bytes:
    return encoded(Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16)), fmt)


MODE_CASES = {
    "L": (image_bytes((90,), fmt="PNG", mode="L"), (90, 90, 90)),
    "1": (image_bytes((1,), fmt="PNG", mode="1"), (255, 255, 255)),
    "P": (encoded(Image.new("RGB", (8, 8), (0, 0, 255)).convert("P"), "PNG"), (0, 0, 255)),
    "P+transparency": (_palette_with_transparency(), (255, 255, 255)),
    "RGBA transparent": (image_bytes((255, 0, 0, 0), fmt="PNG", mode="RGBA"), (255, 255, 255)),
    "RGBA half": (image_bytes((255, 0, 0, 128), fmt="PNG", mode="RGBA"), (255, 127, 127)),
    "LA": (image_bytes((0, 0), fmt="PNG", mode="LA"), (255, 255, 255)),
    "CMYK": (image_bytes((0, 255, 255, 0), fmt="JPEG", mode="CMYK"), (255, 0, 0)),
    "I;16 PNG": (_sixteen_bit("PNG"), (127, 127, 127)),
    "I;16 TIFF": (_sixteen_bit("TIFF"), (127, 127, 127)),
    "I 32-bit": (
        encoded(Image.fromarray(np.full((8, 8), 40000, dtype=np.int32), "I"), "TIFF"),
        (156, 156, 156),
    ),
    "F float": (
        encoded(Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), "F"), "TIFF"),
        (128, 128, 128),
    ),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_every_mode_becomes_rgb_with_alpha_over_white(case: str) -> None:
    data, expected = MODE_CASES[case]
    image = decode_image(data, max_pixels=BIG)
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image, dtype=int)[4, 4] - expected).max() <= 3, case


@pytest.mark.parametrize(
    ("values", "mode"),
    [
        (np.array([[0.25, 0.5], [1.0, 0.0], [np.nan, 0.75]], dtype=np.float32), "F"),  # 0-1: scaled
        (np.array([[0.25, 0.5], [1.0, 0.0], [200.0, 0.75]], dtype=np.float32), "F"),  # 0-255: not
        (np.array([[10, 20], [30, 40], [50000, 60]], dtype=np.int32), "I"),  # 16-bit range: scaled
    ],
)
def test_wide_images_are_scaled_by_the_whole_image_not_one_block(
    values: np.ndarray, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = np.asarray(decode_image(encoded(Image.fromarray(values, mode), "TIFF"), max_pixels=BIG))
    monkeypatch.setattr("service.preprocess.BLOCK_PIXELS", 2)  # one row a block: the last decides
    blocked = np.asarray(decode_image(encoded(Image.fromarray(values, mode), "TIFF"), max_pixels=BIG))
    assert (blocked == whole).all()
    assert whole[0, 0, 0] == {"F": 64 if np.nanmax(values) <= 1 else 0, "I": 0}[mode]


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (20, 10), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    image = decode_image(encoded(stored, "JPEG", exif=exif.tobytes(), quality=95), max_pixels=BIG)
    assert image.size == (10, 20)
    top, bottom = np.asarray(image, dtype=int)[2, 5], np.asarray(image, dtype=int)[17, 5]
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_large_jpeg_is_decoded_at_reduced_scale() -> None:
    data = image_bytes((10, 120, 200), size=(1600, 1200), fmt="JPEG")
    full = decode_image(data, max_pixels=BIG)
    draft = decode_image(data, max_pixels=BIG, draft_size=200)
    assert full.size == (1600, 1200)
    assert draft.size == (400, 300)  # 1/4 scale: the largest reduction keeping both sides >= 200
    assert preprocess(data, resize_size=100, crop_size=80, crops=10, max_pixels=BIG).shape == (10, 80, 80, 3)


# ---- bad input -------------------------------------------------------------------------------
def _noise_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return encoded(Image.fromarray(noise, "RGB"), "JPEG")


def _corrupt_png() -> bytes:
    data = bytearray(image_bytes(size=(16, 16)))
    data[-20] ^= 0xFF  # inside the IDAT chunk: its CRC no longer matches
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "not a decodable image"),
        (image_bytes(size=(64, 64), fmt="JPEG")[:300], "truncated image header"),
        (_noise_jpeg()[:-2000], "truncated image"),
        (_corrupt_png(), "corrupt image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not a decodable image"),
    ],
    ids=["empty", "garbage", "truncated-header", "truncated-data", "corrupt", "eps"],
)
def test_bad_bytes_raise_invalid_image(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image(data, max_pixels=BIG)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="limit of 10000000"):
        decode_image(declared_size_png(50_000, 50_000), max_pixels=10_000_000)
    with pytest.raises(ImageTooLarge, match="above the limit"):
        decode_image(declared_size_png(5_000, 5_000), max_pixels=10_000_000)
    with pytest.raises(ImageTooLarge):
        decode_image(image_bytes(size=(100, 100)), max_pixels=5_000)


def test_softmax_is_stable_and_normalised() -> None:
    probabilities = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probabilities[0], [0.5, 0.5, 0.0], atol=1e-6)
