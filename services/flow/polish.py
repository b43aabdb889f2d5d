"""Photometric polish of a dense flow field.

Why: DIS's variational smoothness pulls the flow of a small moving object towards its still
surroundings, so the flow falls short of the object's motion (on the accuracy suite's clips by
0.23-0.95 px per frame, docs/flow.md) and tracks chained along it lag further every frame. A few
Lucas-Kanade steps on the colour images, each pixel over its own small window with no smoothness
term, move the flow to where the two images agree; the noise those windows add is then taken out
by the same variational refinement DIS ends with, started from the polished field. That
refinement's smoothness pulls the object's flow part of the way back; further rounds of both
(`FlowConfig.dis_polish_rounds`) take part of that back again.

Along an object's outline both DIS's patches and the refinement blend the object's flow with
the background's, so the rim pixels move with neither side. `take_neighbour_flow` lets each
pixel take the flow of a neighbour a few pixels away (on the pixel's own side) where that flow
maps the pixel's small window onto the other frame better.
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

from services.flow.config import FlowConfig

LK_STEPS = 3
"""Gauss-Newton steps of the windowed brightness-constancy fit."""
WINDOW_SIGMA_PX = FlowConfig.dis_polish_window_px
"""Gaussian window of each pixel's fit, sigma in pixels (1.5: about 9 px across)."""
MAX_STEP_PX = 1.0
"""Longest update of one step: the linearisation holds for about a pixel."""
MIN_EIGENVALUE = 1e-5
"""Windows whose structure tensor is flatter than this (no texture, or an edge only: the
aperture problem) keep their flow; intensities are in [0, 1]."""
REFINEMENT_ITERATIONS = 5
"""Fixed-point iterations of each round's variational refinement (DIS's own count)."""
NEIGHBOUR_WINDOW_SIGMA_PX = 1.0
"""Gaussian window over which `take_neighbour_flow` compares a pixel's colour error (about 3x3):
small, so that a rim pixel's window lies mostly on its own side of the outline."""
POINT_ROW = 1024
"""Points per row of the maps `_sample_cubic` hands to cv2.remap."""
NEIGHBOUR_SPREAD_PX = 0.5
"""`take_neighbour_flow` looks only where the flow's x range plus y range over the searched
square exceeds this: elsewhere its candidates are alike and a choice between them is noise
(measured on the accuracy suite's clips: the same floor AJ as looking everywhere, and lower
EPE)."""


def _gradients(image_hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel d/dx and d/dy (Sobel, scaled to intensity per pixel)."""
    grad_x = cv2.Sobel(image_hwc, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    grad_y = cv2.Sobel(image_hwc, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    return grad_x, grad_y


def _channel_sum(value_hwc: np.ndarray) -> np.ndarray:
    """[H, W] sum over the channels (cv2.transform: several times faster than numpy's sum over
    a short last axis)."""
    return cv2.transform(value_hwc, np.ones((1, value_hwc.shape[-1]), np.float32))


def lucas_kanade_steps(
    src_hw3: np.ndarray,
    dst_hw3: np.ndarray,
    flow_hw2: np.ndarray,
    steps: int = LK_STEPS,
    window_sigma_px: float = WINDOW_SIGMA_PX,
) -> np.ndarray:
    """float32 [H, W, 2]: `flow_hw2` (src -> dst, uint8 RGB frames) moved by `steps` windowed
    Lucas-Kanade updates. The target is warped with cubic interpolation (bilinear's smoothing
    biased the steps towards zero motion by about 5 %, measured on a known shift) and the
    gradients are the mean of the source's and the warped target's (symmetric, so the update is
    not biased towards either frame); pixels whose target leaves the image or whose window has
    no texture in two directions keep their flow."""
    src_hw3f = src_hw3.astype(np.float32) / 255.0
    dst_hw3f = dst_hw3.astype(np.float32) / 255.0
    height, width = flow_hw2.shape[:2]
    grid_y_hw, grid_x_hw = np.mgrid[0:height, 0:width].astype(np.float32)
    src_gx_hw3, src_gy_hw3 = _gradients(src_hw3f)

    def window_sum(value_hw: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(value_hw, (0, 0), window_sigma_px)

    flow_hw2 = flow_hw2.astype(np.float32, copy=True)
    for _ in range(steps):
        map_x_hw = grid_x_hw + flow_hw2[..., 0]
        map_y_hw = grid_y_hw + flow_hw2[..., 1]
        inside_hw = (map_x_hw >= 0) & (map_x_hw <= width - 1)
        inside_hw &= (map_y_hw >= 0) & (map_y_hw <= height - 1)
        warped_hw3 = cv2.remap(
            dst_hw3f, map_x_hw, map_y_hw, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
        )
        warped_gx_hw3, warped_gy_hw3 = _gradients(warped_hw3)
        gx_hw3 = 0.5 * (src_gx_hw3 + warped_gx_hw3)
        gy_hw3 = 0.5 * (src_gy_hw3 + warped_gy_hw3)
        residual_hw3 = warped_hw3 - src_hw3f
        a_xx = window_sum(_channel_sum(gx_hw3 * gx_hw3))
        a_xy = window_sum(_channel_sum(gx_hw3 * gy_hw3))
        a_yy = window_sum(_channel_sum(gy_hw3 * gy_hw3))
        b_x = -window_sum(_channel_sum(gx_hw3 * residual_hw3))
        b_y = -window_sum(_channel_sum(gy_hw3 * residual_hw3))
        det_hw = a_xx * a_yy - a_xy**2
        trace_hw = a_xx + a_yy
        min_eig_hw = 0.5 * (trace_hw - np.sqrt(np.maximum(trace_hw**2 - 4 * det_hw, 0.0)))
        solvable_hw = inside_hw & (min_eig_hw > MIN_EIGENVALUE)
        safe_det_hw = np.where(solvable_hw, det_hw, 1.0)
        step_x_hw = np.where(solvable_hw, (a_yy * b_x - a_xy * b_y) / safe_det_hw, 0.0)
        step_y_hw = np.where(solvable_hw, (a_xx * b_y - a_xy * b_x) / safe_det_hw, 0.0)
        length_hw = np.hypot(step_x_hw, step_y_hw)
        shrink_hw = np.minimum(1.0, MAX_STEP_PX / np.maximum(length_hw, 1e-12))
        flow_hw2[..., 0] += step_x_hw * shrink_hw
        flow_hw2[..., 1] += step_y_hw * shrink_hw
    return flow_hw2


def polish_flow(
    src_hw3: np.ndarray,
    dst_hw3: np.ndarray,
    flow_hw2: np.ndarray,
    rounds: int = 1,
    window_sigma_px: float = WINDOW_SIGMA_PX,
) -> np.ndarray:
    """float32 [H, W, 2]: `rounds` times Lucas-Kanade steps (windows of `window_sigma_px`), then a
    variational refinement (OpenCV's, on grey images, DIS's weights) started from them."""
    src_hw = cv2.cvtColor(src_hw3, cv2.COLOR_RGB2GRAY)
    dst_hw = cv2.cvtColor(dst_hw3, cv2.COLOR_RGB2GRAY)
    refinement = cv2.VariationalRefinement_create()
    refinement.setFixedPointIterations(REFINEMENT_ITERATIONS)
    for _ in range(rounds):
        stepped_hw2 = lucas_kanade_steps(
            src_hw3, dst_hw3, flow_hw2, window_sigma_px=window_sigma_px
        )
        flow_hw2 = refinement.calc(src_hw, dst_hw, stepped_hw2)
    return flow_hw2


def _sample_cubic(image_hwc: np.ndarray, x_n: np.ndarray, y_n: np.ndarray) -> np.ndarray:
    """[N, C] the image read at the points (cubic, the edge repeated), through cv2.remap on maps
    folded into rows of POINT_ROW (remap takes at most 32767 rows or columns)."""
    count = len(x_n)
    rows = -(-count // POINT_ROW)
    maps = []
    for coordinate_n in (x_n, y_n):
        folded = np.zeros(rows * POINT_ROW, np.float32)
        folded[:count] = coordinate_n
        maps.append(folded.reshape(rows, POINT_ROW))
    sampled = cv2.remap(
        image_hwc, maps[0], maps[1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    return sampled.reshape(rows * POINT_ROW, -1)[:count]


def take_neighbour_flow(
    src_hw3: np.ndarray, dst_hw3: np.ndarray, flow_hw2: np.ndarray, radius_px: int
) -> np.ndarray:
    """float32 [H, W, 2]: each pixel's flow (src -> dst, uint8 RGB frames), or the flow of the
    pixel 1..`radius_px` whole pixels away in one of the 8 directions whose flow warps this
    pixel's window (NEIGHBOUR_WINDOW_SIGMA_PX) onto dst with the least absolute colour error.
    Only pixels whose flow varies by more than NEIGHBOUR_SPREAD_PX within the search look; a
    pixel keeps its own flow unless a neighbour's is strictly better."""
    flow_hw2 = flow_hw2.astype(np.float32, copy=False)
    height, width = flow_hw2.shape[:2]
    search_kernel = np.ones((2 * radius_px + 1,) * 2, np.uint8)
    spread_hw = sum(
        cv2.dilate(flow_hw2[..., c], search_kernel) - cv2.erode(flow_hw2[..., c], search_kernel)
        for c in range(2)
    )
    looks_hw = spread_hw > NEIGHBOUR_SPREAD_PX
    taken_hw2 = flow_hw2.copy()
    if not looks_hw.any():
        return taken_hw2
    # The window's error is needed wherever a looking pixel's window reaches: OpenCV's Gaussian
    # kernel for float images reaches 4 sigma.
    window_px = int(np.ceil(4 * NEIGHBOUR_WINDOW_SIGMA_PX))
    window_kernel = np.ones((2 * window_px + 1,) * 2, np.uint8)
    reads_hw = cv2.dilate(looks_hw.astype(np.uint8), window_kernel).astype(bool)
    # Flat indices: pixels read (n), pixels that look (l), and both in the edge-padded flow.
    read_n, look_l = np.flatnonzero(reads_hw), np.flatnonzero(looks_hw)
    rows_n, cols_n = np.divmod(read_n, width)
    padded_width = width + 2 * radius_px
    padded_p2 = np.pad(flow_hw2, ((radius_px, radius_px), (radius_px, radius_px), (0, 0)), "edge")
    padded_p2 = padded_p2.reshape(-1, 2)
    padded_n = (rows_n + radius_px) * padded_width + cols_n + radius_px
    padded_l = (look_l // width + radius_px) * padded_width + look_l % width + radius_px
    x_n, y_n = cols_n.astype(np.float32), rows_n.astype(np.float32)
    src_n3 = src_hw3.reshape(-1, 3)[read_n].astype(np.float32) / 255.0
    dst_hw3f = dst_hw3.astype(np.float32) / 255.0
    error_hw = np.zeros((height, width), np.float32)  # only the read pixels are ever written
    channel_ones_3 = np.ones(3, np.float32)

    def window_error_l(offset: int) -> np.ndarray:
        """[L] the window error of each looking pixel with every pixel's flow taken from the
        pixel `offset` away in the padded flow's flat index (the image's edge repeated)."""
        candidate_n2 = padded_p2[padded_n + offset]
        difference_n3 = _sample_cubic(dst_hw3f, x_n + candidate_n2[:, 0], y_n + candidate_n2[:, 1])
        difference_n3 -= src_n3
        error_hw.reshape(-1)[read_n] = np.abs(difference_n3, out=difference_n3) @ channel_ones_3
        return cv2.GaussianBlur(error_hw, (0, 0), NEIGHBOUR_WINDOW_SIGMA_PX).reshape(-1)[look_l]

    best_l2 = padded_p2[padded_l]
    best_error_l = window_error_l(0)
    for distance in range(1, radius_px + 1):
        for step_y, step_x in itertools.product((-1, 0, 1), repeat=2):
            if step_x == step_y == 0:
                continue
            offset = (step_y * padded_width + step_x) * distance
            error_l = window_error_l(offset)
            better_l = error_l < best_error_l
            best_error_l[better_l] = error_l[better_l]
            best_l2[better_l] = padded_p2[padded_l[better_l] + offset]
    taken_hw2.reshape(-1, 2)[look_l] = best_l2
    return taken_hw2
