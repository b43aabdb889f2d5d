"""Moving-mask scores widened by a margin: estimated masks miss an object's rim where the flow
smears, and the fit then holds the rim's Gaussians still (docs/fit.md, "A margin around the
moving masks")."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import grey_dilation


def widened_scores_thw(scores_thw: np.ndarray, pixels: int) -> np.ndarray:
    """Float32 [T, H, W]: each pixel's score raised to the highest within `pixels` of it in its
    frame (a square window), so every mask the scores make is `pixels` wider on each side; 0
    returns the scores as they are."""
    if pixels == 0:
        return scores_thw
    size = (1, 2 * pixels + 1, 2 * pixels + 1)
    return grey_dilation(np.asarray(scores_thw, np.float32), size=size)
