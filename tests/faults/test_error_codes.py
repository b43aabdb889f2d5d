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
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gflow.v1 import flow_pb2, flow_pb2_grpc
from services.common.artifacts import Artifacts
from services.common.service import watch_store
from services.common.store import S3Store
from services.pipeline.seaweed import start_seaweed_s3
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


def _code(stub, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.ComputeFlow(request, timeout=30))
    return caught.value.code(), caught.value.details()


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
