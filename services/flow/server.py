"""FlowService over gRPC: transport only; the work is `services.flow.stage.flow_from_request`."""

from __future__ import annotations

from gflow.v1 import flow_pb2_grpc
from services.common.describe import backend_info
from services.common.service import StageServicer, stage_main
from services.flow.config import FlowRuntime
from services.flow.engine import describe_backends
from services.flow.stage import flow_from_request


class FlowServicer(StageServicer, flow_pb2_grpc.FlowServiceServicer):
    service_name = "gflow.v1.FlowService"
    stage = "flow"
    runtime_type = FlowRuntime

    def backends(self):
        return [
            backend_info(b.name, b.available, b.detail, b.needs_weights)
            for b in describe_backends()
        ]

    def ComputeFlow(self, request, context):  # noqa: N802 - gRPC method name
        yield from self.stream(
            context,
            lambda p: flow_from_request(
                self.artifacts, request, p, remote_caller=True, runtime=self.runtime
            ),
        )


def main() -> None:
    stage_main(FlowServicer, flow_pb2_grpc.add_FlowServiceServicer_to_server, "flow")


if __name__ == "__main__":
    main()
