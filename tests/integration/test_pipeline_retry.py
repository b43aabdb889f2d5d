"""The pipeline's stage calls retry a busy or unreachable replica, against real gRPC servers."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from gflow.v1 import flow_pb2, flow_pb2_grpc
from services.common import errors, runtime
from services.common.client import Endpoint, collect_stage, open_channel
from services.common.errors import no_progress
from services.ops.seaweedfs import free_port
from services.pipeline.config import RemoteConfig
from services.pipeline.engine import call_stage
from tests.integration.probe_service import binding

ENGINE_LOGGER = "services.pipeline.engine"


@pytest.fixture
def probe():
    """A FlowService worker that runs one job at a time (scripted sleeps, no auth)."""
    running = runtime.serve([binding(max_jobs=1)], runtime.ServerConfig(port=0, drain_seconds=0))
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=0)


def _request(**script) -> flow_pb2.ComputeFlowRequest:
    return flow_pb2.ComputeFlowRequest(config_json=json.dumps(script))


def _hold_the_slot(target: str, steps: int, sleep_s: float):
    """Start a slow job and return its stream once the worker runs it (its only slot is taken)."""
    stub = flow_pb2_grpc.FlowServiceStub(open_channel(Endpoint(target=target)))
    stream = stub.ComputeFlow(_request(steps=steps, sleep=sleep_s), timeout=60)
    next(stream)  # the first progress event: the job holds the slot now
    return stream


def _remote(target: str, attempts: int, first_delay_s: float) -> RemoteConfig:
    return RemoteConfig(
        flow=target,
        retry_attempts=attempts,
        retry_first_delay_s=first_delay_s,
        retry_factor=2.0,
        retry_max_delay_s=4 * first_delay_s,
    )


def _retry_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ENGINE_LOGGER]


def _retry_waits(caplog) -> list[str]:
    """The wait each retry log line announces ("... retry 1 of 4 in 0.10 s" -> "0.10 s")."""
    return [message.rsplit(" in ", 1)[1] for message in _retry_logs(caplog)]


def test_busy_replica_is_retried_until_its_slot_frees(probe, caplog):
    first = _hold_the_slot(probe, steps=8, sleep_s=0.1)  # about 0.8 s of work
    with ThreadPoolExecutor(1) as pool, caplog.at_level(logging.WARNING, logger=ENGINE_LOGGER):
        first_result = pool.submit(collect_stage, first)
        result = call_stage(
            None, "flow", _request(steps=1), _remote(probe, 10, 0.1), no_progress, 30
        )
        assert first_result.result(timeout=10).key == "flow/probe"
    assert result.key == "flow/probe"
    waits = _retry_waits(caplog)
    # refused at least once while the first job ran; waits double from 0.1 s up to the 0.4 s cap
    assert len(waits) >= 1
    assert waits == (["0.10 s", "0.20 s"] + ["0.40 s"] * 7)[: len(waits)]
    for message in _retry_logs(caplog):
        assert message.startswith(f"flow at {probe} answered RESOURCE_EXHAUSTED; retry ")


def test_busy_replica_past_the_attempts_is_resource_exhausted(probe, caplog):
    first = _hold_the_slot(probe, steps=100, sleep_s=0.1)
    try:
        with (
            caplog.at_level(logging.WARNING, logger=ENGINE_LOGGER),
            pytest.raises(errors.ResourceExhaustedError) as info,
        ):
            call_stage(None, "flow", _request(steps=1), _remote(probe, 3, 0.05), no_progress, 30)
    finally:
        first.cancel()
    assert "gave up after 3 attempt(s)" in str(info.value)
    assert "another replica" in str(info.value)  # the worker's own message is kept
    assert _retry_waits(caplog) == ["0.05 s", "0.10 s"]


def test_unreachable_replica_is_retried_then_unavailable(caplog):
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    with (
        caplog.at_level(logging.WARNING, logger=ENGINE_LOGGER),
        pytest.raises(errors.UnavailableError, match=r"gave up after 2 attempt\(s\)"),
    ):
        call_stage(None, "flow", _request(steps=1), _remote(target, 2, 0.01), no_progress, 10)
    assert _retry_waits(caplog) == ["0.01 s"]


def test_other_errors_are_not_retried(probe, caplog):
    with (
        caplog.at_level(logging.WARNING, logger=ENGINE_LOGGER),
        pytest.raises(errors.InvalidArgumentError) as info,
    ):
        call_stage(None, "flow", _request(fail="invalid"), _remote(probe, 5, 0.01), no_progress, 10)
    assert info.value.field == "video.frames"
    assert _retry_waits(caplog) == []


def test_retry_settings_that_cannot_work_are_refused():
    with pytest.raises(errors.InvalidArgumentError, match="remote.retry_attempts"):
        RemoteConfig(retry_attempts=0)
    with pytest.raises(errors.InvalidArgumentError, match="remote.retry_factor"):
        RemoteConfig(retry_factor=0.5)


def test_waits_stop_at_the_callers_deadline(probe):
    first = _hold_the_slot(probe, steps=100, sleep_s=0.1)
    try:
        with pytest.raises(errors.ResourceExhaustedError, match=r"after 1 attempt\(s\)"):
            # a 2 s wait would pass the 1 s deadline, so the first refusal is final
            call_stage(None, "flow", _request(steps=1), _remote(probe, 5, 2.0), no_progress, 1.0)
    finally:
        first.cancel()
