"""Flow stage: stored video in, stored forward/backward flow and consistency masks out."""

from __future__ import annotations

import numpy as np

from gflow.v1 import common_pb2, flow_pb2
from services.common.artifacts import Artifacts
from services.common.config import parse_request_config, refuse_server_fields, with_env_weights
from services.common.errors import ProgressFn, no_progress
from services.common.keys import source_digest, with_weights_digest
from services.common.preview import encode_png, flow_to_rgb, strip
from services.common.stage import StageOutputs, run_cached
from services.common.video import frames_sha256, load_frames
from services.flow.config import SERVER_FIELDS, WEIGHTS_FIELD, FlowConfig, FlowRuntime
from services.flow.engine import FlowResult, compute_flow

STAGE = "flow"


def pair_artifact(name: str, stride: int) -> str:
    """Artifact name of one stride's pairs: `flow_forward` holds the consecutive pairs,
    `flow_forward_stride3` the pairs (t, t + 3) (likewise flow_backward, consistent_forward)."""
    return name if stride == 1 else f"{name}_stride{stride}"


def _write_pairs(out: StageOutputs, result: FlowResult, stride: int) -> list[dict]:
    pairs = [p for p in result.pairs if p.t1 - p.t0 == stride]
    if not pairs:
        return []
    out.array(
        pair_artifact("flow_forward", stride), np.stack([p.flow_fwd_hw2 for p in pairs]), "THWC"
    )
    out.array(
        pair_artifact("flow_backward", stride), np.stack([p.flow_bwd_hw2 for p in pairs]), "THWC"
    )
    out.array(
        pair_artifact("consistent_forward", stride),
        np.stack([p.consistent_fwd_hw for p in pairs]),
        "THW",
    )
    return [
        {
            "t0": p.t0,
            "t1": p.t1,
            "consistent_share": p.consistent_share,
            "fb_error_mean_px": p.fb_error_mean,
        }
        for p in pairs
    ]


def run_flow(
    artifacts: Artifacts,
    video: common_pb2.VideoRef,
    config: FlowConfig,
    runtime: FlowRuntime = FlowRuntime(),
    progress: ProgressFn = no_progress,
) -> common_pb2.StageResult:
    """Flow for every consecutive pair (and stride pairs on request), cached by content key
    (the whole `config`, and the content of the weights file its backend reads; `runtime`
    changes how, not what, is computed)."""

    video_sha256 = frames_sha256(artifacts, video)

    def produce(out: StageOutputs) -> None:
        frames_thw3 = load_frames(artifacts, video, video_sha256)
        result = compute_flow(frames_thw3, config, runtime, progress)
        per_pair = _write_pairs(out, result, 1)
        if config.extra_stride > 1:
            per_pair += _write_pairs(out, result, config.extra_stride)
        consecutive = [p for p in per_pair if p["t1"] - p["t0"] == 1]
        share = float(np.mean([p["consistent_share"] for p in consecutive]))
        error = float(np.mean([p["fb_error_mean_px"] for p in consecutive]))
        out.figure("fb_consistent_share", share)
        out.figure("fb_error_mean", error, "px")
        out.figure("seconds", result.seconds, "s")
        out.figure("peak_memory", result.peak_memory_bytes / 2**20, "MiB")
        first = result.pairs[0]
        out.file(
            "preview",
            encode_png(
                strip(
                    [
                        frames_thw3[first.t0],
                        flow_to_rgb(first.flow_fwd_hw2),
                        (np.repeat(first.consistent_fwd_hw[..., None], 3, axis=2) * 255).astype(
                            np.uint8
                        ),
                    ]
                )
            ),
            "image/png",
            ".png",
        )
        out.report(
            {
                "stage": STAGE,
                "backend": result.backend,
                "device": result.device,
                "seconds": result.seconds,
                "peak_memory_bytes": result.peak_memory_bytes,
                "memory_kind": result.memory_kind,
                "fb_consistent_share": share,
                "fb_error_mean_px": error,
                "pairs": per_pair,
            }
        )

    params = with_weights_digest(config, WEIGHTS_FIELD)
    return run_cached(
        artifacts,
        STAGE,
        config.backend,
        params,
        video_sha256,
        [],
        produce,
        code=source_digest(__name__),
    )


def flow_from_request(
    artifacts: Artifacts,
    request: flow_pb2.ComputeFlowRequest,
    progress: ProgressFn = no_progress,
    *,
    remote_caller: bool = False,
    runtime: FlowRuntime = FlowRuntime(),
) -> common_pb2.StageResult:
    """The FlowService call, in-process: the server and the embedded pipeline both use this.
    Weights not named in the request come from GFLOW_RAFT_WEIGHTS / GFLOW_UNIMATCH_CHECKPOINT,
    for the backend that reads them; a `remote_caller` may not name them (`SERVER_FIELDS`).
    `runtime` is the caller's: the server's environment, or the embedded run's
    `--pipeline.runtime.flow.*` flags."""
    config = parse_request_config(request.config_json, FlowConfig, FlowRuntime, STAGE)
    if remote_caller:
        refuse_server_fields(config, SERVER_FIELDS, "config_json")
    config = with_env_weights(config, WEIGHTS_FIELD, SERVER_FIELDS)
    return run_flow(artifacts, request.video, config, runtime, progress)
