"""Per-pixel maps read at sub-pixel points: the one bilinear sampler every stage shares (flow
warping and consistency, the fit's flow targets and tracks, the naive tracker)."""

from __future__ import annotations

import numpy as np


def sample_bilinear(
    map_hwc: np.ndarray, xy_n2: np.ndarray, usable_hw: np.ndarray | None = None
) -> np.ndarray:
    """Bilinear samples [N, C] of a [H, W, C] map at sub-pixel points (clamped at the border).

    usable_hw: optional bool mask; corners outside it get no weight (so a sample near a motion
    boundary reads only its own side), and a point with no usable corner falls back to plain
    bilinear. The corners are gathered by flat index with `np.take` (the same values as
    `map_hwc[rows, cols]`, about 15x faster for 10^5 points at 854x480)."""
    height, width = map_hwc.shape[:2]
    x0, y0, flat_4n = _corners(xy_n2, height, width)
    fx = np.clip(xy_n2[:, 0], 0, width - 1) - x0
    fy = np.clip(xy_n2[:, 1], 0, height - 1) - y0
    weights_4n = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    if usable_hw is not None:
        masked_4n = weights_4n * np.take(usable_hw.reshape(-1), flat_4n)
        total_n = masked_4n.sum(axis=0)
        weights_4n = np.where(total_n > 0, masked_4n / np.maximum(total_n, 1e-12), weights_4n)
    values_4nc = np.take(map_hwc.reshape(height * width, -1), flat_4n, axis=0)
    return np.einsum("kn,knc->nc", weights_4n, values_4nc)


def _corners(
    xy_n2: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x0 [N], y0 [N], flat indices [4, N]) of each point's four bilinear corners, top-left,
    top-right, bottom-left, bottom-right, the points clamped to the image (at least 2x2)."""
    x0 = np.minimum(np.floor(np.clip(xy_n2[:, 0], 0, width - 1)).astype(np.int64), width - 2)
    y0 = np.minimum(np.floor(np.clip(xy_n2[:, 1], 0, height - 1)).astype(np.int64), height - 2)
    top_left_n = y0 * width + x0
    flat_4n = np.stack([top_left_n, top_left_n + 1, top_left_n + width, top_left_n + width + 1])
    return x0, y0, flat_4n


EXTRAPOLATION_SIGMA_PX = 1.5  # Gaussian weight of the square's pixels by distance to the point
EXTRAPOLATION_MIN_PIXELS = 4  # usable pixels an affine fit needs (3 unknowns, one spare)
EXTRAPOLATION_MAX_CONDITION = 1e4  # a worse-conditioned fit (a line of pixels) is not trusted


def sample_extrapolated(
    map_hwc: np.ndarray, xy_n2: np.ndarray, usable_hw: np.ndarray
) -> np.ndarray:
    """Samples [N, C] of a [H, W, C] map read from its `usable_hw` pixels only, first order.

    Where a point's four bilinear corners are partly usable (it lies on the mask's outline),
    `sample_bilinear` gives the usable corners' values, read up to a pixel from the point. This
    fits an affine map to the usable pixels of the 4x4 square around the point (weighted by a
    Gaussian of their distance, `EXTRAPOLATION_SIGMA_PX`) and reads it at the point, so a
    gradient on the usable side (a turning object's flow at its outline) carries on to it.
    Points with all or none of their corners usable, and those whose square holds fewer than
    `EXTRAPOLATION_MIN_PIXELS` usable pixels or no well-conditioned fit, read as
    `sample_bilinear` does."""
    samples_nc = sample_bilinear(map_hwc, xy_n2, usable_hw)
    height, width = map_hwc.shape[:2]
    x0, y0, flat_4n = _corners(xy_n2, height, width)
    corners_usable_4n = np.take(usable_hw.reshape(-1), flat_4n)
    on_outline_n = corners_usable_4n.any(axis=0) & ~corners_usable_4n.all(axis=0)
    if not on_outline_n.any():
        return samples_nc
    rows = np.flatnonzero(on_outline_n)
    square_dy_k, square_dx_k = np.divmod(np.arange(16), 4)  # the 4x4 square, x0 - 1 .. x0 + 2
    cols_rk = x0[rows, None] + square_dx_k - 1
    rows_rk = y0[rows, None] + square_dy_k - 1
    in_image_rk = (cols_rk >= 0) & (cols_rk < width) & (rows_rk >= 0) & (rows_rk < height)
    cols_rk, rows_rk = np.clip(cols_rk, 0, width - 1), np.clip(rows_rk, 0, height - 1)
    dx_rk = cols_rk - xy_n2[rows, 0:1]
    dy_rk = rows_rk - xy_n2[rows, 1:2]
    weight_rk = (in_image_rk & usable_hw[rows_rk, cols_rk]) * np.exp(
        -(dx_rk**2 + dy_rk**2) / (2 * EXTRAPOLATION_SIGMA_PX**2)
    )
    design_rk3 = np.stack([np.ones_like(dx_rk), dx_rk, dy_rk], axis=-1)
    normal_r33 = np.einsum("rk,rki,rkj->rij", weight_rk, design_rk3, design_rk3)
    values_rkc = map_hwc[rows_rk, cols_rk].astype(np.float64)
    right_r3c = np.einsum("rk,rki,rkc->ric", weight_rk, design_rk3, values_rkc)
    enough_r = (weight_rk > 0).sum(axis=1) >= EXTRAPOLATION_MIN_PIXELS
    with np.errstate(divide="ignore", invalid="ignore"):  # a singular matrix's condition: inf
        # The normal matrix's condition is the design's squared.
        enough_r &= np.linalg.cond(normal_r33) <= EXTRAPOLATION_MAX_CONDITION**2
    if enough_r.any():
        solved_r3c = np.linalg.solve(normal_r33[enough_r], right_r3c[enough_r])
        samples_nc[rows[enough_r]] = solved_r3c[:, 0]
    return samples_nc
