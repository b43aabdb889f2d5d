"""The synthetic clips the segment stage is measured on, and how one clip is measured.

One suite for the bench (bench/segment_suite.py) and the tests (tests/unit/test_segment_suite.py):
every camera kind, one to three moving objects, a non-rigid one, objects touching and leaving the
frame edge, objects passing behind and in front of the static ellipsoid and of each other.
Priors come either as the default pipeline makes them (DIS flow, offline depth) or exact from
the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.evaluation.fit_suite import pipeline_flow_and_depth
from services.evaluation.metrics import mask_f, mask_j
from services.pipeline.config import PipelineConfig
from services.segment.engine import SegmentConfig, segment_motion
from services.synthetic.scene import SceneConfig, SyntheticScene

PriorSource = Literal["pipeline", "exact"]


@dataclass(frozen=True)
class SuiteClip:
    name: str
    scene: SceneConfig


def segment_suite(height: int, width: int, n_frames: int) -> list[SuiteClip]:
    """The suite's clips at the given size (the seeds were picked for what each name says)."""

    def clip(name: str, camera: str, n_objects: int, nonrigid: bool, motion: float, seed: int):
        scene = SceneConfig(
            height=height,
            width=width,
            n_frames=n_frames,
            camera=camera,
            n_objects=n_objects,
            nonrigid=nonrigid,
            motion_scale=motion,
            seed=seed,
            n_tracks=0,
        )
        return SuiteClip(name, scene)

    return [
        clip("moving, 1 object", "moving", 1, False, 1.0, 0),
        clip("moving, 2 objects, non-rigid, edge", "moving", 2, True, 1.5, 1),
        clip("moving, 3 objects", "moving", 3, False, 1.5, 4),
        clip("rotation, 3 objects, leaving frame", "rotation", 3, False, 1.5, 1),
        clip("rotation, 3 objects, occluded", "rotation", 3, False, 1.5, 3),
        clip("static, 2 objects, non-rigid", "static", 2, True, 1.5, 1),
    ]


@dataclass
class ClipMasks:
    """A clip's masks without and with refinement, from one source of priors."""

    naive_thw: np.ndarray  # bool [T, H, W]: the flow masks, no refinement
    refined_thw: np.ndarray  # bool [T, H, W]: refined by the frames
    gt_thw: np.ndarray  # bool [T, H, W]: the scene's exact moving masks


def clip_masks(
    scene: SyntheticScene, source: PriorSource, cfg: SegmentConfig | None = None
) -> ClipMasks:
    """Segments the scene from DIS flow and offline depth ('pipeline', the default pipeline's
    priors) or from its exact flow and depth ('exact')."""
    cfg = cfg or SegmentConfig()
    if source == "pipeline":
        fwd, bwd, depth = pipeline_flow_and_depth(scene.frames_thw3, PipelineConfig())
        depth_thw, confidence_thw = depth.depth_thw, depth.confidence_thw
    else:
        fwd, bwd, depth_thw = scene.flow_fwd_t1hw2, scene.flow_bwd_t1hw2, scene.depth_thw
        confidence_thw = None
    naive = segment_motion(  # no frames: no refinement
        fwd, bwd, cfg, depth_thw, depth_confidence_thw=confidence_thw
    )
    refined = segment_motion(
        fwd,
        bwd,
        cfg,
        depth_thw,
        frames_thw3=scene.frames_thw3,
        depth_confidence_thw=confidence_thw,
    )
    return ClipMasks(naive.masks_thw, refined.masks_thw, scene.moving_thw)


def mean_j_and_f(masks_thw: np.ndarray, gt_thw: np.ndarray) -> tuple[float, float]:
    """Mean DAVIS J (IoU) and boundary F over the frames."""
    pairs = list(zip(masks_thw, gt_thw, strict=True))
    return (
        float(np.mean([mask_j(p, g) for p, g in pairs])),
        float(np.mean([mask_f(p, g) for p, g in pairs])),
    )


def edge_frames(gt_thw: np.ndarray) -> int:
    """Frames in which a moving object touches the frame edge."""
    return int(sum(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for m in gt_thw))
