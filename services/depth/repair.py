"""Detect and repair non-positive or non-finite depths instead of aborting (failure case 1).

MASt3R's sparse global alignment asserts `core_depth > 0` and kills the whole run when a
canonical depth map has a non-positive anchor. Here a window's depth is checked frame by frame and
repaired, and every repair is described in words for the result's `repairs` list:
- a window whose finite depths are mostly negative converged to the mirrored solution: the sign
  is flipped (depth magnitudes and their ratios are what the alignment measured);
- a frame with a few bad pixels gets them filled edge-aware from their neighbours (confidence 0);
- a frame with too many bad pixels cannot be filled credibly: it is reported as failed, so the
  engine can re-run the window with safer settings, and as a last resort borrows the depth of the
  nearest good frame of the window (confidence scaled down).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from services.depth.quality import bad_depth_mask
from services.depth.upsample import guided_filter, push_pull_fill

BORROWED_CONFIDENCE = 0.1  # confidence factor of depth copied from a neighbouring frame
HOLE_EPS = 1e-2  # guided-filter regulariser inside holes: only clear colour edges steer the fill


@dataclass
class WindowRepair:
    """Outcome of `repair_window`: depth and confidence with no bad value in repaired frames."""

    depth_thw: np.ndarray  # float32 [T, H, W]; frames in `failed_t` may still hold bad values
    confidence_thw: np.ndarray  # float32 [T, H, W]; 0 where a value was filled
    bad_share_t: np.ndarray  # float64 [T] share of bad pixels per frame before repair
    notes: list[str] = field(default_factory=list)  # what was done, one line per action
    failed_t: list[int] = field(default_factory=list)  # frames too broken to fill


def fill_bad_depth(
    depth_hw: np.ndarray, bad_hw: np.ndarray, guide_hw3: np.ndarray | None = None
) -> np.ndarray:
    """Replaces the pixels in `bad_hw` with depth interpolated from the good ones, edge-aware.

    Push-pull interpolation in log depth fills the holes smoothly. With the image as guide, a
    guided filter fitted on the good pixels only (windows wide enough to reach them from every
    hole pixel) then carries the local colour-to-depth relation into the holes, so the fill
    follows image edges; it is kept within the range of the good depths around. Good pixels keep
    their values.
    """
    good = ~bad_hw & ~bad_depth_mask(depth_hw)
    if not good.any():
        raise ValueError("fill_bad_depth needs at least one good pixel")
    log_depth = np.log(np.where(good, depth_hw, 1.0)).astype(np.float32)
    filled = push_pull_fill(log_depth, good.astype(np.float32))
    if guide_hw3 is not None and not good.all():
        reach = cv2.distanceTransform((~good).astype(np.uint8), cv2.DIST_L2, 3)
        radius = int(np.clip(np.ceil(reach.max()) + 2, 2, max(depth_hw.shape) // 4))
        guided = guided_filter(guide_hw3, filled, radius, HOLE_EPS, good.astype(np.float32))
        low = -cv2.dilate(-np.where(good, log_depth, np.inf), _disk(radius))
        high = cv2.dilate(np.where(good, log_depth, -np.inf), _disk(radius))
        filled = np.clip(guided, np.minimum(low, filled), np.maximum(high, filled))
    return np.where(good, depth_hw, np.exp(filled)).astype(np.float32)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def repair_window(
    depth_thw: np.ndarray,
    confidence_thw: np.ndarray,
    guide_thw3: np.ndarray | None = None,
    max_fill_share: float = 0.3,
    label: str = "window",
    borrow: bool = False,
) -> WindowRepair:
    """Checks every frame of a window and repairs what it can (see the module docstring).

    Frames whose bad share exceeds `max_fill_share` are listed in `failed_t`; with `borrow`,
    they take the depth of the nearest frame that could be repaired (if there is one).
    """
    depth = np.array(depth_thw, np.float32, copy=True)
    conf = np.array(confidence_thw, np.float32, copy=True)
    bad_thw = bad_depth_mask(depth)
    bad_share_t = bad_thw.reshape(len(depth), -1).mean(axis=1).astype(np.float64)
    notes: list[str] = []
    finite = np.isfinite(depth)
    negative = np.count_nonzero(finite & (depth < 0))
    positive = np.count_nonzero(finite & (depth > 0))
    if negative > positive:
        depth = -depth
        bad_thw = bad_depth_mask(depth)
        notes.append(
            f"{label}: {negative} of {negative + positive} finite depths were negative (a "
            "mirrored alignment); flipped their sign"
        )
    failed = []
    for t in range(len(depth)):
        share = float(bad_thw[t].mean())
        if share == 0.0:
            continue
        if share > max_fill_share:
            failed.append(t)
            continue
        guide = None if guide_thw3 is None else guide_thw3[t]
        depth[t] = fill_bad_depth(depth[t], bad_thw[t], guide)
        conf[t][bad_thw[t]] = 0.0
        notes.append(
            f"{label} frame {t}: filled {int(bad_thw[t].sum())} non-positive or non-finite "
            f"depths ({100 * share:.2f}%) from their neighbours, confidence 0 there"
        )
    good_t = [t for t in range(len(depth)) if t not in failed]
    if failed:
        shares = ", ".join(f"{t}: {100 * float(bad_thw[t].mean()):.0f}%" for t in failed)
        notes.append(
            f"{label}: frames too broken to fill (bad share over {100 * max_fill_share:.0f}%): "
            + shares
        )
    if borrow and failed and good_t:
        for t in failed:
            source = min(good_t, key=lambda g: (abs(g - t), g))
            depth[t] = depth[source]
            conf[t] = conf[source] * BORROWED_CONFIDENCE
            notes.append(f"{label} frame {t}: took the depth of frame {source} (last resort)")
        failed = []
    return WindowRepair(depth, conf, bad_share_t, notes, failed)
