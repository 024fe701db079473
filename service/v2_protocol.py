"""Wire format of the Open Inference Protocol (KServe v2, what Triton clients speak).

Supports JSON tensors, Triton's binary tensor data extension (``Inference-Header-Content-Length``,
``binary_data_size``, ``binary_data``/``binary_data_output``) and the classification extension
(``"classification": k`` on an output gives BYTES ``"prob:index:label"`` strings). In JSON a BYTES
element carrying an encoded image is base64 text; in binary it is the raw bytes.

Plain data in, plain data out: :func:`render` gives the body and its headers (:class:`Rendered`), and the
router (``service/routers/v2.py``) makes the HTTP response; errors are the service's own (``BadRequest``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from service.errors import BadRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
OUTPUT = "probabilities"
BYTES, UINT8, FP32 = "BYTES", "UINT8", "FP32"


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass
class Tensor:
    """An output tensor: FP32 values (numpy) or BYTES elements."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]

    def binary(self) -> bytes:
        if isinstance(self.values, np.ndarray):
            return np.ascontiguousarray(self.values, dtype="<f4").tobytes()
        return join_bytes_elements(self.values)

    def json_data(self) -> list[Any]:
        if isinstance(self.values, np.ndarray):
            return [float(x) for x in self.values.reshape(-1)]
        return [v.decode("utf-8", "replace") for v in self.values]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err.get('msg')}" if where else str(err.get("msg"))


def request_from(data: dict[str, Any]) -> InferRequest:
    """An inference request from decoded fields (the gRPC messages'); 400 with the first problem."""
    try:
        return InferRequest.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(f"invalid inference request: {_first_error(exc)}") from None


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, list[bytes | None]]:
    """The JSON request and, per input, its binary data (None when the data is in the JSON)."""
    split = len(body)
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer, not {header_length!r}") from None
        if not 0 <= split <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {split} does not fit a body of {len(body)} bytes")
    try:
        request = InferRequest.model_validate_json(body[:split])
    except ValidationError as exc:
        raise BadRequest(f"invalid inference request: {_first_error(exc)}") from None
    binary, offset = body[split:], 0
    buffers: list[bytes | None] = []
    for item in request.inputs:
        size = item.parameters.get("binary_data_size")
        if size is None:
            buffers.append(None)
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest(f"input {item.name!r}: binary_data_size {size!r} does not fit the binary data")
        buffers.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request, buffers


def split_bytes_elements(buffer: bytes) -> list[bytes]:
    """Binary BYTES tensor: each element is a little-endian uint32 length and that many bytes."""
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise BadRequest("truncated BYTES tensor: an element length is cut off")
        (size,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + size > len(buffer):
            raise BadRequest("truncated BYTES tensor: an element is longer than the data")
        items.append(buffer[offset : offset + size])
        offset += size
    return items


def join_bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _element_count(item: RequestInput) -> int:
    if any(d < 0 for d in item.shape):
        raise BadRequest(f"input {item.name!r}: shape {item.shape} has a negative dimension")
    return math.prod(item.shape)


def encoded_images(item: RequestInput, buffer: bytes | None) -> list[bytes]:
    """The encoded images of a BYTES input of shape ``[N]`` or ``[N, 1]``."""
    if not (len(item.shape) == 1 or (len(item.shape) == 2 and item.shape[1] == 1)):
        raise BadRequest(f"input {item.name!r}: BYTES images need shape [N] or [N, 1], not {item.shape}")
    if buffer is not None:
        images = split_bytes_elements(buffer)
    else:
        images = []
        for i, element in enumerate(_flatten(item.data)):
            if not isinstance(element, str):
                raise BadRequest(f"input {item.name!r}: element {i} must be a base64 string")
            try:
                images.append(base64.b64decode(element, validate=True))
            except binascii.Error:
                raise BadRequest(f"input {item.name!r}: element {i} is not valid base64") from None
    if len(images) != _element_count(item):
        raise BadRequest(f"input {item.name!r}: shape {item.shape} but {len(images)} elements")
    return images


def pixel_batch(item: RequestInput, buffer: bytes | None) -> np.ndarray:
    """The RGB images of a UINT8 input of shape ``[N, H, W, 3]``."""
    if len(item.shape) != 4 or item.shape[3] != 3 or min(item.shape[1:3], default=0) < 1:
        raise BadRequest(f"input {item.name!r}: UINT8 pixels need shape [N, H, W, 3], not {item.shape}")
    if buffer is not None:
        pixels = np.frombuffer(buffer, dtype=np.uint8)
    else:
        values = np.asarray(_flatten(item.data))
        if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
            raise BadRequest(f"input {item.name!r}: UINT8 data must be integers 0-255")
        pixels = values.astype(np.uint8)
    if pixels.size != _element_count(item):
        raise BadRequest(f"input {item.name!r}: shape {item.shape} but {pixels.size} elements")
    return pixels.reshape(item.shape)


def classification(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> Tensor:
    """Top-``k`` classes per image as ``"prob:index:label"`` (the classification extension)."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    strings = [
        f"{probabilities[row, i]:f}:{i}:{labels[i]}".encode() for row in range(len(order)) for i in order[row]
    ]
    return Tensor(OUTPUT, BYTES, [len(order), k], strings)


@dataclass(frozen=True)
class Rendered:
    """An inference response's body, its media type and its extra headers."""

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def render(body: dict[str, Any], tensors: list[Tensor], binary_names: set[str]) -> Rendered:
    """The response: plain JSON, or JSON header + binary tensors when any output asked for binary."""
    outputs, blobs = [], []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.name in binary_names:
            blob = tensor.binary()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.json_data()
        outputs.append(entry)
    header = json.dumps({**body, "outputs": outputs}, separators=(",", ":")).encode()
    if not blobs:
        return Rendered(header, "application/json")
    return Rendered(header + b"".join(blobs), "application/octet-stream", {HEADER_LENGTH: str(len(header))})
