"""Depth stage: stored video and flow in, stored depth, confidence, intrinsics (and poses) out."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from gflow.v1 import common_pb2, depth_pb2
from services.common.artifacts import Artifacts
from services.common.config import parse_request_config, refuse_server_fields, with_env_weights
from services.common.errors import ProgressFn, no_progress
from services.common.keys import source_digest, with_weights_digest
from services.common.preview import colorize, encode_png, strip
from services.common.stage import (
    StageOutputs,
    optional_artifact,
    run_cached,
    upstream_array,
    upstream_result,
)
from services.common.video import frames_sha256, load_frames
from services.depth.config import (
    SERVER_FIELDS,
    WEIGHTS_FIELD,
    DepthConfig,
    DepthRuntime,
    needed_stride,
)
from services.depth.engine import estimate_depth
from services.depth.flows import PairFlows, from_arrays
from services.flow.stage import pair_artifact

STAGE = "depth"


def load_pair_flows(
    artifacts: Artifacts, flow: common_pb2.StageResult, video: common_pb2.VideoRef, stride: int
) -> PairFlows:
    """The flow stage's consecutive pairs and, where it computed them, the pairs `stride` apart
    (the engine checks that every pair it needs is there)."""
    hw = (video.height, video.width)

    def pairs(step: int) -> PairFlows:
        fwd_name, bwd_name = (pair_artifact(n, step) for n in ("flow_forward", "flow_backward"))
        return from_arrays(
            upstream_array(artifacts, flow, fwd_name, "THWC", hw, "flow"),
            upstream_array(artifacts, flow, bwd_name, "THWC", hw, "flow"),
            step,
        )

    pair_flows = pairs(1)
    if stride and optional_artifact(flow, pair_artifact("flow_forward", stride)) is not None:
        pair_flows |= pairs(stride)
    return pair_flows


def run_depth(
    artifacts: Artifacts,
    video: common_pb2.VideoRef,
    flow: common_pb2.StageResult | None,
    config: DepthConfig,
    runtime: DepthRuntime = DepthRuntime(),
    progress: ProgressFn = no_progress,
    segment: common_pb2.StageResult | None = None,
) -> common_pb2.StageResult:
    """Depth for every frame from the flow stage's result (None: MASt3R without its offline
    fallback), cached by content key (the whole `config`, the inputs' keys, and for mast3r the
    checkpoint's content; `runtime` changes how it is computed); repairs are reported, never
    fatal. `segment` (optional) is a segment result whose masks mark the moving pixels the
    geometry leaves out (the pipeline's `two_pass_depth`)."""

    video_sha256 = frames_sha256(artifacts, video)
    flow_result = (
        None if flow is None else upstream_result(artifacts, flow, "flow", "flow", video_sha256)
    )
    segment_result = (
        None
        if segment is None
        else upstream_result(artifacts, segment, "segment", "segment", video_sha256)
    )

    def produce(out: StageOutputs) -> None:
        frames_thw3 = load_frames(artifacts, video, video_sha256)
        pair_flows = None
        if flow_result is not None:
            stride = needed_stride(config.flow_stride, len(frames_thw3))
            pair_flows = load_pair_flows(artifacts, flow_result, video, stride)
        moving_thw = None
        if segment_result is not None:
            hw = (video.height, video.width)
            masks_thw = upstream_array(artifacts, segment_result, "masks", "THW", hw, "segment")
            moving_thw = masks_thw.astype(bool)
        result = estimate_depth(
            frames_thw3, config, runtime, progress, moving_thw=moving_thw, flow=pair_flows
        )
        out.array("depth", result.depth_thw.astype(np.float32), "THW")
        out.array("confidence", result.confidence_thw.astype(np.float32), "THW")
        fx, fy, cx, cy = (float(v) for v in result.intrinsics)
        out.json(
            "intrinsics",
            {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "height": video.height, "width": video.width},
        )
        if result.c2w_t44 is not None:
            out.array("c2w", result.c2w_t44.astype(np.float64), "TIJ")
        quality = result.quality
        out.figure("nonpositive_share", quality.nonpositive_share)
        out.figure("scale_drift", quality.scale_drift)
        if quality.periodic_artefact is not None:  # mast3r only: offline has no anchor grid
            out.figure("periodic_artefact", quality.periodic_artefact)
        out.figure("prior_share", quality.prior_share)
        middle = len(frames_thw3) // 2
        out.file(
            "preview",
            encode_png(
                strip(
                    [
                        frames_thw3[middle],
                        colorize(result.depth_thw[middle]),
                        colorize(result.confidence_thw[middle]),
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
                "repairs": result.repairs,
                "warnings": result.warnings,
                "intrinsics": [fx, fy, cx, cy],
                "work_hw": list(result.work_hw),
                "moving_masks": segment_result.key if segment_result is not None else None,
                "plan": dataclasses.asdict(result.plan) if result.plan is not None else None,
                "series": {
                    "scale_ratio": [float(r) for r in quality.scale_ratio_t],
                    "median_depth": [float(np.median(d)) for d in result.depth_thw],
                },
                "figures": {
                    "nonpositive_share": quality.nonpositive_share,
                    "scale_drift": quality.scale_drift,
                    "periodic_artefact": quality.periodic_artefact,
                    "artefact_period_px": quality.artefact_period_px,
                    "prior_share": quality.prior_share,
                },
            }
        )

    inputs = [
        flow_result.key if flow_result is not None else "",
        segment_result.key if segment_result is not None else "",
    ]
    params = with_weights_digest(config, WEIGHTS_FIELD)
    return run_cached(
        artifacts,
        STAGE,
        config.backend,
        params,
        video_sha256,
        inputs,
        produce,
        code=source_digest(__name__),
    )


def depth_from_request(
    artifacts: Artifacts,
    request: depth_pb2.EstimateDepthRequest,
    progress: ProgressFn = no_progress,
    *,
    remote_caller: bool = False,
    runtime: DepthRuntime = DepthRuntime(),
) -> common_pb2.StageResult:
    """The DepthService call, in-process: the server and the embedded pipeline both use this.
    `request.flow` names the flow stage's result (required for the offline backend),
    `request.segment` (optional) a segment result whose masks mark moving pixels. A MASt3R
    checkpoint not named in the request comes from GFLOW_MAST3R_CHECKPOINT. A
    `remote_caller` may not name it nor trust it (`SERVER_FIELDS`): the server's environment
    does (GFLOW_MAST3R_TRUST_CHECKPOINT=1 allows a full unpickle). `runtime` is the caller's:
    the server's environment, or the embedded run's `--pipeline.runtime.depth.*` flags."""
    config = parse_request_config(request.config_json, DepthConfig, DepthRuntime, STAGE)
    if remote_caller:
        refuse_server_fields(config, SERVER_FIELDS, "config_json")
    if remote_caller and config.backend in WEIGHTS_FIELD:  # offline keeps the embedded run's key
        trust = os.environ.get(SERVER_FIELDS["mast3r_trust_checkpoint"]) == "1"
        config = dataclasses.replace(config, mast3r_trust_checkpoint=trust)
    config = with_env_weights(config, WEIGHTS_FIELD, SERVER_FIELDS)
    flow = request.flow if request.HasField("flow") else None
    segment = request.segment if request.HasField("segment") else None
    return run_depth(artifacts, request.video, flow, config, runtime, progress, segment)
