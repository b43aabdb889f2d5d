"""Pixel-wise densification (new content and error regions) and pruning of faint Gaussians.

GFlow grows the scene per pixel rather than by splitting Gaussians: a pixel that nothing covers
(content entering the view or uncovered by motion) or whose rendered colour is far off gets a new
Gaussian lifted from the depth prior. Pixels are drawn with probability growing with their error,
uncovered pixels first.
"""

from __future__ import annotations

import numpy as np
import torch

from services.fit.config import FitConfig
from services.fit.gaussians import Gaussians


def densify_probability_hw(
    error_hw: np.ndarray, alpha_hw: np.ndarray, depth_valid_hw: np.ndarray, cfg: FitConfig
) -> np.ndarray:
    """Where to add Gaussians, as unnormalised probabilities (0 = not a candidate).

    error_hw: mean absolute RGB error per pixel in [0, 1]; alpha_hw: rendered opacity.
    """
    uncovered_hw = alpha_hw < cfg.densify_alpha
    wrong_hw = error_hw > cfg.densify_error
    candidate_hw = (uncovered_hw | wrong_hw) & depth_valid_hw
    weight_hw = error_hw + uncovered_hw.astype(np.float64)
    return np.where(candidate_hw, np.maximum(weight_hw, 1e-6), 0.0)


def densify_budget(n_alive: int, cfg: FitConfig) -> int:
    """How many Gaussians one pass may add."""
    return max(0, min(cfg.densify_max, cfg.max_points - n_alive))


def prune_keep_n(gaussians: Gaussians, cfg: FitConfig) -> torch.Tensor:
    """Bool [N]: the Gaussians to keep (opaque enough and finite)."""
    with torch.no_grad():
        finite_n = torch.isfinite(gaussians.means_n3).all(dim=-1)
        finite_n &= torch.isfinite(gaussians.log_scales_n3).all(dim=-1)
        return finite_n & (gaussians.opacities_n >= cfg.prune_opacity)
