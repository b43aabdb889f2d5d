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
    x = np.clip(xy_n2[:, 0], 0, width - 1)
    y = np.clip(xy_n2[:, 1], 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2)  # images are at least 2x2
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2)
    fx, fy = x - x0, y - y0
    top_left_n = y0 * width + x0
    flat_4n = np.stack([top_left_n, top_left_n + 1, top_left_n + width, top_left_n + width + 1])
    weights_4n = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])
    if usable_hw is not None:
        masked_4n = weights_4n * np.take(usable_hw.reshape(-1), flat_4n)
        total_n = masked_4n.sum(axis=0)
        weights_4n = np.where(total_n > 0, masked_4n / np.maximum(total_n, 1e-12), weights_4n)
    values_4nc = np.take(map_hwc.reshape(height * width, -1), flat_4n, axis=0)
    return np.einsum("kn,knc->nc", weights_4n, values_4nc)
