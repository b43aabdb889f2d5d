"""Finding 4: a remote stage that stalls cannot hang the pipeline. Each call has a deadline from
the clip's size (or a flag) and a progress-silence timeout; a stall becomes DEADLINE_EXCEEDED,
is retried, then fails with one error naming the stage and its endpoint. Before the fix the
client waited forever (a stopped fit service: the client hung, silent)."""

from __future__ import annotations

import json
import socket
import time

import pytest

from gflow.v1 import common_pb2, flow_pb2
from services.common import runtime
from services.common.errors import DeadlineError, no_progress
from services.pipeline.config import RemoteConfig
from services.pipeline.engine import call_stage
from tests.integration.probe_service import binding

CALLER_DEADLINE_S = 30.0  # what the test grants in all; a hang would use all of it


def _remote(target: str, **overrides) -> RemoteConfig:
    values = dict(flow=target, retry_attempts=2, retry_first_delay_s=0.1, silence_timeout_s=1.0)
    values.update(overrides)
    return RemoteConfig(**values)


def _stalled_call(remote: RemoteConfig, request) -> tuple[DeadlineError, float]:
    started = time.monotonic()
    with pytest.raises(DeadlineError) as caught:
        call_stage(None, "flow", request, remote, no_progress, CALLER_DEADLINE_S)
    return caught.value, time.monotonic() - started


def _probe_request(steps: int, sleep_s: float) -> flow_pb2.ComputeFlowRequest:
    return flow_pb2.ComputeFlowRequest(
        video=common_pb2.VideoRef(frame_count=4),
        config_json=json.dumps({"steps": steps, "sleep": sleep_s}),
    )


@pytest.fixture
def probe():
    """A flow worker whose job is a scripted sleep; two slots, so a retry is not refused busy
    while the abandoned attempt sleeps on."""
    server = runtime.serve([binding(max_jobs=2)], runtime.ServerConfig(port=0, drain_seconds=0))
    yield f"127.0.0.1:{server.port}"
    server.stop(grace=0)


def test_a_worker_that_never_answers_is_a_clear_deadline_error():
    """A port that accepts connections and then says nothing, as a SIGSTOPped service does."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        error, seconds = _stalled_call(_remote(target), _probe_request(1, 0.0))
    assert str(error) == (
        f"flow at {target} gave up after 2 attempt(s): no progress for 1 s: the stage stalled"
    )
    assert seconds < 10


def test_a_stage_that_stalls_mid_call_is_retried_then_a_clear_error(probe):
    error, seconds = _stalled_call(_remote(probe), _probe_request(steps=2, sleep_s=60.0))
    assert str(error) == (
        f"flow at {probe} gave up after 2 attempt(s): no progress for 1 s: the stage stalled"
    )
    assert seconds < 10


def test_the_stage_deadline_flag_bounds_a_busy_but_endless_call(probe):
    """Progress keeps coming (no silence), but the call outlives its deadline."""
    remote = _remote(probe, stage_deadline_s=1.0)
    error, seconds = _stalled_call(remote, _probe_request(steps=1000, sleep_s=0.05))
    assert str(error).startswith(f"flow at {probe} gave up after 2 attempt(s): ")
    assert error.reason == "DEADLINE_EXCEEDED"
    assert seconds < 10


def test_the_stage_deadline_grows_with_the_clip():
    remote = RemoteConfig()
    assert remote.stage_deadline(2) == remote.stage_deadline_min_s
    assert remote.stage_deadline(40) == 40 * remote.stage_deadline_s_per_frame
    assert RemoteConfig(stage_deadline_s=7.0).stage_deadline(40) == 7.0
