"""Views away from the fitted cameras: a fit's Gaussians drawn from a camera moved off the clip's
path, against the synthetic scene drawn from the same camera (`scene.render_view`).

PSNR on the fitted frames cannot show a shape that only looks right from where it was fitted
(flat or needle-like Gaussians); a view from the side can. Parts of the side view that the clip's
camera never saw at that frame (disoccluded background) have nothing to be right about, so each
view is scored over all its pixels and over the co-visible ones alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.geometry import reproject_hw, rotation_33
from services.common.image_metrics import psnr
from services.fit.gaussians import render_frame
from services.fit.motion import inside_image, nearest_pixel
from services.fit.result import FitResult
from services.synthetic.scene import SyntheticScene, render_view

COVISIBLE_DEPTH_TOLERANCE = 0.02
"""Relative camera-z agreement at which a side view's surface point is the one the clip's camera
saw at that pixel (not a surface in front of it)."""


def side_offset_44(shift_m: float, look_depth_m: float) -> np.ndarray:
    """Camera-frame move (right-multiplied onto a camera-to-world pose): `shift_m` along the
    camera's x axis, turned about its y axis back towards the point `look_depth_m` straight ahead
    of where it stood."""
    offset_44 = np.eye(4)
    offset_44[0, 3] = shift_m
    offset_44[:3, :3] = rotation_33("y", -np.arctan2(shift_m, look_depth_m))
    return offset_44


def covisible_hw(
    K_33: np.ndarray,
    view_c2w_44: np.ndarray,
    view_depth_hw: np.ndarray,
    frame_c2w_44: np.ndarray,
    frame_depth_hw: np.ndarray,
) -> np.ndarray:
    """Bool [H, W]: pixels of the view whose surface point the frame's camera saw (it projects
    inside the frame, in front of the camera, at the frame's depth there within
    `COVISIBLE_DEPTH_TOLERANCE`)."""
    height, width = view_depth_hw.shape
    xy_hw2, z_hw = reproject_hw(view_depth_hw, K_33, view_c2w_44, frame_c2w_44)
    xy_p2, z_p = xy_hw2.reshape(-1, 2), z_hw.reshape(-1)
    rows, cols = nearest_pixel(xy_p2, height, width)
    agrees_p = np.abs(frame_depth_hw[rows, cols] - z_p) <= COVISIBLE_DEPTH_TOLERANCE * z_p
    seen_p = inside_image(xy_p2, height, width) & (z_p > 0) & agrees_p
    return seen_p.reshape(height, width) & (view_depth_hw > 0)


@dataclass
class SideViewScores:
    """A fit seen from the side at every frame: means over the frames."""

    shift_share: float  # the sideways move, as a share of frame 0's median depth
    psnr_db: float  # over every pixel of the view
    covisible_psnr_db: float  # over the pixels the clip's camera saw at that frame
    covisible_share: float  # share of the view's pixels that are co-visible


def score_side_views(
    result: FitResult, scene: SyntheticScene, shift_share: float
) -> SideViewScores:
    """Each frame's fitted Gaussians from its fitted camera moved by `side_offset_44` against the
    scene from its true camera moved the same way (shift `shift_share` x the median depth of
    frame 0, turned back towards that depth). The fit's world must be the scene's to scale:
    exact priors."""
    median_depth_m = float(np.median(scene.depth_thw[0][scene.depth_thw[0] > 0]))
    offset_44 = side_offset_44(shift_share * median_depth_m, median_depth_m)
    height, width = scene.depth_thw.shape[1:]
    psnr_t, covisible_psnr_t, share_t = [], [], []
    for t, frame in enumerate(result.frames):
        view_c2w_44 = scene.c2w_t44[t] @ offset_44
        truth_hw3, truth_depth_hw = render_view(scene.config, t, view_c2w_44)
        fitted = render_frame(frame, result.c2w_t44[t] @ offset_44, scene.K_33, width, height)
        rgb_hw3 = fitted.rgb_hw3.cpu().numpy().astype(np.float64)
        truth_hw3 = truth_hw3 / 255.0
        seen_hw = covisible_hw(
            scene.K_33, view_c2w_44, truth_depth_hw, scene.c2w_t44[t], scene.depth_thw[t]
        )
        psnr_t.append(psnr(rgb_hw3, truth_hw3, 1.0))
        covisible_psnr_t.append(psnr(rgb_hw3, truth_hw3, 1.0, seen_hw))
        share_t.append(float(seen_hw.mean()))
    return SideViewScores(
        shift_share=shift_share,
        psnr_db=float(np.mean(psnr_t)),
        covisible_psnr_db=float(np.nanmean(covisible_psnr_t)),
        covisible_share=float(np.mean(share_t)),
    )
