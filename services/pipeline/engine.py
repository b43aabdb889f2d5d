"""The pipeline: ingest, then flow -> depth -> segment -> fit, each in-process or over gRPC.

Every stage is called with its request message either way: in-process through the same function
its server calls, remotely through its stub. So an embedded run and a run across services give
the same artifacts under the same keys. Each stage answers from the store when its work was done
before, which is also how a killed run resumes (and fit resumes from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gflow.v1 import (
    common_pb2,
    depth_pb2,
    depth_pb2_grpc,
    fit_pb2,
    fit_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    pipeline_pb2,
    segment_pb2,
    segment_pb2_grpc,
)
from services.common.artifacts import Artifacts
from services.common.client import Endpoint, collect_stage, open_channel
from services.common.config import to_json
from services.common.errors import (
    DeadlineError,
    ProgressFn,
    ResourceExhaustedError,
    UnavailableError,
)
from services.fit.queries import grid_queries_q3
from services.pipeline.config import PipelineConfig, PipelineRuntime, RemoteConfig
from services.pipeline.report import write_report

log = logging.getLogger(__name__)

STAGES = ("flow", "depth", "segment", "fit")

# (stage, done, total, message)
PipelineProgress = Callable[[str, int, int, str], None]


def _no_pipeline_progress(stage: str, done: int, total: int, message: str) -> None:
    """Default sink when the caller shows no progress."""


@dataclass(frozen=True)
class _StageCall:
    """How to run one stage in-process (`local`: "module:function", see `_local_stage`) and how
    to reach it over gRPC."""

    local: str
    stub: type
    method: str


_CALLS = {
    "flow": _StageCall(
        "services.flow.stage:flow_from_request", flow_pb2_grpc.FlowServiceStub, "ComputeFlow"
    ),
    "depth": _StageCall(
        "services.depth.stage:depth_from_request", depth_pb2_grpc.DepthServiceStub, "EstimateDepth"
    ),
    "segment": _StageCall(
        "services.segment.stage:segment_from_request",
        segment_pb2_grpc.SegmentServiceStub,
        "SegmentMotion",
    ),
    "fit": _StageCall("services.fit.stage:fit_from_request", fit_pb2_grpc.FitServiceStub, "Fit"),
}


def _local_stage(stage: str) -> Callable[[Artifacts, object, ProgressFn], common_pb2.StageResult]:
    """The in-process entry of `stage`, imported on its first embedded call. This is the one
    place stage modules load lazily: a run whose stages all run on services never imports the
    engines, nor torch through them (a `gflow run --remote-config` client needs neither)."""
    module, function = _CALLS[stage].local.split(":")
    return getattr(importlib.import_module(module), function)


def _endpoint(remote: RemoteConfig, stage: str) -> Endpoint | None:
    target = getattr(remote, stage)
    if not target:
        return None
    return Endpoint(
        target=target,
        auth_token_file=remote.auth_token_file,
        tls_ca=remote.tls_ca,
        max_message_bytes=remote.max_message_bytes,
    )


def _retry_wait_s(remote: RemoteConfig, attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...): exponential, capped."""
    return min(
        remote.retry_first_delay_s * remote.retry_factor ** (attempt - 1), remote.retry_max_delay_s
    )


def call_stage(
    artifacts: Artifacts,
    stage: str,
    request,
    remote: RemoteConfig,
    progress: ProgressFn,
    timeout_s: float | None,
    runtime: PipelineRuntime = PipelineRuntime(),
) -> common_pb2.StageResult:
    """Run one stage where the configuration puts it; errors arrive as our exception types.
    In this process it computes as `runtime` says; a remote stage as its server chooses.

    A remote stage that answers RESOURCE_EXHAUSTED (its replicas are full), UNAVAILABLE (a
    replica or its store is down) or DEADLINE_EXCEEDED (past its deadline from the clip's size,
    or silent for `remote.silence_timeout_s`: stalled) is called again after a growing wait, on
    a fresh channel so round-robin can pick another replica. Stage work is keyed by content, so
    a retry never redoes what an attempt finished (and a fit resumes from its checkpoint). Waits
    never run past the caller's deadline.
    """
    call = _CALLS[stage]
    endpoint = _endpoint(remote, stage)
    if endpoint is None:
        # segment has no runtime setting
        kwargs = {"runtime": getattr(runtime, stage)} if hasattr(runtime, stage) else {}
        return _local_stage(stage)(artifacts, request, progress, **kwargs)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    stage_deadline_s = remote.stage_deadline(request.video.frame_count)
    attempt = 0
    while True:
        attempt += 1
        left_s = stage_deadline_s
        if deadline is not None:
            left_s = min(left_s, max(0.0, deadline - time.monotonic()))
        try:
            with open_channel(endpoint) as channel:
                stream = getattr(call.stub(channel), call.method)(request, timeout=left_s)
                return collect_stage(stream, progress, remote.silence_timeout_s)
        except (ResourceExhaustedError, UnavailableError, DeadlineError) as exc:
            wait_s = _retry_wait_s(remote, attempt)
            past_deadline = deadline is not None and time.monotonic() + wait_s >= deadline
            if attempt == remote.retry_attempts or past_deadline:
                raise type(exc)(
                    f"{stage} at {endpoint.target} gave up after {attempt} attempt(s): {exc}",
                    reason=exc.reason,
                ) from exc
            log.warning(
                "%s at %s answered %s; retry %d of %d in %.2f s",
                stage,
                endpoint.target,
                exc.reason,
                attempt,
                remote.retry_attempts - 1,
                wait_s,
            )
            time.sleep(wait_s)


def flow_request(video: common_pb2.VideoRef, config: PipelineConfig) -> flow_pb2.ComputeFlowRequest:
    """The flow run every later stage reads, with the wider pairs depth triangulates from."""
    flow_config = config.flow_config(video.frame_count)
    return flow_pb2.ComputeFlowRequest(video=video, config_json=to_json(flow_config))


def depth_request(
    video: common_pb2.VideoRef,
    flow: common_pb2.StageResult,
    config: PipelineConfig,
    segment: common_pb2.StageResult | None = None,
) -> depth_pb2.EstimateDepthRequest:
    """Depth from the flow, with moving pixels left out where a `segment` result is given."""
    return depth_pb2.EstimateDepthRequest(
        video=video, flow=flow, config_json=to_json(config.depth), segment=segment
    )


def segment_request(
    video: common_pb2.VideoRef,
    flow: common_pb2.StageResult,
    depth: common_pb2.StageResult,
    config: PipelineConfig,
) -> segment_pb2.SegmentMotionRequest:
    return segment_pb2.SegmentMotionRequest(
        video=video, flow=flow, depth=depth, config_json=to_json(config.segment)
    )


def fit_request(
    video: common_pb2.VideoRef,
    depth: common_pb2.StageResult,
    flow: common_pb2.StageResult,
    segment: common_pb2.StageResult,
    config: PipelineConfig,
    track_queries: common_pb2.ArtifactRef | None = None,
) -> fit_pb2.FitRequest:
    return fit_pb2.FitRequest(
        video=video,
        depth=depth,
        flow=flow,
        segment=segment,
        config_json=to_json(config.fit_config()),
        track_queries=track_queries,
    )


def put_queries(artifacts: Artifacts, queries_tyx_q3: np.ndarray) -> common_pb2.ArtifactRef:
    """Track queries (rows t, y, x) stored under their checksum, ready for `run_pipeline`."""
    queries_tyx_q3 = np.asarray(queries_tyx_q3, np.float32)
    digest = hashlib.sha256(queries_tyx_q3.tobytes()).hexdigest()[:40]
    return artifacts.put_array(f"queries/{digest}", queries_tyx_q3, "QC")


def run_pipeline(
    artifacts: Artifacts,
    video: common_pb2.VideoRef,
    config: PipelineConfig,
    progress: PipelineProgress = _no_pipeline_progress,
    timeout_s: float | None = None,
    track_queries: common_pb2.ArtifactRef | None = None,
) -> pipeline_pb2.PipelineResult:
    """Every stage in order on an ingested video, then the HTML report. The fit tracks
    `track_queries` (a float32 [Q, 3] array of (t, y, x)), or else `config.track_grid`'s grid.
    With `config.second_depth_pass` the depth stage runs again with the segment stage's masks
    and the fit gets that second depth."""
    for warning in config.warnings():
        log.warning("%s", warning)
    if config.two_pass_depth and not config.second_depth_pass:
        log.info("depth runs once: the %s backend does not use the masks", config.depth.backend)
    if track_queries is None and config.track_grid:
        grid_q3 = grid_queries_q3(video.height, video.width, config.track_grid)
        track_queries = put_queries(artifacts, grid_q3)

    def run(stage: str, request, label: str = "") -> common_pb2.StageResult:
        """One stage call; `label` ("pass 2: ") prefixes its progress messages."""

        def stage_progress(done: int, total: int, message: str) -> None:
            progress(stage, done, total, label + message)

        result = call_stage(
            artifacts, stage, request, config.remote, stage_progress, timeout_s, config.runtime
        )
        cached = " from the store" if result.cached else ""
        log.info("%s %sdone%s (%s)", stage, label, cached, result.key)
        progress(stage, 1, 1, label + ("cached" if result.cached else "done"))
        return result

    flow = run("flow", flow_request(video, config))
    depth = run("depth", depth_request(video, flow, config))
    segment = run("segment", segment_request(video, flow, depth, config))
    if config.second_depth_pass:
        depth = run("depth", depth_request(video, flow, config, segment), "pass 2: ")
    fit = run("fit", fit_request(video, depth, flow, segment, config, track_queries))
    result = pipeline_pb2.PipelineResult(
        video=video, depth=depth, flow=flow, segment=segment, fit=fit
    )
    result.report.CopyFrom(write_report(artifacts, result))
    progress("report", 1, 1, "done")
    return result
