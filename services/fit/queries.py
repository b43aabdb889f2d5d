"""Track queries: rows (t, y, x) of the pixels a fit follows, and the grid it follows when a run
names none. Apart from the tracker (tracks.py) so the pipeline can name queries without loading
the fit."""

from __future__ import annotations

import numpy as np

DEFAULT_TRACK_GRID = 16  # n x n frame-0 points tracked when a run names no queries


def grid_queries_q3(height: int, width: int, n: int) -> np.ndarray:
    """An n x n grid of query rows (t, y, x) on frame 0 at the centres of equal cells: float32
    [n * n, 3]; n = 0 gives no queries."""
    ys = (np.arange(n) + 0.5) * height / max(n, 1) - 0.5
    xs = (np.arange(n) + 0.5) * width / max(n, 1) - 0.5
    y_nn, x_nn = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([np.zeros(n * n), y_nn.ravel(), x_nn.ravel()], axis=1).astype(np.float32)
