"""All service settings in one place: environment variables ``SERVE_*``, overridable by the CLI."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.batcher import ADMISSION_HEADROOM
from service.defaults import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_PROVIDERS, DEFAULT_TRT_CACHE_DIR
from service.preprocess import DEFAULT_MAX_RESIZED_PIXELS

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def split_list(value: object) -> str:
    """Normalise a comma-separated string or a list into ``"a,b,c"`` (no blanks)."""
    items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    return ",".join(str(item).strip() for item in items if str(item).strip())


class Settings(BaseSettings):
    """Every knob of the service. Each field ``name`` is read from ``SERVE_NAME``."""

    model_config = SettingsConfigDict(env_prefix="SERVE_", extra="ignore", validate_default=True)

    models_dir: Path = Field(default=Path("models"), description="directory whose *.onnx files are served")
    base_models_dir: Path | None = Field(
        default=None,
        description="a second directory of *.onnx files, served beneath the models directory: a file of the "
        "same name there wins. Read at every scan, not watched. The service image ships its models here, so "
        "that a models directory mounted over /app/models adds models instead of hiding the shipped ones",
    )
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on")
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="TCP port of the gRPC endpoint (Open Inference Protocol; Triton's is 8001); 0: none",
    )
    default_model: str | None = Field(
        default=None,
        description="model used when a request names none (default: resnet50-imagenet if served or still "
        "loading, else resnet20-cifar10 likewise, else the first ready model alphabetically)",
    )
    providers: str = Field(
        default=DEFAULT_PROVIDERS,
        description="ONNX Runtime execution providers in order of preference (tensorrt, cuda, cpu or "
        "full provider names), comma-separated",
    )
    trt_cache_dir: Path = Field(
        default=DEFAULT_TRT_CACHE_DIR, description="writable directory for TensorRT engine and timing caches"
    )
    trt_fp16: bool = Field(default=True, description="let TensorRT build FP16 engines")
    intra_op_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime threads per session (0: its default)"
    )
    preprocess_threads: int = Field(
        default=0,
        ge=0,
        description="threads decoding and cropping images, all models together (0: one per usable CPU)",
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description="most rows (crops) in one session run; an image's crops are never split, so an image "
        "with more crops than this runs alone",
    )
    max_queue_delay_ms: float = Field(
        default=5.0,
        ge=0,
        description="while a batch runs, the next closes when it is full or when its oldest image has "
        "waited this long in the queue, in ms (a request that finds the model idle runs at once)",
    )
    max_queue_size: int = Field(
        default=256,
        ge=1,
        description="most images queued for a batch per model, and most images waiting for or in the decode "
        "pool, all models together; an image beyond either gets 503 at once",
    )
    request_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="deadline of each image, from its upload read to its answer (a batch request times each "
        "image on its own; ?timeout=S on /classify and /classify/batch may shorten it): an image that the "
        f"work ahead of it would keep past {ADMISSION_HEADROOM:g} of it gets 503 at once, one that overruns "
        "it 504",
    )
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024, ge=1, description="largest request body in bytes (413 above it)"
    )
    max_image_pixels: int = Field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="largest encoded image in pixels, as its header declares it (413 above it)",
    )
    max_resized_pixels: int = Field(
        default=DEFAULT_MAX_RESIZED_PIXELS,
        ge=1,
        description="largest image in pixels after its shorter side is resized to the model's resize size "
        "(413 above it): bounds the memory of long, thin images",
    )
    max_upload_bytes_in_flight: int = Field(
        default=256 * 1024 * 1024,
        ge=1,
        description="request bytes all requests in flight may hold together (503 with Retry-After above it)",
    )
    max_connections: int = Field(
        default=2048, ge=1, description="most open client connections (beyond: 503 with Retry-After, closed)"
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="seconds a new connection may take to send its request's line and headers, and a later "
        "request on it to finish them once begun (then closed, with 408 if part of them came)",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="seconds a request may take to send its whole body after its headers (then closed)",
    )
    max_batch_images: int = Field(
        default=16, ge=1, description="most images in one /classify/batch or v2 infer request (413 above it)"
    )
    auth_token: SecretStr | None = Field(
        default=None,
        description="bearer token required by /classify, /classify/batch and v2 infer (unset: open)",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="bearer token of the admin endpoints (unset: admin endpoints disabled)"
    )
    cors_origins: str = Field(default="", description="comma-separated origins allowed by CORS (* for any)")
    watch: bool = Field(default=True, description="watch the models directory and hot-reload changed files")
    watch_debounce_ms: int = Field(default=300, ge=1, description="how long file events are gathered, in ms")
    retry_after_s: int = Field(
        default=1,
        ge=0,
        description="Retry-After seconds of 503 answers, except deadline refusals, which send the time the "
        "work already admitted needs to drain",
    )
    log_level: str = Field(default="info", description="log level: " + ", ".join(LOG_LEVELS))

    @field_validator("providers", mode="before")
    @classmethod
    def _known_providers(cls, value: object) -> str:
        joined = split_list(value)
        if not joined:
            raise ValueError("at least one provider is needed (cpu is always available)")
        for name in joined.split(","):
            if name.lower() not in PROVIDER_ALIASES and not name.endswith("ExecutionProvider"):
                raise ValueError(
                    f"unknown provider {name!r}: use tensorrt, cuda, cpu or a full provider name"
                )
        return joined

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> str:
        return split_list(value)

    @field_validator("auth_token", "admin_token", "default_model", "base_models_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> str:
        level = str(value).lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _budget_fits_an_upload(self) -> Settings:
        if self.max_upload_bytes_in_flight < self.max_upload_bytes:
            raise ValueError(
                f"max_upload_bytes_in_flight ({self.max_upload_bytes_in_flight}) must be at least "
                f"max_upload_bytes ({self.max_upload_bytes}), or the largest upload could never be read"
            )
        return self

    @property
    def provider_list(self) -> list[str]:
        """Full ONNX Runtime provider names, in order of preference."""
        return [PROVIDER_ALIASES.get(name.lower(), name) for name in self.providers.split(",")]

    @property
    def cors_origin_list(self) -> list[str]:
        return self.cors_origins.split(",") if self.cors_origins else []

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_ms / 1000.0
