"""Self-consistency figures of a synthetic scene's ground truth (tests and the benchmark).

Two independent paths must agree: the rendered pixels (warping frame t by the ground-truth flow
reproduces frame t+1 on visible pixels), and the geometry (depth and camera poses reproduce the
ground-truth flow on static pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.common.geometry import pixel_grid_hw2, rigid_flow_hw2
from services.synthetic.scene import SyntheticScene


@dataclass
class ConsistencyFigures:
    """Image errors are in 8-bit levels (0-255) per channel, flow errors in pixels."""

    warp_err_mean: float  # |frame t at p + flow_bwd(p) - frame t+1(p)| on valid_bwd pixels
    warp_err_median: float
    warp_err_p95: float
    still_err_mean: float  # |frame t(p) - frame t+1(p)| on the same pixels: the no-flow baseline
    reproj_err_max_px: float  # |flow from depth + poses - flow_fwd| on static pixels
    reproj_err_mean_px: float
    valid_fraction: float  # share of pixels visible in the next frame (valid_fwd)
    object_speed_median_px: float  # median |flow_fwd| on moving-object pixels (NaN if none)
    camera_speed_median_px: float  # median |flow_fwd| on static pixels


def consistency_figures(scene: SyntheticScene) -> ConsistencyFigures:
    """Warps every frame pair bilinearly (cv2.remap) and reprojects depth through the poses."""
    h, w = scene.depth_thw.shape[1:]
    grid_hw2 = pixel_grid_hw2(h, w).astype(np.float32)
    warp, still, reproj = [], [], []
    for t in range(len(scene.flow_bwd_t1hw2)):
        map_hw2 = grid_hw2 + scene.flow_bwd_t1hw2[t]
        src = scene.frames_thw3[t].astype(np.float32)
        target = scene.frames_thw3[t + 1].astype(np.float32)
        warped = cv2.remap(src, map_hw2[..., 0], map_hw2[..., 1], cv2.INTER_LINEAR)
        valid = scene.valid_bwd_t1hw[t]
        warp.append(np.abs(warped - target)[valid].ravel())
        still.append(np.abs(src - target)[valid].ravel())
        rigid = rigid_flow_hw2(
            scene.depth_thw[t], scene.K_33, scene.c2w_t44[t], scene.c2w_t44[t + 1]
        )
        static = ~scene.moving_thw[t]
        reproj.append(np.linalg.norm(rigid - scene.flow_fwd_t1hw2[t], axis=-1)[static])
    warp_all, reproj_all = np.concatenate(warp), np.concatenate(reproj)
    speed_thw = np.linalg.norm(scene.flow_fwd_t1hw2, axis=-1)
    moving = scene.moving_thw[:-1]
    return ConsistencyFigures(
        warp_err_mean=float(warp_all.mean()),
        warp_err_median=float(np.median(warp_all)),
        warp_err_p95=float(np.percentile(warp_all, 95)),
        still_err_mean=float(np.concatenate(still).mean()),
        reproj_err_max_px=float(reproj_all.max()),
        reproj_err_mean_px=float(reproj_all.mean()),
        valid_fraction=float(scene.valid_fwd_t1hw.mean()),
        object_speed_median_px=float(np.median(speed_thw[moving]))
        if moving.any()
        else float("nan"),
        camera_speed_median_px=float(np.median(speed_thw[~moving])),
    )
