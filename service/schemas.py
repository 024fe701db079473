"""Response bodies of the service API (they also document it at ``/docs``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. invalid_image")
    message: str = Field(description="what went wrong, for a human")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Prediction(BaseModel):
    label: str
    index: int = Field(description="class index in the model output")
    probability: float = Field(description="softmax probability averaged over the crops")


class Timings(BaseModel):
    decode_ms: float = Field(description="decode, resize and crop")
    queue_ms: float = Field(description="wait for a batch")
    inference_ms: float = Field(description="session run of the batch this image was in")
    total_ms: float


class ClassifyResponse(BaseModel):
    model: str
    version: str
    crops: int
    predictions: list[Prediction]
    timings: Timings


class BatchItem(BaseModel):
    filename: str | None = None
    predictions: list[Prediction] | None = None
    timings: Timings | None = None
    error: ErrorBody | None = Field(
        default=None, description="set instead of predictions when this image failed"
    )


class BatchResponse(BaseModel):
    model: str
    version: str
    crops: int
    results: list[BatchItem] = Field(description="one entry per image part, in request order")


class ModelInfo(BaseModel):
    name: str
    status: str = Field(description="ready, loading, refused (breaks the model contract) or failed")
    loading: bool = Field(description="a new file version is being loaded")
    error: str | None = Field(default=None, description="why the file is not (or no longer) served")
    file: str
    version: str | None = None
    arch: str | None = None
    dataset: str | None = None
    crop_size: int | None = None
    resize_size: int | None = None
    num_labels: int | None = None
    test_error_1crop: float | None = None
    test_error_10crop: float | None = None
    created: str | None = None
    checkpoint_sha256: str | None = None
    schema_version: str | None = None
    opset: int | None = None
    providers: list[str] = Field(default_factory=list, description="execution providers in use")
    loaded_at: datetime | None = None
    default: bool = False


class ModelDetail(ModelInfo):
    labels: list[str] = Field(default_factory=list)


class ModelList(BaseModel):
    default_model: str | None
    models: list[ModelInfo]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: list[str]


class ReloadReport(BaseModel):
    loaded: list[str]
    unloaded: list[str]
    errors: dict[str, str]
    unchanged: list[str]
