"""Image figures the stages report about their own output: PSNR (the fit's reconstruction) and
mask IoU (the segment stage's frame-to-frame stability). The evaluation's metrics reuse them."""

from __future__ import annotations

import numpy as np

from services.common.errors import InvalidArgumentError


def check_same_shape(name: str, a: np.ndarray, b: np.ndarray) -> None:
    """Raises InvalidArgumentError naming `name` when `a` and its target `b` differ in shape."""
    if a.shape != b.shape:
        raise InvalidArgumentError(name, f"shape {a.shape} differs from the target's {b.shape}")


def psnr(
    pred: np.ndarray,
    target: np.ndarray,
    max_value: float = 255.0,
    mask_hw: np.ndarray | None = None,
) -> float:
    """Peak signal-to-noise ratio of one image [H, W] or [H, W, C], in dB.

    Only pixels where `mask_hw` is true count. Identical images give +inf; an empty mask gives NaN.
    """
    check_same_shape("pred", pred, target)
    err = (pred.astype(np.float64) - target.astype(np.float64)) ** 2
    if mask_hw is not None:
        err = err[mask_hw.astype(bool)]
    if err.size == 0:
        return float("nan")
    mse = float(err.mean())
    return float("inf") if mse == 0.0 else float(10.0 * np.log10(max_value**2 / mse))


def mask_j(pred_hw: np.ndarray, gt_hw: np.ndarray, void_hw: np.ndarray | None = None) -> float:
    """Region similarity J: intersection over union (void pixels ignored). Both empty: 1.0."""
    check_same_shape("pred_hw", pred_hw, gt_hw)
    keep = np.ones(gt_hw.shape, bool) if void_hw is None else ~void_hw.astype(bool)
    p, g = pred_hw.astype(bool) & keep, gt_hw.astype(bool) & keep
    union = int(np.sum(p | g))
    return 1.0 if union == 0 else float(np.sum(p & g) / union)
