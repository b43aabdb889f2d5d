"""Pixel-wise densification (new content and error regions) and pruning of faint Gaussians.

GFlow grows the scene per pixel rather than by splitting Gaussians: a pixel that nothing covers
(content entering the view or uncovered by motion) or whose rendered colour is far off gets a new
Gaussian lifted from the depth prior. Pixels are drawn with probability growing with their error,
uncovered pixels first. `DensifyStrategy` says when a frame's optimisation does that, which
pixels it picks, and which Gaussians go at the frame's end (the role of gsplat's strategies).
"""

from __future__ import annotations

import numpy as np
import torch

from services.fit.config import FitConfig
from services.fit.gaussians import Gaussians
from services.fit.initialise import sample_pixels
from services.fit.render import RenderOutput


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


class DensifyStrategy:
    """When and where a frame's optimisation adds Gaussians, and which it prunes at the end."""

    def __init__(self, cfg: FitConfig):
        self.cfg = cfg

    def is_due(self, iteration: int, *, first_pass: bool) -> bool:
        """At iteration 0 when the frame asks for a first pass, then every `densify_every`."""
        every = self.cfg.densify_every
        return (iteration == 0 and first_pass) or (
            every > 0 and iteration > 0 and iteration % every == 0
        )

    def pick_pixels(
        self,
        out: RenderOutput,
        target_hw3: torch.Tensor,
        depth_valid_hw: np.ndarray,
        n_alive: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(rows, cols) of the pixels to seed from a render `out` of the model (no gradients) and
        the frame it should match, the screen centres [M, 2] of the Gaussians already drawn (new
        ones are sized by their gap to those), and how many pixels `max_points` held back."""
        error_hw = (out.rgb_hw3 - target_hw3).abs().mean(dim=-1).cpu().numpy()
        probability_hw = densify_probability_hw(
            error_hw, out.alpha_hw.cpu().numpy(), depth_valid_hw, self.cfg
        )
        budget = densify_budget(n_alive, self.cfg)
        wanted = min(self.cfg.densify_max, int(np.count_nonzero(probability_hw)))
        rows, cols = sample_pixels(probability_hw, budget, rng)
        drawn_n = out.radii_n > 0
        others_xy_m2 = out.means2d_n2[drawn_n].cpu().numpy().astype(np.float64)
        return rows, cols, others_xy_m2, max(0, wanted - budget)

    def prune(self, gaussians: Gaussians) -> Gaussians:
        """The Gaussians that stay at the end of a frame."""
        return gaussians.subset(prune_keep_n(gaussians, self.cfg))
