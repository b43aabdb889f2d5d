"""Fixtures of the fault suite."""

from __future__ import annotations

import pytest

from gflow.v1 import pipeline_pb2_grpc
from services.common import runtime
from services.common.artifacts import Artifacts
from services.common.client import Endpoint, open_channel
from services.pipeline.config import RemoteConfig
from services.pipeline.server import PipelineServicer


@pytest.fixture
def pipeline(local_store, request):
    """A pipeline service running every stage in-process, one job slot (the default) unless
    the test is parametrized with another count."""
    artifacts = Artifacts(local_store)
    servicer = PipelineServicer(artifacts, getattr(request, "param", 1), RemoteConfig())
    binding = runtime.ServiceBinding(
        servicer.service_name, servicer, pipeline_pb2_grpc.add_PipelineServiceServicer_to_server
    )
    server = runtime.serve([binding], runtime.ServerConfig(port=0, drain_seconds=0))
    channel = open_channel(Endpoint(target=f"127.0.0.1:{server.port}"))
    yield artifacts, pipeline_pb2_grpc.PipelineServiceStub(channel)
    channel.close()
    server.stop(grace=0)
