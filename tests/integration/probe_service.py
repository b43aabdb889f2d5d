"""A FlowService whose job is a scripted sleep: a probe for the runtime's cross-cutting behaviour.

It exercises the real runtime (auth, limits, streaming, errors, drain); the real flow engine is
tested in its own tests. Run as a script it serves until SIGTERM and prints its port.
"""

from __future__ import annotations

import json
import sys
import time

from gflow.v1 import common_pb2, flow_pb2_grpc
from services.common import runtime
from services.common.describe import describe_response
from services.common.errors import InvalidArgumentError
from services.common.jobs import JobLimiter, claim_job_slot
from services.common.store import S3Settings, S3Store


class ProbeFlowService(flow_pb2_grpc.FlowServiceServicer):
    def __init__(self, max_jobs: int = 1):
        self.limiter = JobLimiter(max_jobs)

    def ComputeFlow(self, request, context):
        script = json.loads(request.config_json or "{}")

        def work(progress):
            claim_job_slot()  # the scripted sleep is the probe's real work
            steps = script.get("steps", 3)
            for step in range(steps):
                progress(step, steps, "working")
                time.sleep(script.get("sleep", 0.0))
            if script.get("fail") == "invalid":
                raise InvalidArgumentError("video.frames", "needs at least two frames")
            if script.get("fail") == "crash":
                raise ZeroDivisionError("division by zero")
            if script.get("store_endpoint"):
                settings = S3Settings(
                    endpoint=script["store_endpoint"], connect_timeout_s=0.5, retries=0
                )
                S3Store("probe", settings)
            return common_pb2.StageResult(stage="flow", backend="probe", key="flow/probe")

        yield from runtime.stream_stage(context, self.limiter, "flow", work)

    def Describe(self, request, context):
        return runtime.unary(
            context, lambda: describe_response("gflow.v1.FlowService", [], self.limiter.limit)
        )


def binding(max_jobs: int = 1) -> runtime.ServiceBinding:
    return runtime.ServiceBinding(
        "gflow.v1.FlowService",
        ProbeFlowService(max_jobs),
        flow_pb2_grpc.add_FlowServiceServicer_to_server,
    )


if __name__ == "__main__":
    from services.common.logs import setup_logging

    setup_logging("INFO", json_lines=True)
    config = runtime.ServerConfig(port=0, drain_seconds=float(sys.argv[1]))
    server = runtime.serve([binding()], config)
    server.install_sigterm_drain()
    print(server.port, flush=True)
    server.wait()
