"""What every stage server shares: the job limiter, stage streaming, Describe, its runtime, and
`main`.

A stage server subclasses `StageServicer` next to its generated servicer base and adds one
method that parses the request and calls the stage function: transport only. How the stage
computes (device, budgets: its `runtime_type`) is the operator's choice, read once at start from
GFLOW_<STAGE>_<FIELD> environment variables; a request carries only what to compute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc
import tyro

from gflow.v1 import common_pb2
from services.common import runtime
from services.common.artifacts import Artifacts
from services.common.config import runtime_from_env
from services.common.describe import describe_response
from services.common.errors import GFlowError, ProgressFn, UnavailableError
from services.common.jobs import JobLimiter
from services.common.logs import setup_logging
from services.common.store import ObjectStore, StoreConfig, open_store

log = logging.getLogger(__name__)


class StageServicer:
    """Shared half of a stage servicer; subclasses set `service_name` and `stage`."""

    service_name = ""
    stage = ""
    runtime_type: type | None = None  # the stage's runtime dataclass, where it has one

    def __init__(self, artifacts: Artifacts, max_concurrent_jobs: int = 1):
        self.artifacts = artifacts
        self.limiter = JobLimiter(max_concurrent_jobs)
        self.runtime = (
            runtime_from_env(self.runtime_type, self.stage) if self.runtime_type else None
        )

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


STORE_PROBE_KEY = "health/store-probe"


def store_reachable(store: ObjectStore) -> str | None:
    """None when the store serves reads (the probe object is read back), else why not (one
    line). A stat alone is not enough: SeaweedFS answers it before its volumes are back."""
    try:
        if store.exists(STORE_PROBE_KEY):
            store.get(STORE_PROBE_KEY)
        else:
            store.put(STORE_PROBE_KEY, b"ok", "text/plain")
    except GFlowError as exc:
        return str(exc).splitlines()[0]
    return None


def open_store_when_up(config: StoreConfig, retry_s: float) -> ObjectStore:
    """The configured store, waiting (with one log line, not a traceback) while it is down."""
    waiting = False
    while True:
        try:
            store = open_store(config)
        except UnavailableError as exc:
            why = str(exc).splitlines()[0]
        else:
            why = store_reachable(store)
            if why is None:
                if waiting:
                    log.info("the object store %s is up", config.url)
                return store
        if not waiting:
            log.warning("waiting for the object store %s: %s", config.url, why)
            waiting = True
        time.sleep(retry_s)


def watch_store(server: runtime.RunningServer, store: ObjectStore, every_s: float) -> None:
    """Health follows the store: NOT_SERVING while it is unreachable, so probes and balancers
    stop sending work that could only fail."""

    def loop() -> None:
        serving = True
        while True:
            time.sleep(every_s)
            why = store_reachable(store)
            if (why is None) != serving:
                serving = why is None
                if serving:
                    log.info("the object store answers again: SERVING")
                else:
                    log.warning("the object store is unreachable (%s): NOT_SERVING", why)
                server.set_serving(serving)

    threading.Thread(target=loop, name="store-health", daemon=True).start()


def serve_forever(
    make_servicer: Callable[[Artifacts, int], StageServicer],
    add_to_server: Callable,
    config: runtime.ServerConfig,
) -> None:
    """Wait for the store, start the server, track the store in health, drain on SIGTERM,
    block until stopped. A store that refuses our credentials ends it with one line."""
    setup_logging("INFO", json_lines=config.log_json)
    try:
        store = open_store_when_up(config.store, config.store_check_s)
    except GFlowError as exc:
        log.error("cannot use the object store %s: %s", config.store.url, exc)
        raise SystemExit(2) from None
    servicer = make_servicer(Artifacts(store), config.max_concurrent_jobs)
    binding = runtime.ServiceBinding(servicer.service_name, servicer, add_to_server)
    server = runtime.serve([binding], config)
    watch_store(server, store, config.store_check_s)
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
