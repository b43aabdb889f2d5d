"""DepthService over gRPC: transport only; the work is `services.depth.stage.depth_from_request`."""

from __future__ import annotations

from gflow.v1 import depth_pb2_grpc
from services.common.describe import backend_info
from services.common.service import StageServicer, stage_main
from services.depth.config import DepthRuntime
from services.depth.engine import describe_backends
from services.depth.stage import depth_from_request


class DepthServicer(StageServicer, depth_pb2_grpc.DepthServiceServicer):
    service_name = "gflow.v1.DepthService"
    stage = "depth"
    runtime_type = DepthRuntime

    def backends(self):
        return [
            backend_info(name, available, detail, needs_weights=name == "mast3r")
            for name, available, detail in describe_backends()
        ]

    def EstimateDepth(self, request, context):  # noqa: N802 - gRPC method name
        yield from self.stream(
            context,
            lambda p: depth_from_request(
                self.artifacts, request, p, remote_caller=True, runtime=self.runtime
            ),
        )


def main() -> None:
    stage_main(DepthServicer, depth_pb2_grpc.add_DepthServiceServicer_to_server, "depth")


if __name__ == "__main__":
    main()
