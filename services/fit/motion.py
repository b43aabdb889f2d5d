"""What the previous frame's Gaussians do next: visibility, flow targets and the moving update.

GFlow moves the moving Gaussians before optimising a new frame: a visible moving Gaussian goes
where the optical flow takes its pixel, at the depth the depth prior gives there (its camera depth
scaled by the prior's depth change, so its offset from the surface is kept). A moving Gaussian
that no pixel sees takes the mean displacement of its nearest visible moving neighbours.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from services.evaluation.geometry import backproject_p3

VISIBLE_DEPTH_TOLERANCE = 0.05
"""A centre counts as seen when its camera z is within this share of the rendered depth."""
COVERED_ALPHA = 0.5
"""Rendered opacity from which a pixel counts as covered."""
FB_TOLERANCE_PX = 1.0
"""Forward-backward flow disagreement (pixels) above which a pixel's flow is not trusted."""
_DEPTH_RATIO_RANGE = (0.5, 2.0)  # a prior depth change outside this is a boundary, not motion
_NEIGHBOURS = 4


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


def sample_bilinear(
    map_hwc: np.ndarray, xy_n2: np.ndarray, usable_hw: np.ndarray | None = None
) -> np.ndarray:
    """Bilinear samples [N, C] of a [H, W, C] map at sub-pixel points (clamped at the border).

    usable_hw: optional bool mask; corners outside it get no weight (so a sample near a motion
    boundary reads only its own side), and a point with no usable corner falls back to plain
    bilinear."""
    height, width = map_hwc.shape[:2]
    x = np.clip(xy_n2[:, 0], 0, width - 1)
    y = np.clip(xy_n2[:, 1], 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2)  # images are at least 2x2
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2)
    fx, fy = x - x0, y - y0
    rows_4n = np.stack([y0, y0, y0 + 1, y0 + 1])
    cols_4n = np.stack([x0, x0 + 1, x0, x0 + 1])
    weights_4n = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    if usable_hw is not None:
        masked_4n = weights_4n * usable_hw[rows_4n, cols_4n]
        total_n = masked_4n.sum(axis=0)
        weights_4n = np.where(total_n > 0, masked_4n / np.maximum(total_n, 1e-12), weights_4n)
    return np.einsum("kn,knc->nc", weights_4n, map_hwc[rows_4n, cols_4n])


def lift_moving(
    xy_prev_n2: np.ndarray,
    z_prev_n: np.ndarray,
    target_n2: np.ndarray,
    prior_depth_prev_hw: np.ndarray,
    prior_depth_next_hw: np.ndarray,
    K_33: np.ndarray,
    c2w_next_44: np.ndarray,
) -> np.ndarray:
    """New world centres of visible moving Gaussians: pixel moved by flow, depth by the prior."""
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
    z_next = z_prev_n * np.where(usable, ratio, 1.0)
    return backproject_p3(K_33, c2w_next_44, target_n2.astype(np.float64), z_next)


def spread_displacement(
    known_n3: np.ndarray, displacement_n3: np.ndarray, unknown_m3: np.ndarray
) -> np.ndarray:
    """Displacement [M, 3] of each unknown point: the mean of its nearest known points'."""
    if len(unknown_m3) == 0 or len(known_n3) == 0:
        return np.zeros_like(unknown_m3)
    k = min(_NEIGHBOURS, len(known_n3))
    _, index = cKDTree(known_n3).query(unknown_m3, k=k)
    index = index.reshape(len(unknown_m3), k)
    return displacement_n3[index].mean(axis=1)
