"""Response bodies of the service API (they also document it at ``/docs``).

A model's metadata fields are not listed here: they are the public fields of the model contract
(``service.model_contract``), so the API shows what an exported file carries, no more and no less.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, create_model

from service.model_contract import public_fields


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
    explain_ms: float | None = Field(
        default=None, description="class activation maps, after the session run (explain=true only)"
    )
    total_ms: float


class Explanation(BaseModel):
    label: str = Field(description="the class this map explains")
    index: int = Field(description="its index in the model output")
    probability: float = Field(description="its softmax probability averaged over the crops")
    grid_width: int = Field(description="heatmap columns; each cell is crop_size / feature-map width pixels")
    grid_height: int = Field(description="heatmap rows; the grid covers the whole image")
    value_min: float = Field(description="the map value that gray level 0 stands for")
    value_max: float = Field(description="the map value that gray level 255 stands for")
    heatmap_png: str = Field(
        description="base64 PNG (grayscale and alpha, grid_width x grid_height): the class activation map "
        "averaged over the crops in image coordinates, 0-255 from value_min to value_max; alpha 0 where no "
        "crop looked. Stretch it over the image to overlay it"
    )


class ClassifyResponse(BaseModel):
    model: str
    version: str
    crops: int
    predictions: list[Prediction]
    timings: Timings
    explanations: list[Explanation] | None = Field(
        default=None, description="explain=true only: one map per class explained (top-1 or explain_class)"
    )


class BatchItem(BaseModel):
    filename: str | None = None
    predictions: list[Prediction] | None = None
    timings: Timings | None = None
    explanations: list[Explanation] | None = Field(default=None, description="explain=true only")
    error: ErrorBody | None = Field(
        default=None, description="set instead of predictions when this image failed"
    )


class BatchResponse(BaseModel):
    model: str
    version: str
    crops: int
    results: list[BatchItem] = Field(description="one entry per image part, in request order")


class ModelFile(BaseModel):
    name: str
    status: str = Field(description="ready, loading, refused (breaks the model contract) or failed")
    loading: bool = Field(description="a new file version is being loaded")
    error: str | None = Field(default=None, description="why the file is not (or no longer) served")
    file: str


def _with_contract_fields() -> type[ModelFile]:
    """``ModelFile`` plus the public contract fields, each optional: a file not served has none."""
    fields: dict[str, Any] = {name: (kind | None, None) for name, kind in public_fields().items()}
    return create_model("ServedModelFile", __base__=ModelFile, **fields)


if TYPE_CHECKING:  # mypy cannot see fields made at run time; to it the base is the plain ModelFile
    ServedModelFile = ModelFile
else:
    ServedModelFile = _with_contract_fields()


class ModelInfo(ServedModelFile):
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
