"""FitService over gRPC: transport only; the work is `services.fit.stage.fit_from_request`.

A worker runs `--max-concurrent-jobs` fits at once (default 1) and refuses more with
RESOURCE_EXHAUSTED, so a load balancer or the client can take the job to another replica.
"""

from __future__ import annotations

from gflow.v1 import fit_pb2_grpc
from services.common.describe import backend_info
from services.common.service import StageServicer, stage_main
from services.fit.config import FitRuntime
from services.fit.engine import resolve_device
from services.fit.render import resolve_backend
from services.fit.stage import fit_from_request


class FitServicer(StageServicer, fit_pb2_grpc.FitServiceServicer):
    service_name = "gflow.v1.FitService"
    stage = "fit"
    runtime_type = FitRuntime

    def backends(self):
        device = resolve_device(self.runtime.device)
        renderer = resolve_backend(self.runtime.backend, device)
        return [backend_info("gflow", True, f"renderer {renderer} on {device}")]

    def Fit(self, request, context):  # noqa: N802 - gRPC method name
        yield from self.stream(
            context, lambda p: fit_from_request(self.artifacts, request, p, runtime=self.runtime)
        )


def main() -> None:
    stage_main(FitServicer, fit_pb2_grpc.add_FitServiceServicer_to_server, "fit")


if __name__ == "__main__":
    main()
