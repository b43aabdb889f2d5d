"""Finding 7: which files a server loads, and whether it unpickles them, is its operator's
choice. A caller naming a weights path or the trust flag is refused with the same answer
whether the file exists or not, so nothing about the server's files can be learnt from it."""

from __future__ import annotations

import json

import grpc
import pytest

from gflow.v1 import depth_pb2, depth_pb2_grpc, flow_pb2, flow_pb2_grpc, pipeline_pb2
from services.common.artifacts import Artifacts
from tests.faults.clips import stored_clip
from tests.faults.serving import depth_server, flow_server


@pytest.fixture
def artifacts(local_store) -> Artifacts:
    return Artifacts(local_store)


def _refusal(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        list(call(request, timeout=30))
    return caught.value.code(), caught.value.details()


@pytest.mark.parametrize("field", ["raft_weights", "unimatch_checkpoint"])
def test_flow_weights_paths_are_not_request_fields(artifacts, field, tmp_path):
    video = stored_clip(artifacts, 7)
    there = tmp_path / "weights.pth"
    there.write_bytes(b"x")
    answers = set()
    with flow_server(artifacts) as (_, channel):
        stub = flow_pb2_grpc.FlowServiceStub(channel)
        for path in (there, tmp_path / "absent.pth", "/etc/passwd"):
            config = json.dumps({"backend": "raft", field: str(path)})
            answers.add(
                _refusal(
                    stub.ComputeFlow, flow_pb2.ComputeFlowRequest(video=video, config_json=config)
                )
            )
    env = {"raft_weights": "GFLOW_RAFT_WEIGHTS", "unimatch_checkpoint": "GFLOW_UNIMATCH_CHECKPOINT"}
    assert answers == {
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"config_json.{field}: is the server's configuration (its operator sets "
            f"{env[field]}), not a request field: leave it out",
        )
    }


@pytest.mark.parametrize(
    "values",
    [{"mast3r_trust_checkpoint": True}, {"mast3r_checkpoint": "/etc/passwd"}],
    ids=["trust", "checkpoint"],
)
def test_depth_checkpoint_and_trust_are_not_request_fields(artifacts, values):
    request = depth_pb2.EstimateDepthRequest(
        video=stored_clip(artifacts, 7), config_json=json.dumps({"backend": "mast3r", **values})
    )
    with depth_server(artifacts) as (_, channel):
        code, details = _refusal(depth_pb2_grpc.DepthServiceStub(channel).EstimateDepth, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"config_json.{next(iter(values))}: is the server's configuration")


def test_the_pipeline_service_refuses_them_too(pipeline):
    """It runs stages in-process when it has no remote ones: the same fields are refused."""
    artifacts, stub = pipeline
    request = pipeline_pb2.RunPipelineRequest(
        video=stored_clip(artifacts, 7),
        config_json=json.dumps({"flow": {"raft_weights": "/etc/passwd"}}),
    )
    code, details = _refusal(stub.RunPipeline, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("config_json.flow.raft_weights: is the server's configuration")
