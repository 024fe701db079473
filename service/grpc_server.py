"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``, as Triton's clients speak it.

A ``grpc.aio`` server on the app's own event loop, on ``SERVE_GRPC_PORT``: it shares the registry,
batchers, limits and metrics with the HTTP endpoints, and its operations are ``service/v2_core.py``'s.
Errors map to gRPC status codes by their HTTP meaning (:data:`STATUS_CODES`); an overloaded service answers
UNAVAILABLE at once with a ``retry-after`` trailer (seconds), as HTTP answers 503 with ``Retry-After``.

The message classes are generated from ``service/oip/inference.proto``; the service is registered here
under its protocol name with grpc's generic handlers (see that file for why the messages live in a package
of their own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from service import v2_core
from service.errors import (
    INTERNAL_MESSAGE,
    BadRequest,
    ModelNotFound,
    Overloaded,
    ServiceError,
)
from service.metrics import Metrics
from service.oip import inference_pb2 as pb
from service.security import check_token
from service.state import ServiceState
from service.v2_protocol import BYTES, UINT8, InferRequest, join_bytes_elements, request_from

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
RETRY_AFTER = "retry-after"

# The HTTP status each service error carries, as the gRPC code with the same meaning.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]


def parameter_value(parameter: pb.InferParameter) -> Any:
    """The Python value of one ``InferParameter`` (None when unset)."""
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def _parameters(source: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in source.items()}


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _input_buffer(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes:
    """The typed contents of ``tensor`` in the binary layout the REST binary extension uses."""
    contents = tensor.contents
    if tensor.datatype == BYTES:
        return join_bytes_elements(list(contents.bytes_contents))
    if tensor.datatype == UINT8:
        values = np.asarray(contents.uint_contents, dtype=np.uint32)
        if values.size and int(values.max()) > 255:
            raise BadRequest(f"input {tensor.name!r}: UINT8 contents must be 0-255")
        return values.astype(np.uint8).tobytes()
    return b""  # other datatypes are refused by the inference itself, with its message


def infer_request(message: pb.ModelInferRequest) -> tuple[InferRequest, list[bytes | None]]:
    """The protocol-neutral request and the binary data of each input (raw, or from typed contents)."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
    request = request_from(
        {
            "id": message.id or None,
            "parameters": _parameters(message.parameters),
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "datatype": t.datatype,
                    "parameters": _parameters(t.parameters),
                }
                for t in message.inputs
            ],
            "outputs": [{"name": o.name, "parameters": _parameters(o.parameters)} for o in message.outputs]
            or None,
        }
    )
    buffers: list[bytes | None] = list(raw) if raw else [_input_buffer(t) for t in message.inputs]
    return request, buffers


def infer_response(answer: v2_core.InferAnswer) -> pb.ModelInferResponse:
    """Outputs as ``raw_output_contents`` (the layout Triton's clients read)."""
    body = answer.body
    response = pb.ModelInferResponse(
        model_name=body["model_name"], model_version=body["model_version"], id=body.get("id", "")
    )
    for key, value in body.get("parameters", {}).items():
        _set_parameter(response.parameters[key], value)
    for tensor in answer.tensors:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(tensor.binary())
    return response


class InferenceServicer:
    """The RPCs of ``inference.GRPCInferenceService`` on one :class:`ServiceState`."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state

    def _check_client(self, context: grpc.aio.ServicerContext) -> None:
        """The bearer token of ``SERVE_AUTH_TOKEN`` in the ``authorization`` metadata, when it is set."""
        expected = self.state.settings.auth_token
        if expected is None:
            return
        sent = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, token = str(sent).partition(" ")
        bearer = token if scheme.lower() == "bearer" else None
        check_token(expected, bearer, "inference", "'authorization: Bearer <token>' metadata")

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=v2_core.server_ready(self.state))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            ready = v2_core.model_ready(self.state, request.name, request.version or None)
        except ModelNotFound:
            ready = False  # as Triton answers for a name or version it does not serve
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return json_format.ParseDict(v2_core.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        model = self.state.registry.resolve(request.name, request.version or None)
        return json_format.ParseDict(
            v2_core.model_metadata(model), pb.ModelMetadataResponse(), ignore_unknown_fields=True
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        model = self.state.registry.resolve(request.name, request.version or None)
        return pb.ModelConfigResponse(
            config=json_format.ParseDict(v2_core.model_config(self.state, model), pb.ModelConfig())
        )

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        stats = v2_core.model_statistics(self.state, request.name or None, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        index = v2_core.repository_index(self.state, request.ready)
        return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse())

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        self._check_client(context)
        remaining = context.time_remaining()
        timeout_s = remaining if remaining is not None and remaining < 1e9 else None
        name, version = request.model_name, request.model_version or None
        v2_core.admit(self.state, name, version, timeout_s)
        budget, size = self.state.upload_budget, request.ByteSize()
        if not budget.take(size):
            raise Overloaded(budget.busy_message())
        try:
            infer, buffers = infer_request(request)
            answer = await v2_core.infer(self.state, name, version, infer, buffers, timeout_s)
        finally:
            budget.give(size)
        return infer_response(answer)


RPCS: dict[str, tuple[type[Message], type[Message]]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
    "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
}


def _observed(method: str, handler: Handler, state: ServiceState) -> Handler:
    """``handler`` with metrics, and service errors turned into gRPC statuses (never a stack trace)."""
    metrics: Metrics = state.metrics

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Message:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        metrics.grpc_in_flight.inc()
        try:
            return await handler(request, context)
        except ServiceError as exc:
            code = STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
            if exc.status_code >= 500:
                log.warning("gRPC %s -> %s %s: %s", method, code.name, exc.code, exc.message)
            if code is grpc.StatusCode.UNAVAILABLE:
                retry = exc.retry_after if exc.retry_after is not None else state.settings.retry_after_s
                context.set_trailing_metadata(((RETRY_AFTER, str(retry)),))
            await context.abort(code, exc.message)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed: grpc cancels the call
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("gRPC %s failed", method)
            await context.abort(code, INTERNAL_MESSAGE)
        finally:
            metrics.grpc_in_flight.dec()
            metrics.grpc_requests.labels(method, code.name).inc()
            metrics.grpc_request_duration.labels(method).observe(time.perf_counter() - started)
        raise AssertionError("unreachable: abort raises")

    return call


def handlers(state: ServiceState) -> grpc.GenericRpcHandler:
    """The service's RPCs, registered under the protocol's service name."""
    servicer = InferenceServicer(state)
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            method: grpc.unary_unary_rpc_method_handler(
                _observed(method, getattr(servicer, method), state),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
            for method, (request_type, response_type) in RPCS.items()
        },
    )


async def start_grpc_server(state: ServiceState) -> grpc.aio.Server:
    """Listen on ``SERVE_HOST``:``SERVE_GRPC_PORT``; messages up to the HTTP upload limit, calls up to the
    connection limit (beyond: RESOURCE_EXHAUSTED at once)."""
    settings = state.settings
    limit = settings.max_upload_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
        maximum_concurrent_rpcs=settings.max_connections,
    )
    server.add_generic_rpc_handlers((handlers(state),))
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {exc}") from exc
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)
    return server
