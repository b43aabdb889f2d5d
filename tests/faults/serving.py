"""Stage servicers on a real gRPC server in this process, wired as `serve_forever` wires them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc

from gflow.v1 import depth_pb2_grpc, flow_pb2_grpc
from services.common import runtime
from services.common.artifacts import Artifacts
from services.common.client import Endpoint, open_channel
from services.common.service import StageServicer
from services.depth.server import DepthServicer
from services.flow.server import FlowServicer


@contextmanager
def stage_server(
    servicer_class: type[StageServicer], add_to_server: Callable, artifacts: Artifacts
) -> Iterator[tuple[runtime.RunningServer, grpc.Channel]]:
    servicer = servicer_class(artifacts, 1)
    binding = runtime.ServiceBinding(servicer.service_name, servicer, add_to_server)
    server = runtime.serve([binding], runtime.ServerConfig(port=0, drain_seconds=0))
    channel = open_channel(Endpoint(target=f"127.0.0.1:{server.port}"))
    try:
        yield server, channel
    finally:
        channel.close()
        server.stop(grace=0)


def flow_server(artifacts: Artifacts):
    return stage_server(FlowServicer, flow_pb2_grpc.add_FlowServiceServicer_to_server, artifacts)


def depth_server(artifacts: Artifacts):
    return stage_server(DepthServicer, depth_pb2_grpc.add_DepthServiceServicer_to_server, artifacts)
