"""Reading images out of requests: multipart parts or a raw body, with content-type checks."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import InvalidParameter, ServiceError, TooManyImages, UnsupportedMediaType

MULTIPART = "multipart/form-data"
# What a browser or curl may send for a file part whose type it cannot guess.
GENERIC_PART_TYPES = ("", "application/octet-stream")


@dataclass
class Upload:
    """One image of a request: its bytes, or the error that makes it unusable."""

    filename: str | None
    data: bytes = b""
    error: ServiceError | None = None


def check_image_count(count: int, limit: int) -> None:
    """413 for a request carrying more than ``limit`` (``SERVE_MAX_BATCH_IMAGES``) images."""
    if count > limit:
        raise TooManyImages(f"{count} images in one request; the limit is {limit} (SERVE_MAX_BATCH_IMAGES)")


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _check_part_type(part: UploadFile) -> None:
    kind = media_type(part.content_type)
    if kind not in GENERIC_PART_TYPES and not kind.startswith("image/"):
        raise UnsupportedMediaType(f"part {part.filename or '?'} has content type {kind}, not an image")


async def _read_part(part: UploadFile) -> Upload:
    try:
        _check_part_type(part)
    except ServiceError as exc:
        return Upload(part.filename, error=exc)
    return Upload(part.filename, await part.read())


def _require_multipart(request: Request, field: str) -> None:
    kind = media_type(request.headers.get("content-type"))
    if kind != MULTIPART:
        raise UnsupportedMediaType(
            f"content type {kind or 'none'} is not accepted: send {MULTIPART} with {field!r} file parts"
        )


async def read_image(request: Request, field: str = "image") -> Upload:
    """The image of a single-image request: multipart field ``field`` or a raw ``image/*`` body."""
    kind = media_type(request.headers.get("content-type"))
    if kind.startswith("image/"):
        return Upload(None, await request.body())
    if kind != MULTIPART:
        raise UnsupportedMediaType(
            f"content type {kind or 'none'} is not an image: send {MULTIPART} with an {field!r} file "
            "or a raw body with an image/* content type"
        )
    async with request.form() as form:
        part = form.get(field)
        if not isinstance(part, UploadFile):
            raise InvalidParameter(f"multipart field {field!r} with an image file is required")
        upload = await _read_part(part)
    if upload.error is not None:
        raise upload.error
    return upload


async def read_images(request: Request, field: str, max_images: int) -> list[Upload]:
    """All ``field`` file parts of a multipart request; a bad part is an :class:`Upload` with an error."""
    _require_multipart(request, field)
    async with request.form() as form:
        parts = form.getlist(field)
        if not parts:
            raise InvalidParameter(f"at least one multipart {field!r} file part is required")
        check_image_count(len(parts), max_images)
        uploads = []
        for part in parts:
            if isinstance(part, UploadFile):
                uploads.append(await _read_part(part))
            else:
                uploads.append(Upload(None, error=InvalidParameter(f"{field!r} parts must be files")))
        return uploads
