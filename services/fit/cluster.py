"""Still/moving split of the Gaussians: 2-means on their motion, with the segment masks as prior.

The feature is each visible Gaussian's residual motion: the distance (pixels) between where the
optical flow moves its pixel and where the new camera alone would move its centre. Still points
have a residual near 0. Two centres (still, moving) start from the mask split; each assignment
adds the mask score as a prior: a score of 1 moves the boundary from the midpoint between the
centres a quarter of the gap towards the still centre, a score of 0 as far towards the moving
one. When the centres stay closer than `cluster_min_motion_px` the motion says nothing and the
masks alone decide. Where asked (`mask_keeps`), a Gaussian whose mask score is high enough stays
moving whatever the motion says.
"""

from __future__ import annotations

import math

import numpy as np

_ITERATIONS = 20
_MASK_PRIOR_WEIGHT = 0.5  # a mask score of 1 (0) moves the decision boundary a quarter of the gap


def split_moving(
    residual_n: np.ndarray,
    mask_score_n: np.ndarray,
    mask_threshold: float,
    min_motion_px: float,
    mask_keeps: float = math.inf,
) -> np.ndarray:
    """Bool [N]: which Gaussians are moving. residual_n in pixels, mask_score_n in [0, 1];
    a score at or above `mask_keeps` is moving whatever the motion says."""
    return _split_by_motion(residual_n, mask_score_n, mask_threshold, min_motion_px) | (
        np.asarray(mask_score_n) >= mask_keeps
    )


def _split_by_motion(
    residual_n: np.ndarray, mask_score_n: np.ndarray, mask_threshold: float, min_motion_px: float
) -> np.ndarray:
    residual_n = np.asarray(residual_n, np.float64)
    mask_score_n = np.asarray(mask_score_n, np.float64)
    by_mask_n = mask_score_n >= mask_threshold
    if len(residual_n) == 0:
        return by_mask_n
    still_c = _centre(residual_n[~by_mask_n], default=float(residual_n.min()))
    moving_c = _centre(residual_n[by_mask_n], default=float(residual_n.max()))
    moving_n = by_mask_n
    for _ in range(_ITERATIONS):
        gap = moving_c - still_c
        if gap < min_motion_px:
            return by_mask_n
        # ((r - still)^2 - (r - moving)^2) / gap^2 = (2r - still - moving) / gap, plus the prior.
        evidence_n = (2.0 * residual_n - still_c - moving_c) / gap + _MASK_PRIOR_WEIGHT * (
            2.0 * mask_score_n - 1.0
        )
        assigned_n = evidence_n > 0
        still_c = _centre(residual_n[~assigned_n], default=still_c)
        moving_c = _centre(residual_n[assigned_n], default=moving_c)
        converged = np.array_equal(assigned_n, moving_n)
        moving_n = assigned_n
        if converged:
            break
    return moving_n if moving_c - still_c >= min_motion_px else by_mask_n


def _centre(values: np.ndarray, default: float) -> float:
    return float(values.mean()) if len(values) else default
