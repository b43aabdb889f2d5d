"""Client side of the runtime: channels with auth/TLS/limits, and stage streams to results.

Remote failures come back as the same exception types the engines raise in-process (rebuilt from
the google.rpc.Status in `grpc-status-details-bin`), so the pipeline handles an embedded and a
remote stage alike.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gflow.v1 import common_pb2
from services.common import errors
from services.common.runtime import TOKEN_ENV

_ERROR_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: errors.UnavailableError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.DATA_LOSS: errors.IntegrityError,
    grpc.StatusCode.CANCELLED: errors.CancelledError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineError,
}


@dataclass
class Endpoint:
    """Where a service listens and how to reach it."""

    # host:port, or dns:///name:port for client-side round-robin over all its addresses.
    target: str = "127.0.0.1:50051"
    # Bearer token file; else the GFLOW_AUTH_TOKEN environment variable.
    auth_token_file: Path | None = None
    # PEM root certificate for TLS; None = plaintext.
    tls_ca: Path | None = None
    max_message_bytes: int = 16 * 1024 * 1024

    def auth_token(self) -> str | None:
        if self.auth_token_file is not None:
            return Path(self.auth_token_file).read_text().strip() or None
        return os.environ.get(TOKEN_ENV) or None


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        # grpc hands interceptors a namedtuple of call details
        return details._replace(metadata=list(details.metadata or []) + [self._header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


# A channel option: see open_channel.
OWN_SUBCHANNELS = ("grpc.use_local_subchannel_pool", 1)


def open_channel(endpoint: Endpoint) -> grpc.Channel:
    """A channel with message limits, round-robin balancing, TLS and the bearer token.

    Its subchannels are its own: in gRPC's shared pool a new channel to an address that an older
    channel saw refused (a restarted service, a reused port) inherits that channel's reconnect
    backoff and fails with UNAVAILABLE at once, though a server now listens there."""
    options = [
        ("grpc.max_receive_message_length", endpoint.max_message_bytes),
        ("grpc.max_send_message_length", endpoint.max_message_bytes),
        ("grpc.lb_policy_name", "round_robin"),
        OWN_SUBCHANNELS,
    ]
    if endpoint.tls_ca is not None:
        creds = grpc.ssl_channel_credentials(Path(endpoint.tls_ca).read_bytes())
        channel = grpc.secure_channel(endpoint.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(endpoint.target, options=options)
    token = endpoint.auth_token()
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel


def error_details(
    err: grpc.RpcError,
) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest]:
    """The ErrorInfo and BadRequest of a failed call's `grpc-status-details-bin` (empty messages
    where it has none, as on a failure of the transport rather than of our server)."""
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(bad_request.DESCRIPTOR):
            detail.Unpack(bad_request)
    return info, bad_request


def error_from_rpc(err: grpc.RpcError) -> errors.GFlowError:
    """The exception an engine would have raised for this remote failure."""
    code, details = err.code(), err.details() or ""
    info, bad_request = error_details(err)
    reason = info.reason or None
    kind = _ERROR_OF.get(code)
    if kind is errors.InvalidArgumentError:
        if not bad_request.field_violations:
            return errors.InvalidArgumentError("request", details, reason=reason)
        violation = bad_request.field_violations[0]
        return errors.InvalidArgumentError(violation.field, violation.description, reason=reason)
    if kind is None:
        return errors.GFlowError(f"{code.name}: {details}", reason=reason or code.name)
    return kind(details, reason=reason)


class SilenceWatchdog:
    """Cancels a streaming call that sends nothing for `silence_s` seconds: a stalled worker
    (stopped, hung, or never answering) then ends the call instead of holding it forever."""

    def __init__(self, call: grpc.Future, silence_s: float):
        self.call = call
        self.silence_s = silence_s
        self.fired = False
        self._last_heard = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._watch, name="silence-watchdog", daemon=True).start()

    def heard(self) -> None:
        self._last_heard = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.silence_s / 4)):
            if time.monotonic() - self._last_heard > self.silence_s:
                self.fired = True
                self.call.cancel()
                return


def collect_stage(
    events: Iterator[common_pb2.StageEvent],
    progress: errors.ProgressFn = errors.no_progress,
    silence_s: float | None = None,
) -> common_pb2.StageResult:
    """Forward progress events and return the final StageResult of a stage stream. With
    `silence_s`, `events` must be the call itself: silence that long is DEADLINE_EXCEEDED."""
    watchdog = SilenceWatchdog(events, silence_s) if silence_s is not None else None
    try:
        for event in events:
            if watchdog is not None:
                watchdog.heard()
            if event.HasField("progress"):
                progress(event.progress.done, event.progress.total, event.progress.message)
            elif event.HasField("result"):
                return event.result
    except grpc.RpcError as err:
        if watchdog is not None and watchdog.fired:
            raise errors.DeadlineError(
                f"no progress for {silence_s:g} s: the stage stalled", reason="STAGE_SILENT"
            ) from err
        raise error_from_rpc(err) from err
    finally:
        if watchdog is not None:
            watchdog.stop()
    raise errors.UnavailableError("the stage stream ended without a result")
