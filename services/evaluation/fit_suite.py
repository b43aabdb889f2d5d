"""The tracking and pose suite: synthetic clips of our kind, scored against exact ground truth.

Each clip is a `SceneConfig` (textured static background, moving objects, a camera that moves,
only rotates or stands still). A clip is fitted two ways: with its exact priors (depth, flow,
masks, intrinsics: the engine alone) and through the whole default pipeline (DIS flow, offline
depth, segmentation, fit: what a user gets; the stage engines chained in-process as the stages
chain them, without the store, with a second depth pass where `second_depth_pass` says so).
Every row is scored with TAP-Vid query-first average Jaccard / delta-avg / occlusion accuracy,
camera ATE after Sim(3) as a share of the camera path's extent, RPE, depth abs-rel, moving-mask J
and PSNR, and beside it stands the floor: chained optical flow from the query (the same flow the
fit was given), occluded where forward and backward flow disagree.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from services.common.errors import InvalidArgumentError
from services.depth.engine import DepthResult, estimate_depth
from services.depth.flows import PairFlows, from_flow_result
from services.evaluation import metrics
from services.fit.config import FitConfig, FitRuntime, TrackMotion
from services.fit.engine import FitPriors, FitResult, fit
from services.fit.flow_tracks import chained_flow_tracks
from services.fit.tracks import Tracks, configured_tracks
from services.flow.engine import compute_flow
from services.pipeline.config import PipelineConfig
from services.segment.engine import segment_motion
from services.synthetic.scene import SceneConfig, SyntheticScene, make_scene

logger = logging.getLogger(__name__)

PriorSource = Literal["exact", "pipeline"]
TrackReadout = Callable[
    [FitResult, np.ndarray, FitConfig, FitPriors], tuple[np.ndarray, np.ndarray]
]
"""A fit result, query rows (t, y, x), the fit's config and its priors to (points [Q, T, 2],
occluded [Q, T]): a fit's tracks read again, as `configured_readout` reads them."""


@dataclass(frozen=True)
class SuiteClip:
    """One clip of the suite: a named synthetic scene (its size is set when it is made)."""

    name: str
    camera: Literal["moving", "rotation", "static"]
    n_objects: int
    nonrigid: bool = False
    seed: int = 0
    motion_scale: float = 1.0

    def scene_config(self, width: int, height: int, n_frames: int, n_tracks: int) -> SceneConfig:
        return SceneConfig(
            height=height,
            width=width,
            n_frames=n_frames,
            seed=self.seed,
            camera=self.camera,
            n_objects=self.n_objects,
            nonrigid=self.nonrigid,
            n_tracks=n_tracks,
            motion_scale=self.motion_scale,
        )


SUITE: tuple[SuiteClip, ...] = (
    SuiteClip("orbit", "moving", 2),
    SuiteClip("pan", "rotation", 2, seed=1),
    SuiteClip("static", "static", 2, seed=2),
    SuiteClip("orbit-nonrigid", "moving", 2, nonrigid=True, seed=3),
    # Three objects at twice the motion: they cross, occlude each other and leave the frame.
    SuiteClip("orbit-3-leaving", "moving", 3, seed=4, motion_scale=2.0),
)


def read_configured(
    result: FitResult,
    queries_q3: np.ndarray,
    cfg: FitConfig,
    priors: FitPriors,
    motion: TrackMotion | None = None,
    read: Callable[..., Tracks] = configured_tracks,
) -> tuple[np.ndarray, np.ndarray]:
    """The tracks a fit's config reads (`read`, configured_tracks: its track_motion and the
    checks it asks for on its priors), with `motion` in place of its track_motion where given."""
    if motion is not None:
        cfg = replace(cfg, track_motion=motion)
    tracks = read(result, queries_q3, cfg, priors)
    return tracks.points_qt2, tracks.occluded_qt


def configured_readout(
    motion: TrackMotion | None = None, read: Callable[..., Tracks] = configured_tracks
) -> TrackReadout:
    """`read_configured` as a TrackReadout: the benches' `--other-motion`, and `--other-tracks`
    through another version's configured_tracks."""
    return functools.partial(read_configured, motion=motion, read=read)


def load_readout(path: Path) -> TrackReadout:
    """The track readout of the tracks module at `path` (a tracks.py of another version of
    services/fit; it imports the rest of services/fit as is): its configured_tracks, so the
    row's config and priors reach it, or in versions without one its track_2d on the fit alone.
    The benches' `--other-tracks`."""
    spec = None
    if path.is_file():
        spec = importlib.util.spec_from_file_location(f"other_tracks_{abs(hash(path))}", path)
    if spec is None:
        raise InvalidArgumentError("other_tracks", f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "configured_tracks"):
        return configured_readout(read=module.configured_tracks)
    if hasattr(module, "track_2d"):
        return lambda result, queries_q3, cfg, priors: module.track_2d(result, queries_q3)
    raise InvalidArgumentError("other_tracks", f"{path} has neither configured_tracks nor track_2d")


def suite_clip(name: str) -> SuiteClip:
    for clip in SUITE:
        if clip.name == name:
            return clip
    raise InvalidArgumentError("clip", f"{name!r} is unknown; use one of {[c.name for c in SUITE]}")


@dataclass
class ClipOutputs:
    """What a fit gave for a clip, in the shapes the scores read (T frames, Q queries)."""

    c2w_t44: np.ndarray  # float64 [T, 4, 4]
    depth_thw: np.ndarray  # float32 [T, H, W] rendered depth, 0 where empty
    moving_mask_thw: np.ndarray  # bool [T, H, W]
    psnr_t: np.ndarray  # float64 [T]
    points_qt2: np.ndarray  # float32 [Q, T, 2] (x, y)
    occluded_qt: np.ndarray  # bool [Q, T]
    flow_fwd_t1hw2: np.ndarray  # the flow the fit was given (for the floor)
    flow_bwd_t1hw2: np.ndarray
    other_tracks: tuple[np.ndarray, np.ndarray] | None = field(default=None)
    """(points, occluded) of a second readout of the same fit, where one was asked for."""


def query_rows(queries: metrics.TapvidQueries) -> np.ndarray:
    """Query rows (t, y, x) as the fit's tracks take them."""
    return np.stack(
        [queries.query_t_q, queries.query_xy_q2[:, 1], queries.query_xy_q2[:, 0]], axis=1
    ).astype(np.float64)


def exact_priors(scene: SyntheticScene) -> FitPriors:
    """The scene's own depth, flow, masks and intrinsics: the engine alone is measured."""
    return FitPriors(
        frames_thw3=scene.frames_thw3,
        depth_thw=scene.depth_thw,
        K_33=scene.K_33,
        flow_fwd_t1hw2=scene.flow_fwd_t1hw2,
        flow_bwd_t1hw2=scene.flow_bwd_t1hw2,
        moving_thw=scene.moving_thw.astype(np.float32),
    )


def fit_clip(
    priors: FitPriors,
    cfg: FitConfig,
    runtime: FitRuntime,
    queries_q3: np.ndarray,
    other_readout: TrackReadout | None = None,
) -> ClipOutputs:
    """Fit the priors (on `runtime`'s device) and track the queries (also with `other_readout`,
    where given, on the same fit: a change of the track readout alone, measured without the
    fit's run-to-run differences on a GPU)."""
    result = fit(priors, cfg, runtime)
    tracks = configured_tracks(result, queries_q3, cfg, priors)
    return ClipOutputs(
        c2w_t44=result.c2w_t44,
        depth_thw=result.depth_thw,
        moving_mask_thw=result.moving_mask_thw,
        psnr_t=result.psnr_t,
        points_qt2=tracks.points_qt2,
        occluded_qt=tracks.occluded_qt,
        flow_fwd_t1hw2=priors.flow_fwd_t1hw2,
        flow_bwd_t1hw2=priors.flow_bwd_t1hw2,
        other_tracks=None
        if other_readout is None
        else other_readout(result, queries_q3, cfg, priors),
    )


def pipeline_flow(
    frames_thw3: np.ndarray, config: PipelineConfig
) -> tuple[np.ndarray, np.ndarray, PairFlows]:
    """The default pipeline's flow for a clip: forward and backward ([T-1, H, W, 2]) and the
    pairs the depth stage reads (with the wider ones it triangulates from)."""
    flow = compute_flow(frames_thw3, config.flow_config(len(frames_thw3)), config.runtime.flow)
    flow_fwd_t1hw2, flow_bwd_t1hw2 = (f.astype(np.float32) for f in flow.stacked())
    return flow_fwd_t1hw2, flow_bwd_t1hw2, from_flow_result(flow)


def pipeline_flow_and_depth(
    frames_thw3: np.ndarray, config: PipelineConfig
) -> tuple[np.ndarray, np.ndarray, DepthResult]:
    """The default pipeline's flow (forward and backward, [T-1, H, W, 2]) and first depth for a
    clip: the flow computed once and handed to depth as the pipeline hands the flow stage's
    result to the depth stage."""
    flow_fwd_t1hw2, flow_bwd_t1hw2, pair_flows = pipeline_flow(frames_thw3, config)
    depth = estimate_depth(frames_thw3, config.depth, config.runtime.depth, flow=pair_flows)
    return flow_fwd_t1hw2, flow_bwd_t1hw2, depth


def pipeline_priors(scene: SyntheticScene, config: PipelineConfig) -> FitPriors:
    """The default pipeline's priors for the clip's frames: the flow, depth and segment engines
    chained as their stages chain them (with `config.second_depth_pass`, depth again with the
    segment masks, as services/pipeline/engine.py does)."""
    frames_thw3 = scene.frames_thw3
    flow_fwd_t1hw2, flow_bwd_t1hw2, pair_flows = pipeline_flow(frames_thw3, config)

    def depth_with(moving_thw: np.ndarray | None) -> DepthResult:
        return estimate_depth(
            frames_thw3, config.depth, config.runtime.depth, moving_thw=moving_thw, flow=pair_flows
        )

    depth = depth_with(None)
    segment = segment_motion(
        flow_fwd_t1hw2,
        flow_bwd_t1hw2,
        config.segment,
        depth_thw=depth.depth_thw,
        frames_thw3=frames_thw3,
        depth_confidence_thw=depth.confidence_thw,
    )
    if config.second_depth_pass:
        depth = depth_with(segment.masks_thw)
    fx, fy, cx, cy = depth.intrinsics
    return FitPriors(
        frames_thw3=frames_thw3,
        depth_thw=depth.depth_thw.astype(np.float32),
        K_33=np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]),
        flow_fwd_t1hw2=flow_fwd_t1hw2,
        flow_bwd_t1hw2=flow_bwd_t1hw2,
        moving_thw=segment.scores_thw.astype(np.float32),
        c2w_t44=depth.c2w_t44,
        depth_confidence_thw=depth.confidence_thw.astype(np.float32),
    )


def path_extent(c2w_t44: np.ndarray) -> float:
    """Largest distance between two camera centres of the path (0 for a camera that stays)."""
    centres_t3 = c2w_t44[:, :3, 3]
    return float(np.max(np.linalg.norm(centres_t3[:, None] - centres_t3[None], axis=-1)))


def tapvid_row(
    queries: metrics.TapvidQueries,
    points_qt2: np.ndarray,
    occluded_qt: np.ndarray,
    image_hw: tuple[int, int],
) -> dict[str, float]:
    m = metrics.tapvid_metrics(
        queries.query_t_q,
        queries.gt_tracks_qt2,
        queries.gt_occluded_qt,
        points_qt2,
        occluded_qt,
        image_hw,
        "first",
    )
    return {
        "aj": m["average_jaccard"],
        "delta_avg": m["average_pts_within_thresh"],
        "oa": m["occlusion_accuracy"],
    }


def floor_row(
    queries: metrics.TapvidQueries,
    flow_fwd_t1hw2: np.ndarray,
    flow_bwd_t1hw2: np.ndarray,
    image_hw: tuple[int, int],
) -> dict[str, float]:
    """The floor's AJ / delta-avg / OA: chained flow from each query, occluded where forward and
    backward flow disagree (services/fit/flow_tracks.py)."""
    points_qt2, occluded_qt = chained_flow_tracks(
        flow_fwd_t1hw2, flow_bwd_t1hw2, query_rows(queries)
    )
    return tapvid_row(queries, points_qt2, occluded_qt, image_hw)


FIT_FIGURES: dict[str, bool] = {
    "aj": True,
    "delta_avg": True,
    "oa": True,
    "ate_share": False,
    "ate_depths": False,
    "rpe_trans": False,
    "rpe_rot_deg": False,
    "depth_abs_rel": False,
    "mask_j": True,
    "psnr": True,
}
"""The fit's figures in a `score` row, each with True where higher is better: what a change
must not lower (bench/suite_diff.py). `ate` is left out: `ate_depths` is it over a constant."""
FLOOR_FIGURES = ("naive_aj", "naive_delta_avg", "naive_oa")
"""The floor's figures in a row: equal before and after unless the flow changed."""


def score(scene: SyntheticScene, queries: metrics.TapvidQueries, out: ClipOutputs) -> dict:
    """Every figure of a fitted clip against the scene's ground truth."""
    image_hw = scene.frames_thw3.shape[1:3]
    row = tapvid_row(queries, out.points_qt2, out.occluded_qt, image_hw)
    cameras = metrics.ate_rpe(out.c2w_t44, scene.c2w_t44)
    extent = path_extent(scene.c2w_t44)
    scene_depth = float(np.median(scene.depth_thw))
    rendered = out.depth_thw > 0
    depth = metrics.depth_metrics(out.depth_thw, scene.depth_thw, valid=rendered)
    row.update(
        ate=cameras["ate"],
        # For a camera that barely moves the share is meaningless: the drift is then given in
        # scene depths (ate_depths) and the share left out.
        ate_share=cameras["ate"] / extent if extent > 0.05 * scene_depth else float("nan"),
        ate_depths=cameras["ate"] / scene_depth,
        rpe_trans=cameras["rpe_trans"],
        rpe_rot_deg=cameras["rpe_rot_deg"],
        depth_abs_rel=depth["abs_rel"],
        mask_j=float(
            np.mean(
                [
                    metrics.mask_j(p, g)
                    for p, g in zip(out.moving_mask_thw, scene.moving_thw, strict=True)
                ]
            )
        ),
        psnr=float(np.mean(out.psnr_t)),
    )
    naive = floor_row(queries, out.flow_fwd_t1hw2, out.flow_bwd_t1hw2, image_hw)
    row.update({f"naive_{k}": v for k, v in naive.items()})
    if out.other_tracks is not None:
        other = tapvid_row(queries, *out.other_tracks, image_hw)
        row.update({f"other_{k}": v for k, v in other.items()})
    return row


def run_clip(
    clip: SuiteClip,
    source: PriorSource,
    fit_cfg: FitConfig,
    *,
    width: int,
    height: int,
    n_frames: int,
    n_tracks: int = 128,
    pipeline: PipelineConfig | None = None,
    other_readout: TrackReadout | None = None,
) -> dict:
    """Make the clip, fit it from the given prior source, and score it (one table row).
    `pipeline` makes the pipeline priors; its runtime also says where the fit runs.
    `other_readout`: a second track readout scored on the same fit (fields other_aj, ...)."""
    pipeline = pipeline or PipelineConfig()
    scene = make_scene(clip.scene_config(width, height, n_frames, n_tracks))
    queries = metrics.sample_queries(scene.tracks_nt2, scene.occluded_nt, "first")
    rows_q3 = query_rows(queries)
    if source == "exact":
        priors = exact_priors(scene)
    else:
        priors = pipeline_priors(scene, pipeline)
    out = fit_clip(priors, fit_cfg, pipeline.runtime.fit, rows_q3, other_readout)
    row = score(scene, queries, out)
    row.update(clip=clip.name, source=source, size=f"{width}x{height}x{n_frames}")
    logger.info(
        "%s (%s): AJ %.3f (floor %.3f), ATE %.2f %% of path, PSNR %.1f dB",
        clip.name,
        source,
        row["aj"],
        row["naive_aj"],
        100 * row["ate_share"],
        row["psnr"],
    )
    return row
