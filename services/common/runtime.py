"""Server bootstrap shared by every service: health, reflection, auth, TLS, limits, drain, errors.

A service module provides servicers; `serve()` wraps them in one gRPC server that
- answers the standard health service (exempt from auth, for probes) and server reflection,
- checks a bearer token on every other call (UNAUTHENTICATED when missing or wrong),
- serves TLS when a certificate and key are given,
- sets explicit message-size limits (RESOURCE_EXHAUSTED above them),
- logs each call with a request id (taken from `x-request-id` or made up, and sent back),
- limits concurrent stage jobs per worker (RESOURCE_EXHAUSTED, so another replica takes it),
- maps our exceptions to status codes with a google.rpc.Status (ErrorInfo, and BadRequest for bad
  input) in the standard `grpc-status-details-bin` trailer (never a bare UNKNOWN),
- drains in-flight calls on SIGTERM before exiting.
"""

from __future__ import annotations

import hmac
import logging
import os
import queue
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from gflow.v1 import common_pb2
from services.common import errors, jobs
from services.common.logs import request_id_var
from services.common.store import StoreConfig

log = logging.getLogger(__name__)

# google.rpc.ErrorInfo.domain of every error our services send.
ERROR_DOMAIN = "gflow"
REQUEST_ID_HEADER = "x-request-id"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
TOKEN_ENV = "GFLOW_AUTH_TOKEN"
# Where each service listens unless told otherwise (compose, Helm and `gflow serve` use these).
DEFAULT_PORTS = {"pipeline": 50050, "depth": 50051, "flow": 50052, "segment": 50053, "fit": 50054}

_STATUS_OF: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.CancelledError, grpc.StatusCode.CANCELLED),
    (errors.DeadlineError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


@dataclass
class ServerConfig:
    """How one service listens. Every field is a command-line flag of `gflow serve-*`."""

    host: str = "127.0.0.1"
    port: int = 50051
    # gRPC handler threads (health, Describe and stage calls share them).
    max_workers: int = 8
    # Stage jobs one worker runs at once; more are refused with RESOURCE_EXHAUSTED.
    max_concurrent_jobs: int = 1
    # Largest request or response message, bytes. Artifacts travel through the store, not here.
    max_message_bytes: int = 16 * 1024 * 1024
    # Bearer token file; else the GFLOW_AUTH_TOKEN environment variable; neither = no auth.
    auth_token_file: Path | None = None
    # PEM certificate and key; both given = TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Seconds in-flight calls get to finish after SIGTERM.
    drain_seconds: float = 30.0
    # Seconds between checks that the object store answers; health is NOT_SERVING while not.
    store_check_s: float = 2.0
    log_json: bool = True
    store: StoreConfig = field(default_factory=StoreConfig)

    def auth_token(self) -> str | None:
        if self.auth_token_file is not None:
            return Path(self.auth_token_file).read_text().strip() or None
        return os.environ.get(TOKEN_ENV) or None


# ---------------------------------------------------------------------------------------------
# Errors -> status codes


def status_of(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS_OF:
        if isinstance(exc, kind):
            return code
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without torch here
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.INTERNAL


def error_status(exc: BaseException, stage: str = "") -> status_pb2.Status:
    """The google.rpc.Status a failed call ends with: the code that fits `exc`, its message, an
    ErrorInfo (our reason string; metadata: the `stage` whose job failed, the field at fault) and,
    for bad input, a BadRequest with the field violation, as clients in any language read them."""
    code = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", "".join(traceback.format_exception(exc)))
        message = f"internal error ({type(exc).__name__}: {exc}); request id {request_id_var.get()}"
        reason = "INTERNAL"
    else:
        message = str(exc)
        reason = getattr(exc, "reason", code.name)
    bad_input = isinstance(exc, errors.InvalidArgumentError)
    metadata = {"stage": stage} if stage else {}
    if bad_input:
        metadata["field"] = exc.field
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    )
    if bad_input:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field, description=exc.description
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status


def abort_with(context: grpc.ServicerContext, exc: BaseException, stage: str = "") -> None:
    """End the call with `error_status(exc, stage)` in `grpc-status-details-bin`. Raises."""
    status = rpc_status.to_status(error_status(exc, stage))
    context.set_trailing_metadata(
        (*status.trailing_metadata, (REQUEST_ID_HEADER, request_id_var.get()))
    )
    context.abort(status.code, status.details)


# ---------------------------------------------------------------------------------------------
# Stage calls: run the engine in a thread, stream its progress, end with the result


def check_alive(context: grpc.ServicerContext) -> None:
    """Raise when the client went away or the deadline passed, so long work stops early."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise errors.DeadlineError("the call's deadline passed before the work finished")
    if not context.is_active():
        raise errors.CancelledError("the client cancelled the call")


def stream_job(
    context: grpc.ServicerContext,
    limiter: jobs.JobLimiter,
    name: str,
    work: Callable[[Callable[[common_pb2.Progress], None]], Message],
    event_type: type[Message],
) -> Iterator[Message]:
    """Run `work(emit)` in a thread; yield `event_type(progress=...)` for every Progress it
    emits, then `event_type(result=...)` with what it returns (StageEvent and PipelineEvent both
    have this shape). The work claims a slot of `limiter` when it starts real work
    (`jobs.claim_job_slot`); past the worker's limit that refuses it with RESOURCE_EXHAUSTED."""
    events: queue.Queue = queue.Queue()
    request_id = request_id_var.get()
    slot = jobs.JobSlot(limiter, name)

    def emit(progress: common_pb2.Progress) -> None:
        check_alive(context)
        events.put(progress)

    def run() -> None:
        request_id_var.set(request_id)
        jobs.current_slot.set(slot)
        try:
            events.put(("result", work(emit)))
        except BaseException as exc:  # handed to the streaming thread, which maps it
            events.put(exc)
        finally:
            slot.release()

    threading.Thread(target=run, name=f"{name}-job-{request_id}", daemon=True).start()
    while True:
        try:
            item = events.get(timeout=0.5)
        except queue.Empty:
            if not context.is_active():
                return  # the client left; the job thread stops at its next progress report
            continue
        if isinstance(item, common_pb2.Progress):
            yield event_type(progress=item)
        elif isinstance(item, BaseException):
            abort_with(context, item, stage=name)
        else:
            yield event_type(result=item[1])
            return


def stream_stage(
    context: grpc.ServicerContext,
    limiter: jobs.JobLimiter,
    stage: str,
    work: Callable[[errors.ProgressFn], common_pb2.StageResult],
) -> Iterator[common_pb2.StageEvent]:
    """`stream_job` for a stage: the work reports (done, total, message) for this stage."""

    def job(emit):
        def progress(done: int, total: int, message: str) -> None:
            emit(common_pb2.Progress(stage=stage, done=done, total=total, message=message))

        return work(progress)

    return stream_job(context, limiter, stage, job, common_pb2.StageEvent)


def unary(context: grpc.ServicerContext, fn: Callable[[], object]):
    """Run a unary handler body with the same error mapping as stage calls."""
    try:
        return fn()
    except Exception as exc:
        abort_with(context, exc)


def remaining_timeout(context: grpc.ServicerContext) -> float | None:
    """Seconds left of the caller's deadline, to pass on to the calls this one makes."""
    return context.time_remaining()


# ---------------------------------------------------------------------------------------------
# Interceptor: auth, request id, access log


def _wrap_behaviour(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    return handler._replace(**{k: wrap(getattr(handler, k)) for k in kinds if getattr(handler, k)})


class GatewayInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token and gives every call a request id and an access-log line."""

    def __init__(self, token: str | None):
        self._expected = f"Bearer {token}".encode() if token else None

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        request_id = metadata.get(REQUEST_ID_HEADER) or uuid.uuid4().hex[:16]
        authorised = (
            self._expected is None
            or method.startswith(HEALTH_PREFIX)
            or hmac.compare_digest(metadata.get("authorization", "").encode(), self._expected)
        )

        def wrap(behaviour):
            def call(request, context):
                request_id_var.set(request_id)
                context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
                if not authorised:
                    log.warning("refused %s: missing or wrong bearer token", method)
                    context.abort(
                        grpc.StatusCode.UNAUTHENTICATED,
                        "missing or wrong bearer token: send 'authorization: Bearer <token>' "
                        f"with the token the server reads from {TOKEN_ENV} or its token file",
                    )
                started = time.monotonic()
                log.info("call %s", method)
                result = behaviour(request, context)
                if handler.response_streaming:
                    return _logged_stream(result, method, started, request_id)
                log.info("done %s in %.3f s", method, time.monotonic() - started)
                return result

            return call

        return _wrap_behaviour(handler, wrap)


def _logged_stream(events, method: str, started: float, request_id: str):
    request_id_var.set(request_id)
    yield from events
    log.info("done %s in %.3f s", method, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# Server


@dataclass
class ServiceBinding:
    """One servicer and the generated function that adds it to a server."""

    name: str  # full service name, e.g. "gflow.v1.FlowService"
    servicer: object
    add_to_server: Callable[[object, grpc.Server], None]


class RunningServer:
    """A started server; `stop()` drains, `wait()` blocks until it has stopped."""

    def __init__(self, server: grpc.Server, port: int, health_servicer, names, drain_seconds):
        self.server = server
        self.port = port
        self._health = health_servicer
        self._names = names
        self._drain_seconds = drain_seconds
        self._stopping = False

    def set_serving(self, serving: bool) -> None:
        """Health of every service on this server (stays NOT_SERVING once stopping)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving and not self._stopping
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *self._names]:
            self._health.set(name, status)

    def stop(self, grace: float | None = None) -> None:
        """Mark NOT_SERVING, refuse new calls, let in-flight calls finish within the grace."""
        self._stopping = True
        self.set_serving(False)
        grace = self._drain_seconds if grace is None else grace
        log.info("draining: up to %.1f s for in-flight calls", grace)
        self.server.stop(grace).wait()
        log.info("stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()

    def install_sigterm_drain(self) -> None:
        """SIGTERM/SIGINT -> graceful drain (only from the main thread)."""

        def on_signal(signum, _frame):
            log.info("signal %s received", signal.Signals(signum).name)
            threading.Thread(target=self.stop, daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def serve(bindings: list[ServiceBinding], config: ServerConfig) -> RunningServer:
    """Start one gRPC server for `bindings` with every cross-cutting concern of the runtime."""
    token = config.auth_token()
    if token is None:
        log.warning(
            "no auth token configured (%s or --auth-token-file): calls are not checked", TOKEN_ENV
        )
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="grpc"),
        interceptors=[GatewayInterceptor(token)],
        options=options,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [b.name for b in bindings]
    for binding in bindings:
        binding.add_to_server(binding.servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{config.host}:{config.port}"
    if config.tls_cert and config.tls_key:
        creds = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(address, creds)
    elif config.tls_cert or config.tls_key:
        raise errors.InvalidArgumentError("tls_cert/tls_key", "give both for TLS, or neither")
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise errors.UnavailableError(f"cannot bind {address}: port in use or address invalid")
    server.start()
    running = RunningServer(server, port, health_servicer, names, config.drain_seconds)
    running.set_serving(True)
    log.info(
        "serving %s on %s:%d (tls=%s)", ", ".join(names), config.host, port, bool(config.tls_cert)
    )
    return running
