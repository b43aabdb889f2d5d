"""Quality figures of a depth result, so a user can tell whether the depth is usable.

Three figures (DESIGN.md, failure cases 1, 4 and 7):
- the share of non-positive or non-finite depths a backend produced before repair;
- temporal scale drift: the median depth ratio of consecutive frames on static pixels (1.0 is no
  drift), following the flow when it is known so camera motion does not count as drift;
- a periodic artefact score: spectral energy of the depth gradient magnitude at the subsample
  period and its harmonics, relative to the spectrum around it (about 1 clean, large for blocks).
  Only the mast3r backend has a subsample (anchor) grid; offline depth has no such period, so
  there the score is not computed (None).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError

ARTEFACT_LIMIT = 3.0  # a score above this means visible block or stripe patterns


@dataclass
class DepthQuality:
    """Figures that say whether a depth result can be trusted (see the module docstring)."""

    nonpositive_share: float  # share of depths <= 0 or non-finite before repair (0 is clean)
    scale_ratio_t: np.ndarray  # float64 [T-1] median depth ratio frame t+1 / frame t (static)
    scale_drift: float  # max |ratio - 1| over consecutive frames (0 is no drift); NaN for T=1
    # Worst frame's artefact score at the subsample period (about 1 clean); None for the offline
    # backend, which has no anchor grid to make one.
    periodic_artefact: float | None
    artefact_period_px: float | None  # the period that score looked at, in output pixels
    prior_share: float  # share of frames whose depth is the smooth prior (no parallax)


def bad_depth_mask(depth: np.ndarray) -> np.ndarray:
    """True where a depth is non-finite or not positive."""
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(depth) & (depth > 0))


def nonpositive_share(depth: np.ndarray) -> float:
    """Share of depths that are non-finite or <= 0 (0.0 for an empty array)."""
    return float(bad_depth_mask(depth).mean()) if depth.size else 0.0


def warp_to_source(depth_b_hw: np.ndarray, flow_ab_hw2: np.ndarray) -> np.ndarray:
    """depth_b sampled where each pixel of frame a lands in frame b (NaN outside the frame)."""
    height, width = depth_b_hw.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(
        depth_b_hw.astype(np.float32),
        xs + flow_ab_hw2[..., 0].astype(np.float32),
        ys + flow_ab_hw2[..., 1].astype(np.float32),
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=float("nan"),
    )


def scale_ratios(
    depth_thw: np.ndarray,
    static_thw: np.ndarray | None = None,
    flow_fwd_t1hw2: np.ndarray | None = None,
) -> np.ndarray:
    """Median of depth[t+1] / depth[t] over static pixels with valid depth, per consecutive pair.

    With forward flow, frame t+1 is sampled where each pixel went (the same surface point);
    without it, at the same pixel. A pair with no usable pixel gives NaN.
    """
    n_frames = depth_thw.shape[0]
    ratios = np.full(max(n_frames - 1, 0), np.nan)
    for t in range(n_frames - 1):
        nxt = depth_thw[t + 1]
        if flow_fwd_t1hw2 is not None:
            nxt = warp_to_source(nxt, flow_fwd_t1hw2[t])
        ok = ~bad_depth_mask(depth_thw[t]) & ~bad_depth_mask(nxt)
        if static_thw is not None:
            ok &= static_thw[t]
        if ok.any():
            ratios[t] = float(np.median(nxt[ok] / depth_thw[t][ok]))
    return ratios


def scale_drift(ratio_t: np.ndarray) -> float:
    """Largest |ratio - 1| over the pairs with a ratio; NaN when there is none."""
    finite = ratio_t[np.isfinite(ratio_t)]
    return float(np.max(np.abs(finite - 1.0))) if finite.size else float("nan")


def _axis_score(grad_hw: np.ndarray, period: float) -> float:
    """Peak-to-background power of a gradient magnitude along axis 1 at multiples of 1/period."""
    n = grad_hw.shape[1]
    if n < 4 * period or period < 2:
        return 1.0  # too few periods to see a pattern
    rows = grad_hw - grad_hw.mean(axis=1, keepdims=True)
    power = np.mean(np.abs(np.fft.rfft(rows, axis=1)) ** 2, axis=0)
    score = 1.0
    for harmonic in range(1, int(period // 2) + 1):
        centre = harmonic * n / period
        peak = min(int(round(centre)), len(power) - 1)  # period 2 peaks at the last bin
        # Background: the spectrum within a band around the peak, away from the peak itself.
        half = max(4, int(0.25 * n / period))
        lo, hi = max(1, peak - half), min(len(power), peak + half + 1)
        band = np.concatenate([power[lo : max(lo, peak - 2)], power[peak + 3 : hi]])
        background = float(np.median(band)) if band.size else 0.0
        peak_power = float(power[max(1, peak - 1) : peak + 2].max())
        if background > 0:
            score = max(score, peak_power / background)
        elif peak_power > 0:
            return float("inf")
    return score


def periodic_artefact_score(depth_hw: np.ndarray, period_px: float) -> float:
    """How strongly the map repeats with `period_px` (the subsample period) along rows or columns.

    Uses the power spectrum of |log-depth gradient| averaged over lines: a step edge or noise has
    a flat spectrum, while block boundaries every `period_px` pixels (jumps of any sign) form an
    impulse train that puts narrow peaks at multiples of 1/period.
    The score is the highest peak over the median power of the band around it: about 1 when
    there is no pattern (rarely above 2), often above 10 for nearest-neighbour blocks.
    Non-positive or non-finite depths are replaced by the median first.
    """
    if depth_hw.ndim != 2:
        raise InvalidArgumentError("depth_hw", f"expected [H, W], got shape {depth_hw.shape}")
    depth = np.asarray(depth_hw, np.float64)
    bad = bad_depth_mask(depth)
    if bad.all():
        return 1.0
    log_depth = np.log(np.where(bad, np.median(depth[~bad]), depth))
    gx = np.abs(np.diff(log_depth, axis=1))
    gy = np.abs(np.diff(log_depth, axis=0))
    return max(_axis_score(gx, period_px), _axis_score(gy.T, period_px))
