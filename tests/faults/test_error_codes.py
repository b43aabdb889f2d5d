"""Finding 6: malformed input gets INVALID_ARGUMENT or DATA_LOSS (never INTERNAL), bad keys get
INVALID_ARGUMENT (never UNAVAILABLE, which callers retry), over real gRPC on a real S3 store.
Health goes NOT_SERVING while the store is down and back to SERVING when it returns."""

from __future__ import annotations

import json
import struct
import time

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from gflow.v1 import flow_pb2, flow_pb2_grpc
from services.common import errors
from services.common.artifacts import Artifacts
from services.common.client import error_from_rpc
from services.common.service import watch_store
from services.common.store import S3Store
from services.ops.seaweedfs import start_seaweed_s3
from tests.conftest import TEST_SECRET_KEY, s3_settings
from tests.faults.clips import clip_frames, stored_clip
from tests.faults.serving import flow_server

pytestmark = pytest.mark.s3


def _header(**fields) -> bytes:
    header = {"version": 1, "dtype": "uint8", "shape": [4, 24, 32, 3], "layout": "THWC"}
    header.update(fields)
    return json.dumps(header).encode()


def _array_bytes(header: bytes, length: int | None = None) -> bytes:
    size = len(header) if length is None else length
    return b"GFLOWARR" + struct.pack("<I", size) + header + bytes(16)


MALFORMED_ARRAYS = {
    "shape overflowing int64": _array_bytes(_header(shape=[2**40, 2**40, 2**40, 3])),
    "dtype object": _array_bytes(_header(dtype="object")),
    "header length 2^31": _array_bytes(_header(), length=2**31),
    "100k-deep header": _array_bytes(b"[" * 100_000 + b"]" * 100_000),
    "negative size": _array_bytes(_header(shape=[-4, 24, 32, 3])),
}


@pytest.fixture(scope="module")
def served(seaweed):
    artifacts = Artifacts(S3Store("faults-codes", s3_settings(seaweed.endpoint)))
    with flow_server(artifacts) as (_, channel):
        yield artifacts, flow_pb2_grpc.FlowServiceStub(channel)


def _failed_call(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ComputeFlow(request, timeout=30))
    return caught.value


def _code(stub, request) -> tuple[grpc.StatusCode, str]:
    error = _failed_call(stub, request)
    return error.code(), error.details()


@pytest.mark.parametrize("case", sorted(MALFORMED_ARRAYS))
def test_a_malformed_array_header_is_data_loss(served, case):
    artifacts, stub = served
    video = stored_clip(artifacts, 5)
    bad = artifacts.put_bytes(f"faults/{case.replace(' ', '-')}", MALFORMED_ARRAYS[case], "x")
    video.frames.CopyFrom(bad)
    code, details = _code(stub, flow_pb2.ComputeFlowRequest(video=video))
    assert code == grpc.StatusCode.DATA_LOSS, details


def test_deeply_nested_json_config_is_invalid_argument(served):
    artifacts, stub = served
    request = flow_pb2.ComputeFlowRequest(
        video=stored_clip(artifacts, 5), config_json="[" * 100_000 + "]" * 100_000
    )
    code, details = _code(stub, request)
    assert (code, details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "config_json: JSON nested too deeply",
    )


@pytest.mark.parametrize("key", ["video\\frames", "video/a\x00b", "video/\nx", "v/" + "k" * 1100])
def test_a_bad_key_is_invalid_argument(served, key):
    artifacts, stub = served
    video = stored_clip(artifacts, 5)
    video.frames.key = key
    code, details = _code(stub, flow_pb2.ComputeFlowRequest(video=video))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith("key: ")


def _status_details(error: grpc.RpcError) -> tuple[int, list]:
    """The code and the unpacked details of the google.rpc.Status in `grpc-status-details-bin`,
    read as a client in any language reads them (here with grpcio-status)."""
    status = rpc_status.from_call(error)
    kinds = {
        "type.googleapis.com/google.rpc.ErrorInfo": error_details_pb2.ErrorInfo,
        "type.googleapis.com/google.rpc.BadRequest": error_details_pb2.BadRequest,
    }
    details = []
    for detail in status.details:
        message = kinds[detail.type_url]()
        assert detail.Unpack(message)
        details.append(message)
    return status.code, details


def test_bad_input_carries_error_info_and_a_field_violation(served):
    artifacts, stub = served
    request = flow_pb2.ComputeFlowRequest(
        video=stored_clip(artifacts, 5), config_json='{"backend": "farneback"}'
    )
    error = _failed_call(stub, request)
    description = "'farneback' is not one of ['dis', 'raft', 'unimatch']"
    assert error.details() == f"config_json.backend: {description}"
    code, details = _status_details(error)
    assert code == code_pb2.INVALID_ARGUMENT
    assert details == [
        error_details_pb2.ErrorInfo(
            reason="INVALID_ARGUMENT",
            domain="gflow",
            metadata={"stage": "flow", "field": "config_json.backend"},
        ),
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="config_json.backend", description=description
                )
            ]
        ),
    ]
    # the caller's side rebuilds what the engine raised: same field, message and reason
    rebuilt = error_from_rpc(error)
    assert type(rebuilt) is errors.InvalidArgumentError
    assert (rebuilt.field, str(rebuilt), rebuilt.reason) == (
        "config_json.backend",
        error.details(),
        "INVALID_ARGUMENT",
    )


def test_a_request_naming_the_device_is_invalid(served):
    """The device is the server's (its operator sets GFLOW_FLOW_DEVICE), never a request's."""
    artifacts, stub = served
    request = flow_pb2.ComputeFlowRequest(
        video=stored_clip(artifacts, 5), config_json='{"device": "cuda"}'
    )
    error = _failed_call(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("config_json.device: is how the server computes")
    assert "GFLOW_FLOW_DEVICE" in error.details()


NOT_ARGUMENT_ERRORS = {
    # case: (config_json, frames key or None, code, reason, exception type, message start)
    "missing frames": (
        "",
        "video/never-stored/frames",
        code_pb2.NOT_FOUND,
        "NOT_FOUND",
        errors.NotFoundError,
        "video.frames: no artifact at s3://faults-codes/video/never-stored/frames",
    ),
    "missing weights": (
        '{"backend": "raft"}',
        None,
        code_pb2.FAILED_PRECONDITION,
        "WEIGHTS_MISSING",
        errors.FailedPreconditionError,
        "raft_weights is not set: ",
    ),
}


@pytest.mark.parametrize("case", sorted(NOT_ARGUMENT_ERRORS))
def test_other_errors_carry_error_info_with_their_reason(served, monkeypatch, case):
    """ErrorInfo with our reason string, and no BadRequest: no request field is at fault."""
    config_json, frames_key, expected_code, reason, kind, message_start = NOT_ARGUMENT_ERRORS[case]
    monkeypatch.delenv("GFLOW_RAFT_WEIGHTS", raising=False)
    artifacts, stub = served
    video = stored_clip(artifacts, 5)
    if frames_key is not None:
        video.frames.key = frames_key
    error = _failed_call(stub, flow_pb2.ComputeFlowRequest(video=video, config_json=config_json))
    assert error.details().startswith(message_start), error.details()
    code, details = _status_details(error)
    assert (code, details) == (
        expected_code,
        [error_details_pb2.ErrorInfo(reason=reason, domain="gflow", metadata={"stage": "flow"})],
    )
    rebuilt = error_from_rpc(error)
    assert (type(rebuilt), str(rebuilt), rebuilt.reason) == (kind, error.details(), reason)


def _health(channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _wait_health(channel, status: int, within_s: float) -> float:
    started = time.monotonic()
    while _health(channel) != status:
        assert time.monotonic() - started < within_s, f"health did not become {status}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_health_is_not_serving_while_the_store_is_down(tmp_path):
    """Kill the store under a serving flow service, then start it again on the same port."""
    weed = start_seaweed_s3(tmp_path / "s3", TEST_SECRET_KEY)
    port = int(weed.endpoint.rsplit(":", 1)[1])
    store = S3Store("faults-health", s3_settings(weed.endpoint))
    artifacts = Artifacts(store)
    video = stored_clip(artifacts, 6)
    with flow_server(artifacts) as (server, channel):
        watch_store(server, store, every_s=0.2)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        weed.process.kill()
        weed.process.wait()
        _wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING, within_s=10)
        weed = start_seaweed_s3(tmp_path / "s3", TEST_SECRET_KEY, s3_port=port)
        try:
            back_s = _wait_health(channel, health_pb2.HealthCheckResponse.SERVING, within_s=60)
            # what was stored before the kill is all there
            stub = flow_pb2_grpc.FlowServiceStub(channel)
            events = list(stub.ComputeFlow(flow_pb2.ComputeFlowRequest(video=video), timeout=60))
            assert events[-1].result.stage == "flow", back_s
            np.testing.assert_array_equal(artifacts.get_array(video.frames), clip_frames(6))
        finally:
            weed.stop()
