"""Backward warping and the forward-backward consistency check (pure numpy).

Other engines (segment, depth) reuse these to tell which flow vectors to trust: a pixel whose
forward flow, followed by the backward flow at its landing point, does not come back home is
occluded in the next frame, leaves it, or is simply wrong.
"""

from __future__ import annotations

import numpy as np

from services.common.geometry import pixel_grid_hw2
from services.common.sampling import sample_bilinear


def warp_image(image: np.ndarray, flow_hw2: np.ndarray) -> np.ndarray:
    """Backward warp: out[y, x] = image[y + dy, x + dx] with (dx, dy) = flow_hw2[y, x].

    `image` is [H, W] or [H, W, C] of any real dtype; the result is float32 of the same shape.
    Bilinear; points that land outside the image take the nearest edge value (test
    `flow_in_frame` where that matters). Warping frame t+1 with the forward flow t -> t+1
    reproduces frame t wherever the flow is right and the point is visible in both.
    """
    height, width = flow_hw2.shape[:2]
    if flow_hw2.shape != (height, width, 2) or image.shape[:2] != (height, width):
        raise ValueError(f"image {image.shape} and flow {flow_hw2.shape} must share [H, W]")
    image_hwc = image.astype(np.float32).reshape(height, width, -1)
    landing_p2 = (pixel_grid_hw2(height, width).astype(np.float32) + flow_hw2).reshape(-1, 2)
    return sample_bilinear(image_hwc, landing_p2).astype(np.float32).reshape(image.shape)


def flow_in_frame(flow_hw2: np.ndarray) -> np.ndarray:
    """bool [H, W]: the flow carries the pixel to a point inside the image."""
    height, width = flow_hw2.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    x_hw = grid_x + flow_hw2[..., 0]
    y_hw = grid_y + flow_hw2[..., 1]
    return (x_hw >= 0) & (x_hw <= width - 1) & (y_hw >= 0) & (y_hw <= height - 1)


def forward_backward_consistency(
    flow_fwd_hw2: np.ndarray, flow_bwd_hw2: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(consistent_hw bool, error_hw float32) for the forward flow of a frame pair.

    error = |fwd(p) + bwd(p + fwd(p))| in pixels: zero for a point seen in both frames with exact
    flow. A pixel is consistent when its error is below `threshold` px and its forward flow stays
    in the frame; where it leaves the frame the error is NaN (undefined) and it is inconsistent.
    Swap the arguments for the check of the backward flow.
    """
    if flow_fwd_hw2.shape != flow_bwd_hw2.shape or flow_fwd_hw2.shape[-1:] != (2,):
        raise ValueError(f"flows {flow_fwd_hw2.shape} and {flow_bwd_hw2.shape} must be [H, W, 2]")
    round_trip_hw2 = flow_fwd_hw2 + warp_image(flow_bwd_hw2, flow_fwd_hw2)
    error_hw = np.linalg.norm(round_trip_hw2, axis=-1).astype(np.float32)
    error_hw[~flow_in_frame(flow_fwd_hw2)] = np.nan
    with np.errstate(invalid="ignore"):
        consistent_hw = error_hw < threshold  # NaN compares False
    return consistent_hw, error_hw
