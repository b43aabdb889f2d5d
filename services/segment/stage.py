"""Segment stage: stored flow (and depth) in, per-frame moving masks and soft scores out."""

from __future__ import annotations

import numpy as np

from gflow.v1 import common_pb2, segment_pb2
from services.common.artifacts import Artifacts
from services.common.config import parse_config_json
from services.common.errors import ProgressFn, no_progress
from services.common.image_metrics import mask_j
from services.common.keys import source_digest
from services.common.preview import encode_png, overlay_mask, strip
from services.common.stage import (
    StageOutputs,
    optional_artifact,
    run_cached,
    upstream_array,
    upstream_result,
)
from services.common.video import frames_sha256, load_frames
from services.segment.config import SegmentConfig
from services.segment.engine import segment_motion, validate_user_masks

STAGE = "segment"


def _frame_series(masks_thw: np.ndarray) -> dict[str, list[float | None]]:
    """Mask coverage per frame and IoU with the previous frame's mask (None at frame 0)."""
    iou = [None] + [float(mask_j(b, a)) for a, b in zip(masks_thw[:-1], masks_thw[1:], strict=True)]
    return {"moving_share": [float(m.mean()) for m in masks_thw], "temporal_iou": iou}


def run_segment(
    artifacts: Artifacts,
    request: segment_pb2.SegmentMotionRequest,
    config: SegmentConfig,
    progress: ProgressFn = no_progress,
) -> common_pb2.StageResult:
    """Moving masks from the flow stage's result, or the user's masks checked for size."""
    video = request.video
    hw = (video.height, video.width)
    video_sha256 = frames_sha256(artifacts, video)
    use_depth = bool(request.depth.key)
    user = artifacts.pinned(request.user_masks, "user_masks") if request.user_masks.key else None
    flow_result = (
        None
        if user is not None
        else upstream_result(artifacts, request.flow, "flow", "flow", video_sha256)
    )
    depth_result = (
        upstream_result(artifacts, request.depth, "depth", "depth", video_sha256)
        if use_depth and user is None
        else None
    )
    inputs = [
        flow_result.key if flow_result else "",
        depth_result.key if depth_result else "",
        user.sha256 if user else "",
    ]

    def produce(out: StageOutputs) -> None:
        frames_thw3 = load_frames(artifacts, video, video_sha256)
        stats = []
        if user is not None:
            raw = artifacts.get_array(user, expect_hw=hw, field="user_masks")
            masks_thw = validate_user_masks(raw, video.height, video.width, video.frame_count)
            scores_thw = masks_thw.astype(np.float32)
            source = "user"
        else:

            def flow(name: str) -> np.ndarray:
                return upstream_array(artifacts, flow_result, name, "THWC", hw, "flow")

            depth_thw = confidence_thw = None
            if depth_result is not None:
                depth_thw = upstream_array(artifacts, depth_result, "depth", "THW", hw, "depth")
                # The depth stage's confidence says which depth was measured; a depth result
                # without one (written by other means) counts as measured throughout.
                confidence = (
                    optional_artifact(depth_result, "confidence")
                    if config.measured_depth_only
                    else None
                )
                if confidence is not None:
                    confidence_thw = artifacts.get_array(
                        confidence, layout="THW", expect_hw=hw, field="depth.confidence"
                    )
            result = segment_motion(
                flow("flow_forward"),
                flow("flow_backward"),
                config,
                depth_thw=depth_thw,
                progress=progress,
                frames_thw3=frames_thw3,
                depth_confidence_thw=confidence_thw,
            )
            masks_thw, scores_thw, stats = result.masks_thw, result.scores_thw, result.stats
            source = "flow+depth" if depth_result is not None else "flow"
        out.array("masks", masks_thw, "THW")
        out.array("scores", scores_thw.astype(np.float32), "THW")
        series = _frame_series(masks_thw)
        out.figure("moving_share_mean", float(masks_thw.mean()))
        ious = [v for v in series["temporal_iou"] if v is not None]
        out.figure("temporal_iou_mean", float(np.mean(ious)) if ious else float("nan"))
        degenerate = [s.t for s in stats if s.degenerate]
        out.figure("degenerate_frames", len(degenerate))
        middle = len(frames_thw3) // 2
        out.file(
            "preview",
            encode_png(
                strip(
                    [
                        overlay_mask(frames_thw3[middle], masks_thw[middle]),
                        (np.repeat(scores_thw[middle][..., None], 3, axis=2) * 255).astype(
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
                "source": source,
                "series": series,
                "frames": [
                    {
                        "t": s.t,
                        "moving_share": s.moving_share,
                        "temporal_iou": s.temporal_iou,
                        "motion_model": s.motion_model,
                        "degenerate": s.degenerate,
                    }
                    for s in stats
                ],
            }
        )

    return run_cached(
        artifacts,
        STAGE,
        "epipolar",
        config,
        video_sha256,
        inputs,
        produce,
        code=source_digest(__name__),
    )


def segment_from_request(
    artifacts: Artifacts,
    request: segment_pb2.SegmentMotionRequest,
    progress: ProgressFn = no_progress,
) -> common_pb2.StageResult:
    """The SegmentService call, in-process: the server and the embedded pipeline both use this."""
    config = parse_config_json(request.config_json, SegmentConfig)
    return run_segment(artifacts, request, config, progress)
