"""The service's gRPC endpoint (Open Inference Protocol ``ModelInfer``) as a ``loadgen.py`` protocol.

``loadgen.py --protocol service-grpc --url http://HOST:GRPC_PORT``: one photo per call, sent as Triton's
clients send it (a BYTES input in ``raw_input_contents``), the ``crops`` and model of the HTTP phases.
The answer is turned into an ``httpx.Response`` carrying the HTTP status of the same meaning, so the load
generator counts it like any other; the channel is one per target, shared by all clients (HTTP/2 streams).
"""

from __future__ import annotations

import struct

import grpc
import httpx

from service.oip import inference_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}


def _call(target: str) -> grpc.aio.UnaryUnaryMultiCallable:
    if target not in _calls:
        channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)])
        _calls[target] = channel.unary_unary(
            INFER,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
    return _calls[target]


async def send(http: httpx.AsyncClient, name: str, data: bytes, options: dict[str, str]) -> httpx.Response:
    """``ModelInfer`` of one photo on the gRPC port named by ``http``'s base URL."""
    request = pb.ModelInferRequest(model_name=options["model"])
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(data)) + data)
    request.parameters["crops"].int64_param = int(options.get("crops", "10"))
    target = f"{http.base_url.host}:{http.base_url.port}"
    try:
        response = await _call(target)(request, timeout=http.timeout.read)
    except grpc.aio.AioRpcError as exc:
        trailers = dict(exc.trailing_metadata() or ())
        headers = {"retry-after": str(trailers["retry-after"])} if "retry-after" in trailers else {}
        status = HTTP_STATUS.get(exc.code(), 500)
        return httpx.Response(status, text=f"{exc.code().name}: {exc.details()}", headers=headers)
    return httpx.Response(200, content=response.raw_output_contents[0])
