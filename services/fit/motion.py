"""What the previous frame's Gaussians do next: visibility, flow targets and the moving update.

GFlow moves the moving Gaussians before optimising a new frame: a visible moving Gaussian goes
where the optical flow takes its pixel, at the depth the depth prior gives there (its camera depth
scaled by the prior's depth change, so its offset from the surface is kept). A moving Gaussian
that no pixel sees takes the mean displacement of its nearest visible moving neighbours (with
FitConfig's `moving_behind_occluders`, of those that do not lie in front of it).
`split_and_move` does the whole step: relabel the seen Gaussians still/moving, then move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from services.common.geometry import backproject_p3, project_p2
from services.common.sampling import sample_bilinear, sample_extrapolated
from services.fit.cluster import split_moving
from services.fit.config import FitConfig
from services.fit.priors import FitPriors

VISIBLE_DEPTH_TOLERANCE = 0.05
"""A centre counts as seen when its camera z is within this share of the rendered depth."""
COVERED_ALPHA = 0.5
"""Rendered opacity from which a pixel counts as covered."""
FB_TOLERANCE_PX = 1.0
"""Forward-backward flow disagreement (pixels) above which a pixel's flow is not trusted."""
OCCLUDER_DEPTH_RATIO = 0.9
"""A moving Gaussian hidden at its flow target (the flow's round trip fails there) keeps its
camera z where the prior's depth there is nearer than this share of its own: the occluder's."""
_DEPTH_RATIO_RANGE = (0.5, 2.0)  # a prior depth change outside this is a boundary, not motion
_NEIGHBOURS = 4
_CANDIDATES = 16  # nearest known points among which `spread_displacement` picks _NEIGHBOURS


def nearest_pixel(xy_n2: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixel each point lands in, clipped to the image."""
    cols = np.clip(np.rint(xy_n2[:, 0]), 0, width - 1).astype(np.int64)
    rows = np.clip(np.rint(xy_n2[:, 1]), 0, height - 1).astype(np.int64)
    return rows, cols


def inside_image(xy_n2: np.ndarray, height: int, width: int) -> np.ndarray:
    return (
        (xy_n2[:, 0] >= -0.5)
        & (xy_n2[:, 0] < width - 0.5)
        & (xy_n2[:, 1] >= -0.5)
        & (xy_n2[:, 1] < height - 0.5)
    )


def flow_round_trip(
    flow_hw2: np.ndarray,
    back_hw2: np.ndarray,
    xy_n2: np.ndarray,
    tolerance_px: float = FB_TOLERANCE_PX,
    usable_hw: np.ndarray | None = None,
    usable_back_hw: np.ndarray | None = None,
    extrapolate: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Points moved by `flow_hw2` (read bilinearly at them) and bool [N]: `back_hw2`, read where
    they land, brings them back within `tolerance_px` (where it does not, the point's pixel is
    hidden in the other frame, or the flow is wrong there). `usable_hw` / `usable_back_hw`
    (bool, optional): each flow read only from those pixels (`sample_bilinear`); with
    `extrapolate`, the move's read on `usable_hw`'s outline is first order
    (`sample_extrapolated`); the round trip's read stays bilinear."""
    if extrapolate and usable_hw is not None:
        moved_n2 = xy_n2 + sample_extrapolated(flow_hw2, xy_n2, usable_hw)
    else:
        moved_n2 = xy_n2 + sample_bilinear(flow_hw2, xy_n2, usable_hw)
    return moved_n2, comes_back(back_hw2, moved_n2, xy_n2, tolerance_px, usable_back_hw)


def comes_back(
    back_hw2: np.ndarray,
    moved_n2: np.ndarray,
    xy_n2: np.ndarray,
    tolerance_px: float = FB_TOLERANCE_PX,
    usable_hw: np.ndarray | None = None,
) -> np.ndarray:
    """Bool [N]: `back_hw2`, read bilinearly where the points were moved to (from the
    `usable_hw` pixels only, where given), brings each back within `tolerance_px` of where it
    started (the second half of `flow_round_trip`, for points moved by a flow read otherwise)."""
    returned_n2 = moved_n2 + sample_bilinear(back_hw2, moved_n2, usable_hw)
    return np.linalg.norm(returned_n2 - xy_n2, axis=1) <= tolerance_px


def visible_n(
    xy_n2: np.ndarray, z_n: np.ndarray, depth_hw: np.ndarray, alpha_hw: np.ndarray
) -> np.ndarray:
    """Bool [N]: centres in the image, in front, and not behind the rendered surface."""
    height, width = depth_hw.shape
    rows, cols = nearest_pixel(xy_n2, height, width)
    return (
        inside_image(xy_n2, height, width)
        & (z_n > 0)
        & (alpha_hw[rows, cols] >= COVERED_ALPHA)
        & (z_n <= depth_hw[rows, cols] * (1.0 + VISIBLE_DEPTH_TOLERANCE))
    )


def lift_moving(
    xy_prev_n2: np.ndarray,
    z_prev_n: np.ndarray,
    still_z_n: np.ndarray,
    target_n2: np.ndarray,
    prior_depth_prev_hw: np.ndarray,
    prior_depth_next_hw: np.ndarray,
    trusted_prev_hw: np.ndarray,
    trusted_next_hw: np.ndarray,
    K_33: np.ndarray,
    c2w_next_44: np.ndarray,
    hidden_next_n: np.ndarray | None = None,
) -> np.ndarray:
    """New world centres of visible moving Gaussians: pixel moved by flow, camera z scaled by the
    prior's depth change there (z_prev_n: in the previous camera).

    Where the target leaves the image, the change lies beyond `_DEPTH_RATIO_RANGE` (the flow
    crossed onto another surface) or `hidden_next_n` says the point is hidden at its target
    behind a nearer surface (`OCCLUDER_DEPTH_RATIO`: the prior's depth there is the occluder's;
    following it would carry the Gaussian onto the occluder, and with it from then on) the
    camera z is kept. Where either prior depth is not trusted
    (trusted_*_hw: `FitPriors.depth_measured_hw` under `moving_depth_from_filled_prior=false`;
    a moving object's depth filled in from its surroundings would carry it to the depth of
    whatever lies behind it) the z is still_z_n: the unmoved centre's z in the next camera, so
    the camera's own motion still counts."""
    height, width = prior_depth_prev_hw.shape
    rows0, cols0 = nearest_pixel(xy_prev_n2, height, width)
    rows1, cols1 = nearest_pixel(target_n2, height, width)
    before = prior_depth_prev_hw[rows0, cols0].astype(np.float64)
    after = prior_depth_next_hw[rows1, cols1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(before > 0, after / before, 1.0)
    usable = (
        inside_image(target_n2, height, width)
        & np.isfinite(ratio)
        & (ratio >= _DEPTH_RATIO_RANGE[0])
        & (ratio <= _DEPTH_RATIO_RANGE[1])
    )
    if hidden_next_n is not None:
        usable &= ~(hidden_next_n & (ratio < OCCLUDER_DEPTH_RATIO))
    z_next = z_prev_n * np.where(usable, ratio, 1.0)
    trusted = trusted_prev_hw[rows0, cols0] & trusted_next_hw[rows1, cols1]
    z_next = np.where(trusted | (still_z_n <= 0), z_next, still_z_n)
    return backproject_p3(K_33, c2w_next_44, target_n2.astype(np.float64), z_next)


def spread_displacement(
    known_n3: np.ndarray,
    displacement_n3: np.ndarray,
    unknown_m3: np.ndarray,
    known_z_n: np.ndarray | None = None,
    unknown_z_m: np.ndarray | None = None,
) -> np.ndarray:
    """Displacement [M, 3] of each unknown point: the mean of its nearest known points'.

    Given camera z of both (`known_z_n`, `unknown_z_m`), known points nearer the camera than
    `OCCLUDER_DEPTH_RATIO` of the unknown one's z are left out where others remain among its
    `_CANDIDATES` nearest: a moving point no pixel sees is mostly hidden by what lies in front of
    it, and that occluder's motion is not its own."""
    if len(unknown_m3) == 0 or len(known_n3) == 0:
        return np.zeros_like(unknown_m3)
    k = min(_NEIGHBOURS if known_z_n is None else _CANDIDATES, len(known_n3))
    _, index_mk = cKDTree(known_n3).query(unknown_m3, k=k)
    index_mk = index_mk.reshape(len(unknown_m3), k)
    if known_z_n is None or unknown_z_m is None:
        return displacement_n3[index_mk].mean(axis=1)
    behind_mk = known_z_n[index_mk] >= OCCLUDER_DEPTH_RATIO * unknown_z_m[:, None]
    # Rank candidates: those not in front first, each group by distance; keep the first few.
    rank_mk = np.argsort(~behind_mk, axis=1, kind="stable")[:, : min(_NEIGHBOURS, k)]
    chosen_mk = np.take_along_axis(index_mk, rank_mk, axis=1)
    return displacement_n3[chosen_mk].mean(axis=1)


def flow_on_own_side(
    flow_hw2: np.ndarray, xy_n2: np.ndarray, moving_n: np.ndarray, moving_hw: np.ndarray
) -> np.ndarray:
    """Flow [N, 2] at sub-pixel points, each read from its own side of the moving mask (its
    current label), so Gaussians at a motion boundary take their own motion."""
    flow_n2 = np.empty((len(xy_n2), 2), np.float64)
    flow_n2[moving_n] = sample_bilinear(flow_hw2, xy_n2[moving_n], moving_hw)
    flow_n2[~moving_n] = sample_bilinear(flow_hw2, xy_n2[~moving_n], ~moving_hw)
    return flow_n2


def mask_score_n(
    moving_prev_hw: np.ndarray,
    moving_next_hw: np.ndarray,
    xy_prev_n2: np.ndarray,
    target_n2: np.ndarray,
) -> np.ndarray:
    """Mask prior of each point: mean of its score in the previous frame and where the flow puts
    it in the next (the previous score alone when that is outside the image)."""
    height, width = moving_prev_hw.shape
    rows0, cols0 = nearest_pixel(xy_prev_n2, height, width)
    rows1, cols1 = nearest_pixel(target_n2, height, width)
    before = moving_prev_hw[rows0, cols0]
    after = np.where(inside_image(target_n2, height, width), moving_next_hw[rows1, cols1], before)
    return 0.5 * (before + after)


@dataclass
class MotionUpdate:
    """The previous frame's Gaussians relabelled and moved to the next frame (N Gaussians)."""

    means_n3: np.ndarray  # float64 [N, 3] centres in the next frame
    moving_n: np.ndarray  # bool [N] labels (unseen Gaussians keep theirs)
    seen_moving_n: np.ndarray  # bool [N] moving and seen in the previous frame
    target_m2: np.ndarray  # float64 [M, 2] flow targets of those M, pixels of the next frame


def split_and_move(
    means_n3: np.ndarray,
    moving_n: np.ndarray,
    priors: FitPriors,
    t: int,
    *,
    c2w_prev_44: np.ndarray,
    c2w_next_44: np.ndarray,
    depth_prev_hw: np.ndarray,
    alpha_prev_hw: np.ndarray,
    prior_depth_prev_hw: np.ndarray,
    prior_depth_next_hw: np.ndarray,
    trusted_prev_hw: np.ndarray,
    trusted_next_hw: np.ndarray,
    cfg: FitConfig,
    mask_keeps: float = math.inf,
) -> MotionUpdate:
    """Relabels the Gaussians seen in frame t-1 still/moving (2-means on residual motion, the
    priors' mask scores as prior) and moves the moving ones to frame t: seen ones by the flow and
    the depth prior, unseen ones by their neighbours; with `cfg.moving_behind_occluders`, neither
    by an occluder's depth or motion (`lift_moving`'s `hidden_next_n`, `spread_displacement`'s
    camera z).

    depth_prev_hw / alpha_prev_hw: the model rendered at frame t-1; prior_depth_*_hw: the depth
    priors of frames t-1 and t at the model's scale; trusted_*_hw: where their change may be
    followed (see `lift_moving`); mask_keeps: as `cluster.split_moving` (the engine passes
    `cluster_mask_keeps` where the cameras are kept from the priors' poses)."""
    K_33 = np.asarray(priors.K_33, np.float64)
    flow_fwd_hw2 = priors.flow_fwd_t1hw2[t - 1]
    moving_prev_hw = np.asarray(priors.moving_thw[t - 1], np.float32)
    moving_next_hw = np.asarray(priors.moving_thw[t], np.float32)
    mask_threshold = cfg.mask_threshold
    xy_prev_n2, z_prev_n = project_p2(K_33, c2w_prev_44, means_n3)
    seen_n = visible_n(xy_prev_n2, z_prev_n, depth_prev_hw, alpha_prev_hw)
    target_s2 = xy_prev_n2[seen_n] + flow_on_own_side(
        flow_fwd_hw2, xy_prev_n2[seen_n], moving_n[seen_n], moving_prev_hw >= mask_threshold
    )
    still_xy_s2, still_z_s = project_p2(K_33, c2w_next_44, means_n3[seen_n])
    moving_n = moving_n.copy()
    moving_n[seen_n] = split_moving(
        np.linalg.norm(target_s2 - still_xy_s2, axis=1),
        mask_score_n(moving_prev_hw, moving_next_hw, xy_prev_n2[seen_n], target_s2),
        mask_threshold,
        cfg.cluster_min_motion_px,
        mask_keeps,
    )
    seen_moving_n = seen_n & moving_n
    target_m2 = target_s2[moving_n[seen_n]]
    hidden_next_m = None
    behind_occluders = cfg.moving_behind_occluders
    if behind_occluders and priors.flow_bwd_t1hw2 is not None:
        hidden_next_m = ~comes_back(
            priors.flow_bwd_t1hw2[t - 1], target_m2, xy_prev_n2[seen_moving_n]
        )
    lifted_m3 = lift_moving(
        xy_prev_n2[seen_moving_n],
        z_prev_n[seen_moving_n],
        still_z_s[moving_n[seen_n]],
        target_m2,
        prior_depth_prev_hw,
        prior_depth_next_hw,
        trusted_prev_hw,
        trusted_next_hw,
        K_33,
        c2w_next_44,
        hidden_next_m,
    )
    hidden_moving_n = moving_n & ~seen_n
    new_means_n3 = means_n3.copy()
    new_means_n3[seen_moving_n] = lifted_m3
    new_means_n3[hidden_moving_n] += spread_displacement(
        means_n3[seen_moving_n],
        lifted_m3 - means_n3[seen_moving_n],
        means_n3[hidden_moving_n],
        z_prev_n[seen_moving_n] if behind_occluders else None,
        z_prev_n[hidden_moving_n] if behind_occluders else None,
    )
    return MotionUpdate(new_means_n3, moving_n, seen_moving_n, target_m2)
