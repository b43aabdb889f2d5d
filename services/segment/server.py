"""SegmentService over gRPC: transport only; the work is `segment_from_request`."""

from __future__ import annotations

from gflow.v1 import segment_pb2_grpc
from services.common.describe import backend_info
from services.common.service import StageServicer, stage_main
from services.segment.stage import segment_from_request


class SegmentServicer(StageServicer, segment_pb2_grpc.SegmentServiceServicer):
    service_name = "gflow.v1.SegmentService"
    stage = "segment"

    def backends(self):
        return [
            backend_info("epipolar", True, "fundamental/homography from flow, on the CPU"),
            backend_info("user", True, "user-given masks (SegmentMotionRequest.user_masks)"),
        ]

    def SegmentMotion(self, request, context):  # noqa: N802 - gRPC method name
        yield from self.stream(context, lambda p: segment_from_request(self.artifacts, request, p))


def main() -> None:
    stage_main(SegmentServicer, segment_pb2_grpc.add_SegmentServiceServicer_to_server, "segment")


if __name__ == "__main__":
    main()
