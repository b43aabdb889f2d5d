"""Prior-driven placement of new Gaussians: pixels lifted to 3D by the depth prior.

The first frame samples pixels more densely where the image has texture (gradient magnitude),
mixed with a uniform share so flat regions are covered too; densification reuses the same lifting
for the pixels it picks. A new Gaussian is a sphere about as wide as the gap to its neighbours.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree

from services.common.geometry import backproject_p3
from services.fit.config import FitConfig
from services.fit.gaussians import Gaussians
from services.fit.priors import FitPriors

_SIGMA_PX_RANGE = (0.5, 4.0)  # footprint of a new Gaussian on screen, pixels (standard deviation)
_NEIGHBOURS = 3
# A k-th neighbour beyond this (pixels) makes the gap over 2 * _SIGMA_PX_RANGE[1]: clipped
_GAP_SEARCH_PX = _NEIGHBOURS * 2 * _SIGMA_PX_RANGE[1]


def texture_probability_hw(frame_hw3: np.ndarray, texture_share: float) -> np.ndarray:
    """Sampling probability per pixel: `texture_share` by gradient magnitude, the rest uniform."""
    gray = cv2.cvtColor(frame_hw3, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    gradient_hw = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    uniform_hw = np.full(gray.shape, 1.0 / gray.size)
    total = float(gradient_hw.sum())
    if total <= 0:
        return uniform_hw
    return (1.0 - texture_share) * uniform_hw + texture_share * gradient_hw / total


def sample_pixels(
    probability_hw: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to n distinct pixels drawn by probability: (rows, columns), in raster order.

    Only the candidates (probability > 0) go to `rng.choice`: its cumulative sums are the same
    at those pixels as over the whole image (adding a zero is exact), so it draws the same
    pixels, and each of its rounds sums a fraction of the image instead of all of it."""
    p = probability_hw.reshape(-1).astype(np.float64)
    candidates = np.flatnonzero(p)
    n = min(n, len(candidates))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    picked = rng.choice(len(candidates), size=n, replace=False, p=p[candidates] / p.sum())
    return np.divmod(candidates[np.sort(picked)], probability_hw.shape[1])


def gaussians_at_pixels(
    rows: np.ndarray,
    cols: np.ndarray,
    frame_hw3: np.ndarray,
    depth_hw: np.ndarray,
    moving_hw: np.ndarray,
    K_33: np.ndarray,
    c2w_44: np.ndarray,
    first_id: int,
    opacity: float,
    device: torch.device,
    others_xy_m2: np.ndarray | None = None,
) -> Gaussians:
    """One Gaussian per pixel, at the pixel's prior depth, with its colour and moving flag.

    others_xy_m2: on-screen centres of Gaussians already there, so a Gaussian added into a
    covered area is sized by its gap to them rather than to the other new ones."""
    xy_p2 = np.stack([cols, rows], axis=1).astype(np.float64)
    z_p = depth_hw[rows, cols].astype(np.float64)
    means_p3 = backproject_p3(K_33, c2w_44, xy_p2, z_p)
    sigma_px = neighbour_gap_px(xy_p2, others_xy_m2) * 0.5
    scales_p = np.clip(sigma_px, *_SIGMA_PX_RANGE) * z_p / K_33[0, 0]

    def t(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    return Gaussians.create(
        means_n3=t(means_p3),
        scales_n3=t(np.repeat(scales_p[:, None], 3, axis=1)),
        colors_n3=t(frame_hw3[rows, cols] / 255.0),
        opacity=opacity,
        moving_n=t(moving_hw[rows, cols], torch.bool),
        ids_n=torch.arange(first_id, first_id + len(rows), dtype=torch.int64, device=device),
    )


class PixelSeeder:
    """New Gaussians at chosen pixels of the clip's frames, numbered on from `next_id`: what the
    first frame's initialisation and every densification pass add to the model."""

    def __init__(self, priors: FitPriors, cfg: FitConfig, device: torch.device, next_id: int = 0):
        self.priors, self.cfg, self.device, self.next_id = priors, cfg, device, next_id
        self.K_33 = np.asarray(priors.K_33, np.float64)
        self.moving_thw = np.asarray(priors.moving_thw, np.float32)

    def first_frame(self, c2w_44: np.ndarray, rng: np.random.Generator) -> Gaussians:
        """`init_points` Gaussians on frame 0 (pose `c2w_44`), drawn by `texture_probability_hw`
        among the pixels with a known depth prior."""
        probability_hw = texture_probability_hw(self.priors.frames_thw3[0], self.cfg.texture_share)
        probability_hw = probability_hw * (self.priors.depth_thw[0] > 0)
        rows, cols = sample_pixels(probability_hw, self.cfg.init_points, rng)
        return self.at_pixels(rows, cols, 0, c2w_44, depth_scale=1.0)

    def at_pixels(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        t: int,
        c2w_44: np.ndarray,
        depth_scale: float,
        others_xy_m2: np.ndarray | None = None,
    ) -> Gaussians:
        """`gaussians_at_pixels` on frame t, its depth prior times `depth_scale`."""
        added = gaussians_at_pixels(
            rows,
            cols,
            self.priors.frames_thw3[t],
            self.priors.depth_thw[t] * depth_scale,
            self.moving_thw[t] >= self.cfg.mask_threshold,
            self.K_33,
            c2w_44,
            self.next_id,
            self.cfg.init_opacity,
            self.device,
            others_xy_m2,
        )
        self.next_id += len(added)
        return added


def neighbour_gap_px(xy_p2: np.ndarray, others_xy_m2: np.ndarray | None) -> np.ndarray:
    """Mean distance to the nearest few other points, new or existing (pixels); 1 if none.

    Only what the footprint uses is exact: new Gaussians get half the gap, clipped to
    `_SIGMA_PX_RANGE`, so any gap above 8 px gives the same one. Existing points farther than
    `_GAP_SEARCH_PX` (24 px) from every new point are left out of the search: a gap up to 8 px
    has all its neighbours within 24 px and is exact; a larger one stays above 8 px (inf where
    no point is near), so every footprint equals a search over all points, and a pass adding a
    few thousand Gaussians among 10^5 drawn ones builds its tree over far fewer."""
    n_pool = len(xy_p2) + (0 if others_xy_m2 is None else len(others_xy_m2))
    if len(xy_p2) == 0 or n_pool <= 1:
        return np.ones(len(xy_p2))
    k = min(_NEIGHBOURS, n_pool - 1)
    pool_q2 = xy_p2
    if others_xy_m2 is not None:
        near_m = _near_any(others_xy_m2, xy_p2, _GAP_SEARCH_PX)
        pool_q2 = np.concatenate([xy_p2, others_xy_m2[near_m]])
    # An unbalanced tree builds about 40 % faster here and finds the same nearest distances.
    tree = cKDTree(pool_q2, balanced_tree=False, compact_nodes=False)
    distances, _ = tree.query(xy_p2, k=k + 1)  # inf where the pool has fewer points
    return distances[:, 1:].mean(axis=1)


def _near_any(points_m2: np.ndarray, centres_p2: np.ndarray, radius: float) -> np.ndarray:
    """Bool [M]: a superset of the points within `radius` of some centre: those in a square cell
    (side a pixel over `radius`) next to or at a centre's cell."""
    side = radius + 1.0
    centre_cells_p2 = np.floor(centres_p2 / side).astype(np.int64)
    low_2 = centre_cells_p2.min(axis=0) - 1
    cols_p, rows_p = (centre_cells_p2 - low_2).T
    grid_rc = np.zeros((rows_p.max() + 2, cols_p.max() + 2), bool)
    for d_row in (-1, 0, 1):
        for d_col in (-1, 0, 1):
            grid_rc[rows_p + d_row, cols_p + d_col] = True
    cols_m, rows_m = (np.floor(points_m2 / side) - low_2).T
    n_rows, n_cols = grid_rc.shape
    inside_m = (cols_m >= 0) & (cols_m < n_cols) & (rows_m >= 0) & (rows_m < n_rows)
    flat_m = np.where(inside_m, rows_m * n_cols + cols_m, 0).astype(np.int64)
    return inside_m & np.take(grid_rc.reshape(-1), flat_m)
