"""The service runtime against real gRPC servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gflow.v1 import common_pb2, flow_pb2, flow_pb2_grpc
from services.common import errors, runtime
from services.common.client import Endpoint, collect_stage, error_details, open_channel
from services.ops.seaweedfs import free_port
from tests.conftest import PROJECT_ROOT
from tests.integration.probe_service import binding

TOKEN = "s3cr3t-token"


@pytest.fixture
def server(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = runtime.ServerConfig(
        port=0, auth_token_file=token_file, max_message_bytes=64 * 1024, drain_seconds=5
    )
    running = runtime.serve([binding(max_jobs=1)], config)
    yield running
    running.stop(grace=0)


def flow_stub(port: int, token: str | None = TOKEN, tmp_path=None) -> flow_pb2_grpc.FlowServiceStub:
    endpoint = Endpoint(target=f"127.0.0.1:{port}")
    if token is not None:
        token_file = tmp_path / f"client-token-{token}"
        token_file.write_text(token)
        endpoint.auth_token_file = token_file
    else:
        endpoint.auth_token_file = None
    return flow_pb2_grpc.FlowServiceStub(open_channel(endpoint))


def compute(stub, timeout=30, **script):
    request = flow_pb2.ComputeFlowRequest(config_json=json.dumps(script))
    seen = []
    result = collect_stage(
        stub.ComputeFlow(request, timeout=timeout), lambda d, t, m: seen.append((d, t))
    )
    return result, seen


def test_stage_streams_progress_then_result(server, tmp_path):
    result, seen = compute(flow_stub(server.port, tmp_path=tmp_path), steps=4)
    assert result.key == "flow/probe"
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_missing_and_wrong_token_are_unauthenticated(server, tmp_path, monkeypatch):
    monkeypatch.delenv(runtime.TOKEN_ENV, raising=False)
    for token in (None, "wrong-token"):
        stub = flow_stub(server.port, token=token, tmp_path=tmp_path)
        with pytest.raises(grpc.RpcError) as info:
            stub.Describe(common_pb2.DescribeRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in info.value.details()


def test_health_is_open_and_reflection_lists_services(server, tmp_path):
    """Reflection also describes the error details, so grpcurl prints them decoded."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="gflow.v1.FlowService"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    authed = open_channel(
        Endpoint(target=f"127.0.0.1:{server.port}", auth_token_file=_token_file(tmp_path))
    )
    stub = reflection_pb2_grpc.ServerReflectionStub(authed)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="google.rpc.BadRequest"),
    ]
    listed, described = stub.ServerReflectionInfo(iter(requests), timeout=5)
    names = {s.name for s in listed.list_services_response.service}
    assert {"gflow.v1.FlowService", "grpc.health.v1.Health"} <= names
    files = described.file_descriptor_response.file_descriptor_proto
    error_details_file = descriptor_pb2.FileDescriptorProto.FromString(files[0])
    assert error_details_file.name == "google/rpc/error_details.proto"
    assert {"ErrorInfo", "BadRequest"} <= {m.name for m in error_details_file.message_type}


def _token_file(tmp_path):
    path = tmp_path / "reflection-token"
    path.write_text(TOKEN)
    return path


def test_describe_reports_device_and_versions(server, tmp_path):
    reply = flow_stub(server.port, tmp_path=tmp_path).Describe(common_pb2.DescribeRequest())
    assert reply.service == "gflow.v1.FlowService"
    assert reply.device == "cpu" and reply.max_concurrent_jobs == 1
    assert "torch" in reply.versions and "grpcio" in reply.versions


def test_oversized_message_is_resource_exhausted(server, tmp_path):
    stub = flow_stub(server.port, tmp_path=tmp_path)
    request = flow_pb2.ComputeFlowRequest(config_json=json.dumps({"pad": "x" * 100_000}))
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ComputeFlow(request, timeout=5))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_second_job_beyond_limit_is_refused(server, tmp_path):
    stub = flow_stub(server.port, tmp_path=tmp_path)
    first = stub.ComputeFlow(
        flow_pb2.ComputeFlowRequest(config_json=json.dumps({"steps": 10, "sleep": 0.1})), timeout=30
    )
    next(first)  # the first job holds the only slot now
    with pytest.raises(errors.ResourceExhaustedError, match="another replica"):
        compute(stub, steps=1)
    assert collect_stage(first).key == "flow/probe"
    assert compute(stub, steps=1)[0].key == "flow/probe"  # slot released afterwards


def test_engine_errors_map_to_status_with_reason(server, tmp_path):
    stub = flow_stub(server.port, tmp_path=tmp_path)
    with pytest.raises(grpc.RpcError) as info:
        list(stub.ComputeFlow(flow_pb2.ComputeFlowRequest(config_json='{"fail": "invalid"}')))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error, bad_request = error_details(info.value)
    assert (error.reason, error.domain, dict(error.metadata)) == (
        "INVALID_ARGUMENT",
        "gflow",
        {"stage": "flow", "field": "video.frames"},
    )
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("video.frames", "needs at least two frames")
    ]
    with pytest.raises(errors.InvalidArgumentError) as mapped:
        compute(stub, fail="invalid")
    assert mapped.value.field == "video.frames"
    with pytest.raises(grpc.RpcError) as crash:
        list(stub.ComputeFlow(flow_pb2.ComputeFlowRequest(config_json='{"fail": "crash"}')))
    assert crash.value.code() == grpc.StatusCode.INTERNAL  # never a bare UNKNOWN
    assert "ZeroDivisionError" in crash.value.details()
    assert error_details(crash.value)[0].reason == "INTERNAL"


def test_unreachable_store_is_unavailable(server, tmp_path):
    stub = flow_stub(server.port, tmp_path=tmp_path)
    with pytest.raises(errors.UnavailableError, match="unreachable"):
        compute(stub, steps=1, store_endpoint=f"127.0.0.1:{free_port()}")


def test_deadline_stops_the_job(server, tmp_path):
    stub = flow_stub(server.port, tmp_path=tmp_path)
    with pytest.raises(errors.DeadlineError):
        compute(stub, timeout=0.5, steps=50, sleep=0.05)
    # the job noticed the deadline at its next progress report and freed its slot
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            assert compute(stub, steps=1)[0].key == "flow/probe"
            break
        except errors.ResourceExhaustedError:
            time.sleep(0.1)
    else:
        pytest.fail("the slot was not released after the deadline")


def test_sigterm_drains_in_flight_call(tmp_path):
    env = {**os.environ, runtime.TOKEN_ENV: TOKEN, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.probe_service", "10"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(process.stdout.readline())
        stub = flow_stub(port, tmp_path=tmp_path)
        events = stub.ComputeFlow(
            flow_pb2.ComputeFlowRequest(config_json=json.dumps({"steps": 10, "sleep": 0.2})),
            timeout=30,
        )
        next(events)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = threading.Event()
        try:
            compute(stub, timeout=5, steps=1)
        except (errors.UnavailableError, errors.GFlowError):
            refused.set()
        result = collect_stage(events)
        assert result.key == "flow/probe"  # the in-flight call finished
        assert refused.is_set()  # a new call during the drain was not taken
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


def test_a_new_channel_reaches_a_server_restarted_on_a_port_an_old_channel_saw_refused(tmp_path):
    """The flake of stop 59's CI: an earlier test's channel, left in reconnect backoff to a port
    the next server then took, made a fresh channel fail at once with UNAVAILABLE."""
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = runtime.ServerConfig(port=port, auth_token_file=token_file, drain_seconds=0)
    first = runtime.serve([binding()], config)
    old_stub = flow_stub(port, tmp_path=tmp_path)
    assert compute(old_stub, steps=1)[0].key == "flow/probe"
    first.stop(grace=0)
    with pytest.raises(errors.UnavailableError):
        compute(old_stub, timeout=2, steps=1)  # the old channel now backs off from this port
    second = runtime.serve([binding()], config)
    try:
        new_stub = flow_stub(port, tmp_path=tmp_path)
        assert compute(new_stub, timeout=5, steps=1)[0].key == "flow/probe"
    finally:
        second.stop(grace=0)
