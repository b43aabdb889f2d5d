"""What every stage server shares: the job limiter, stage streaming, Describe, and `main`.

A stage server subclasses `StageServicer` next to its generated servicer base and adds one
method that parses the request and calls the stage function: transport only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import tyro

from gflow.v1 import common_pb2
from services.common import runtime
from services.common.artifacts import Artifacts
from services.common.describe import describe_response
from services.common.errors import ProgressFn
from services.common.jobs import JobLimiter
from services.common.logs import setup_logging
from services.common.store import open_store

log = logging.getLogger(__name__)


class StageServicer:
    """Shared half of a stage servicer; subclasses set `service_name` and `stage`."""

    service_name = ""
    stage = ""

    def __init__(self, artifacts: Artifacts, max_concurrent_jobs: int = 1):
        self.artifacts = artifacts
        self.limiter = JobLimiter(max_concurrent_jobs)

    def backends(self) -> list[common_pb2.BackendInfo]:
        return []

    def stream(
        self,
        context: grpc.ServicerContext,
        work: Callable[[ProgressFn], common_pb2.StageResult],
    ):
        return runtime.stream_stage(context, self.limiter, self.stage, work)

    def Describe(self, request, context):  # noqa: N802 - gRPC method name
        return runtime.unary(
            context,
            lambda: describe_response(self.service_name, self.backends(), self.limiter.limit),
        )


def serve_forever(
    make_servicer: Callable[[Artifacts, int], StageServicer],
    add_to_server: Callable,
    config: runtime.ServerConfig,
) -> None:
    """Open the store, start the server, drain on SIGTERM, block until stopped."""
    setup_logging("INFO", json_lines=config.log_json)
    servicer = make_servicer(Artifacts(open_store(config.store)), config.max_concurrent_jobs)
    binding = runtime.ServiceBinding(servicer.service_name, servicer, add_to_server)
    server = runtime.serve([binding], config)
    server.install_sigterm_drain()
    server.wait()


def stage_main(
    make_servicer: Callable[[Artifacts, int], StageServicer], add_to_server: Callable, stage: str
) -> None:
    """Command line of one stage server: every ServerConfig field is a flag."""
    config = tyro.cli(
        runtime.ServerConfig,
        default=runtime.ServerConfig(port=runtime.DEFAULT_PORTS[stage]),
        description=f"Serve the {stage} stage over gRPC (health, reflection, Describe included).",
    )
    serve_forever(make_servicer, add_to_server, config)
