"""Deterministic malformed, extreme and unusual images for the fuzz phase of ``stress.py``.

A :class:`Corpus` encodes a handful of real photos (scikit-image's ``chelsea`` and ``coffee``, a few of
the bench photos) as JPEG, PNG, WebP, GIF, BMP and TIFF, builds the unusual-but-valid images once
(extreme sizes, many frames, CMYK, 16-bit, alpha, palettes, EXIF), and then derives image number
``key`` from a seed alone: the same ``(seed, key)`` always gives the same bytes, whatever the order or
concurrency of the requests, so a finding can be replayed with :meth:`Corpus.sample`.

    python bench/fuzz_images.py --seed 0 --key c123 --out /tmp/x.bin   # write one sample to a file
"""

from __future__ import annotations

import argparse
import io
import random
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
MAGIC = {
    "JPEG": b"\xff\xd8\xff\xe0",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "WEBP": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "GIF": b"GIF89a",
    "BMP": b"BM",
    "TIFF": b"II*\x00",
}
BASE_SIDE = 256  # photos are shrunk to this longer side: many small requests rather than a few big ones
# Mutation kinds and their weights (share of the images drawn).
WEIGHTS: dict[str, int] = {
    "valid": 5,
    "bitflip": 14,
    "truncate": 12,
    "insert_bytes": 7,
    "delete_bytes": 7,
    "header_lie": 11,
    "wrong_magic": 5,
    "extreme_dims": 8,
    "gif_frames": 2,
    "animated": 2,
    "cmyk_jpeg": 3,
    "png16": 3,
    "deep_tiff": 2,
    "alpha": 5,
    "modes": 3,
    "exif": 2,
    "bomb": 1,
    "garbage": 8,
}
# (width, height) of the strips and dots: PIL's WebP encoder stops at 16383 pixels a side.
EXTREME_SIZES = ((1, 5000), (5000, 1), (1, 20000), (20000, 1), (2, 30000), (30000, 2), (1, 1), (3, 3))
# Sizes written into headers: zero, one, huge, at and just above the service's 64M-pixel default.
LIE_SIZES = (
    (0, 0),
    (1, 0),
    (65535, 65535),
    (65500, 1),
    (1, 65500),
    (8000, 8000),
    (8001, 8000),
    (30000, 30000),
    (2**31 - 1, 1),
    (2**32 - 1, 2**32 - 1),
)


@dataclass(frozen=True)
class Sample:
    """One image to send: what was done to it, a file name, the bytes and the part's content type."""

    key: str
    kind: str
    name: str
    data: bytes
    content_type: str


def encode(image: Any, fmt: str, **options: Any) -> bytes:
    """``image`` saved as ``fmt`` (Pillow), with the options the format takes."""
    buffer = io.BytesIO()
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    if fmt == "GIF" and image.mode not in ("P", "L"):
        image = image.convert("P", palette=1, colors=255)  # 1: Image.Palette.ADAPTIVE
    if fmt == "BMP" and image.mode not in ("RGB", "RGBA", "L", "P", "1"):
        image = image.convert("RGB")
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int, mode: str = "RGB") -> Any:
    """A random image: incompressible, so each byte of a mutated file is a real pixel."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)


def source_photos(extra: list[bytes]) -> list[Any]:
    """scikit-image's chelsea and coffee plus ``extra`` JPEGs, RGB, shrunk to BASE_SIDE."""
    import skimage.data
    from PIL import Image

    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    photos += [Image.open(io.BytesIO(data)).convert("RGB") for data in extra]
    for photo in photos:
        photo.thumbnail((BASE_SIDE, BASE_SIDE))
    return photos


class Corpus:
    """The base encodings, the special images, and the seeded mutations derived from them."""

    def __init__(self, seed: int, extra_photos: list[bytes] | None = None) -> None:
        self.seed = seed
        photos = source_photos(extra_photos or [])
        self.bases: list[tuple[str, bytes]] = [(fmt, encode(p, fmt)) for p in photos for fmt in FORMATS]
        self.specials: dict[str, list[tuple[str, bytes]]] = self._specials(photos)

    @staticmethod
    def _specials(photos: list[Any]) -> dict[str, list[tuple[str, bytes]]]:
        """The unusual-but-valid images, built once (a few seconds)."""
        import numpy as np
        from PIL import Image

        photo = photos[0]
        out: dict[str, list[tuple[str, bytes]]] = {}
        extreme = []
        for i, (w, h) in enumerate(EXTREME_SIZES):
            image = noise(w, h, i)
            for fmt in FORMATS:
                if fmt == "WEBP" and max(w, h) > 16383:
                    continue
                if fmt == "JPEG" and max(w, h) > 65500:
                    continue
                extreme.append((fmt, encode(image, fmt)))
        out["extreme_dims"] = extreme
        frames = [noise(64, 64, 1000 + i) for i in range(500)]
        first, rest = frames[0].convert("P"), [f.convert("P") for f in frames[1:]]
        gifs = [("GIF", encode(first, "GIF", save_all=True, append_images=rest, duration=10, loop=0))]
        dots = [Image.new("P", (1, 1), i % 256) for i in range(500)]
        gifs.append(("GIF", encode(dots[0], "GIF", save_all=True, append_images=dots[1:], disposal=2)))
        out["gif_frames"] = gifs
        animated = [
            ("PNG", encode(frames[0], "PNG", save_all=True, append_images=frames[1:200])),
            ("WEBP", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:100], quality=50)),
            ("TIFF", encode(frames[0], "TIFF", save_all=True, append_images=frames[1:100])),
        ]
        out["animated"] = animated
        cmyk = photo.convert("CMYK")
        out["cmyk_jpeg"] = [("JPEG", encode(cmyk, "JPEG")), ("JPEG", encode(cmyk, "JPEG", progressive=True))]
        out["cmyk_jpeg"].append(("TIFF", encode(cmyk, "TIFF")))
        grey = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
        png16 = [("PNG", encode(Image.fromarray(grey), "PNG"))]
        png16.append(("PNG", encode(Image.fromarray(grey // 256), "PNG")))  # 16-bit, values < 256
        png16.append(("PNG", encode(Image.fromarray(np.full((32, 32), 65535, np.uint16)), "PNG")))
        out["png16"] = png16
        out["deep_tiff"] = [
            ("TIFF", encode(Image.fromarray(grey), "TIFF")),
            ("TIFF", encode(Image.fromarray(grey.astype(np.int32) * 1000), "TIFF")),
            ("TIFF", encode(Image.fromarray(grey.astype(np.float32) / 65535.0), "TIFF")),
            ("TIFF", encode(Image.fromarray(np.full((16, 16), np.nan, np.float32)), "TIFF")),
        ]
        rgba = photo.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
        palette = photo.convert("P", palette=1, colors=64)
        palette.info["transparency"] = 0
        out["alpha"] = [
            ("PNG", encode(rgba, "PNG")),
            ("WEBP", encode(rgba, "WEBP")),
            ("TIFF", encode(rgba, "TIFF")),
            ("PNG", encode(rgba.convert("LA"), "PNG")),
            ("PNG", encode(palette, "PNG", transparency=0)),
            ("GIF", encode(palette, "GIF", transparency=0)),
            ("PNG", encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")),  # fully transparent
            ("PNG", encode(photo, "PNG", transparency=(0, 0, 0))),  # RGB with a tRNS colour
        ]
        out["modes"] = [
            ("PNG", encode(photo.convert("L"), "PNG")),
            ("PNG", encode(photo.convert("1"), "PNG")),
            ("BMP", encode(photo.convert("1"), "BMP")),
            ("PNG", encode(photo.convert("P"), "PNG")),
            ("TIFF", encode(photo.convert("YCbCr"), "TIFF")),
            ("JPEG", encode(photo.convert("L"), "JPEG")),
            ("TIFF", encode(photo, "TIFF", compression="tiff_lzw")),
            ("TIFF", encode(photo, "TIFF", compression="jpeg")),
        ]
        exif = []
        for orientation in (2, 3, 5, 6, 7, 8, 0, 9, 65535):
            tags = Image.Exif()
            tags[0x0112] = orientation
            exif.append(("JPEG", encode(photo, "JPEG", exif=tags.tobytes())))
        exif.append(("JPEG", encode(photo, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")))
        out["exif"] = exif
        # Tiny files that decode to the service's pixel limit or above it.
        out["bomb"] = [
            ("PNG", encode(Image.new("L", (8000, 8000), 7), "PNG")),
            ("PNG", encode(Image.new("RGB", (9000, 9000), (1, 2, 3)), "PNG")),
            ("GIF", encode(Image.new("P", (16000, 4000), 3), "GIF")),
        ]
        return out

    def sample(self, key: str) -> Sample:
        """Image ``key`` of this seed: the same bytes on every call."""
        rng = random.Random(f"{self.seed}:{key}")
        kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        fmt, data = self._mutate(rng, kind)
        if kind == "garbage":
            name, content_type = f"{key}.bin", rng.choice(("application/octet-stream", "image/jpeg"))
        else:
            name, content_type = f"{key}.{EXTENSIONS[fmt]}", CONTENT_TYPES[fmt]
            if rng.random() < 0.1:  # what a browser sends for an unknown type
                content_type = "application/octet-stream"
        return Sample(key, kind, name, data, content_type)

    def _any(self, rng: random.Random) -> tuple[str, bytes]:
        if rng.random() < 0.85:
            return rng.choice(self.bases)
        return rng.choice(rng.choice(list(self.specials.values())))

    def _mutate(self, rng: random.Random, kind: str) -> tuple[str, bytes]:
        if kind in self.specials:
            return rng.choice(self.specials[kind])
        if kind == "garbage":
            return "JPEG", garbage(rng)
        fmt, data = self._any(rng) if kind != "valid" else rng.choice(self.bases)
        if kind == "bitflip":
            return fmt, bitflip(rng, data)
        if kind == "truncate":
            return fmt, data[: rng.randrange(0, len(data))]
        if kind == "insert_bytes":
            at = rng.randrange(0, len(data) + 1)
            run = rng.randbytes(rng.choice((1, 4, 64, 1024, 65536)))
            return fmt, data[:at] + run + data[at:]
        if kind == "delete_bytes":
            at = rng.randrange(0, len(data))
            return fmt, data[:at] + data[at + rng.choice((1, 4, 64, 1024, 65536)) :]
        if kind == "header_lie":
            fmt, data = rng.choice(self.bases)
            return fmt, lie(rng, fmt, data)
        if kind == "wrong_magic":
            other = rng.choice([f for f in FORMATS if f != fmt])
            magic = MAGIC[other]
            choice = rng.randrange(3)
            if choice == 0:  # another format's magic over this one's
                return fmt, magic + data[len(magic) :]
            if choice == 1:  # another format's magic in front of this file
                return fmt, magic + data
            return fmt, rng.randbytes(len(MAGIC[fmt])) + data[len(MAGIC[fmt]) :]  # no magic at all
        return fmt, data  # valid


def bitflip(rng: random.Random, data: bytes) -> bytes:
    """Flip 1-64 random bits; half the time only in the first 512 bytes, where the headers are."""
    out = bytearray(data)
    if not out:
        return bytes(out)
    span = min(len(out), 512) if rng.random() < 0.5 else len(out)
    for _ in range(rng.choice((1, 2, 8, 64))):
        out[rng.randrange(span)] ^= 1 << rng.randrange(8)
    return bytes(out)


def garbage(rng: random.Random) -> bytes:
    """Random bytes of random length, sometimes behind a real format's magic."""
    size = rng.choice((0, 1, 2, 8, 100, 1000, 10_000, 100_000))
    body = rng.randbytes(size)
    if rng.random() < 0.5:
        body = MAGIC[rng.choice(FORMATS)] + body
    return body


def lie(rng: random.Random, fmt: str, data: bytes) -> bytes:
    """``data`` with the image size in its header replaced by an absurd one (checksums fixed or not)."""
    width, height = rng.choice(LIE_SIZES)
    out = bytearray(data)
    if fmt == "PNG" and len(out) >= 33:
        out[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
        if rng.random() < 0.7:  # a consistent CRC gets past the chunk check
            out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
        return bytes(out)
    if fmt == "JPEG":
        for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
            at = out.find(marker, 2)
            if at > 0 and at + 9 <= len(out):
                out[at + 5 : at + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
                return bytes(out)
    if fmt == "GIF" and len(out) >= 10:
        out[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
        at = out.find(b"\x2c", 13)  # the first image descriptor (may be wrong: a byte of the palette)
        if at > 0 and at + 9 <= len(out) and rng.random() < 0.5:
            out[at + 5 : at + 9] = struct.pack("<HH", min(width, 65535), min(height, 65535))
        return bytes(out)
    if fmt == "BMP" and len(out) >= 26:
        signed_height = -min(height, 2**31 - 1) if rng.random() < 0.3 else min(height, 2**31 - 1)
        out[18:26] = struct.pack("<ii", min(width, 2**31 - 1), signed_height)
        return bytes(out)
    if fmt == "WEBP" and len(out) >= 30 and out[12:16] == b"VP8 ":
        out[26:30] = struct.pack("<HH", min(width, 16383), min(height, 16383))
        return bytes(out)
    # TIFF (and anything else): overwrite a few header bytes with 0xff, which hits the first IFD's sizes
    for _ in range(4):
        at = rng.randrange(4, min(len(out), 200))
        out[at] = 0xFF
    return bytes(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--key", required=True, help="the sample key, as recorded in the stress results")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=4, help="bench photos mixed in (as stress.py uses)")
    args = parser.parse_args()
    from common import load_images, prepare_images

    prepare_images()
    sample = Corpus(args.seed, [data for _, data in load_images()[: args.photos]]).sample(args.key)
    args.out.write_bytes(sample.data)
    print(f"{sample.key}: {sample.kind}, {sample.name}, {len(sample.data)} bytes, {sample.content_type}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
