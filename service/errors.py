"""The service's exceptions: each one knows its HTTP status and a stable error code.

Raising one anywhere (preprocessing, batching, routing) yields the one JSON error shape
``{"error": {"code": ..., "message": ...}}`` with the right status, and never a stack trace.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException

from service.image_errors import ImageError

INTERNAL_MESSAGE = "internal error; the service log has details"


class ServiceError(Exception):
    """Base class: an error a client caused or should know about; ``message`` is shown to it."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidImage(ServiceError, ImageError):
    """The upload is empty, truncated, corrupt or not an image format the service decodes."""

    status_code = 400
    code = "invalid_image"


class BadRequest(ServiceError):
    """A malformed request body (for example a v2 inference request that does not parse)."""

    status_code = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    """Missing or wrong bearer token."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """The endpoint is disabled (admin endpoints without ``SERVE_ADMIN_TOKEN``)."""

    status_code = 403
    code = "forbidden"


class ModelNotFound(ServiceError):
    """No model of that name is in the models directory (or it was refused)."""

    status_code = 404
    code = "model_not_found"


# Subclasses starlette's HTTPException too: FastAPI re-raises those from body parsing instead of
# turning them into a generic 400, and the body limit is enforced while the body is read.
class PayloadTooLarge(ServiceError, HTTPException):
    """The request body is above ``SERVE_MAX_UPLOAD_BYTES``."""

    status_code = 413
    code = "payload_too_large"

    def __init__(self, message: str) -> None:
        ServiceError.__init__(self, message)
        HTTPException.__init__(self, status_code=413, detail=message)


class ImageTooLarge(ServiceError, ImageError):
    """The image declares more pixels than ``SERVE_MAX_IMAGE_PIXELS`` (a decompression bomb)."""

    status_code = 413
    code = "image_too_large"


class TooManyImages(ServiceError):
    """A batch request carries more images than ``SERVE_MAX_BATCH_IMAGES``."""

    status_code = 413
    code = "too_many_images"


class UnsupportedMediaType(ServiceError):
    """The request (or the image part) does not declare an image content type."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidParameter(ServiceError):
    """A query or body parameter is out of range or of the wrong type."""

    status_code = 422
    code = "invalid_parameter"


class ExplanationUnavailable(ServiceError):
    """``explain=true`` on a model without a feature output (exported before class activation maps)."""

    status_code = 422
    code = "explanation_unavailable"


class ServiceUnavailable(ServiceError):
    """Nothing can answer right now: no model is ready yet, or the queue is full."""

    status_code = 503
    code = "not_ready"


class Overloaded(ServiceUnavailable):
    """The batching queue is full; the client should retry after ``Retry-After`` seconds."""

    code = "overloaded"


class RequestTimeout(ServiceError):
    """The request did not finish within ``SERVE_REQUEST_TIMEOUT_S``."""

    status_code = 504
    code = "timeout"


class InferenceFailed(ServiceError):
    """ONNX Runtime failed on a batch; the details are logged, not sent."""

    status_code = 500
    code = "inference_failed"
