"""Per-frame camera pose: a PnP start from flow correspondences, then photometric refinement.

Poses are world-to-camera 4x4 matrices inside the optimiser (what the renderer takes) and
camera-to-world in the outputs, OpenCV axes (x right, y down, z forward). A frame's pose starts
from the still part of the previous frame: the depth prior (at the model's scale; with
`camera_depth="model"` partly the model's own still depth, `lifting_depth_hw`) lifts its reliable
pixels to 3D, the forward flow says where they went, and RANSAC PnP solves for the new camera.
Then the pose is refined by rendering only the still Gaussians against the still pixels of the
new frame.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from services.common.geometry import backproject_p3
from services.common.sampling import sample_bilinear
from services.fit.adam import fused_adam_step
from services.fit.compiled import fuse
from services.fit.config import FitConfig
from services.fit.gaussians import Gaussians, mean_depth_hw
from services.fit.losses import PhotometricTarget, camera_loss
from services.fit.motion import (
    COVERED_ALPHA,
    FB_TOLERANCE_PX,
    inside_image,
    nearest_pixel,
)
from services.fit.priors import FitPriors
from services.fit.render import Backend, RenderOutput, render

logger = logging.getLogger(__name__)

_PNP_MAX_POINTS = 4000  # correspondences fed to RANSAC (a random subset of the still pixels)
_PNP_MIN_INLIERS = 12
_MIN_SCALE_PIXELS = 50  # still pixels needed to re-estimate the depth prior's scale
DEPTH_SCALE_RANGE = (0.5, 2.0)
"""Bounds of a frame's depth-prior scale (`depth_prior_scale`): a prior that drifts further
against the model is clipped, so its depth there is off by the rest (`scale_clipped_t`)."""
MODEL_DEPTH_TOLERANCE = 0.05
"""Relative departure of the scaled depth prior from the model's still depth beyond which
`camera_depth="model"` lifts a pixel at the model's depth (within it the prior stands)."""


def _hat_33(omega_3: torch.Tensor) -> torch.Tensor:
    """The cross-product matrix of omega."""
    wx, wy, wz = omega_3.unbind()
    zero = torch.zeros_like(wx)
    return torch.stack(
        [torch.stack([zero, -wz, wy]), torch.stack([wz, zero, -wx]), torch.stack([-wy, wx, zero])]
    )


def pose_update_44(omega_3: torch.Tensor, tau_3: torch.Tensor) -> torch.Tensor:
    """Rigid motion exp([omega, tau]) (axis-angle rotation, translation) as a 4x4 matrix.

    Closed form (Rodrigues, and the SE(3) left Jacobian for the translation) with Taylor series
    near zero rotation: unlike `torch.linalg.matrix_exp` it never waits for the GPU, and the
    camera refinement calls it every iteration."""
    theta2 = (omega_3 * omega_3).sum()
    theta = theta2.clamp_min(1e-12).sqrt()
    small = theta2 < 1e-8
    sin, cos = torch.sin(theta), torch.cos(theta)
    a = torch.where(small, 1 - theta2 / 6, sin / theta)  # sin(t) / t
    b = torch.where(small, 0.5 - theta2 / 24, (1 - cos) / theta**2)  # (1 - cos(t)) / t^2
    c = torch.where(small, 1 / 6 - theta2 / 120, (theta - sin) / theta**3)  # (t - sin(t)) / t^3
    hat_33 = _hat_33(omega_3)
    hat2_33 = hat_33 @ hat_33
    eye_33 = torch.eye(3, dtype=omega_3.dtype, device=omega_3.device)
    rotation_33 = eye_33 + a * hat_33 + b * hat2_33
    translation_3 = (eye_33 + b * hat_33 + c * hat2_33) @ tau_3
    bottom_14 = torch.tensor([[0, 0, 0, 1]], dtype=omega_3.dtype, device=omega_3.device)
    return torch.cat([torch.cat([rotation_33, translation_3[:, None]], dim=1), bottom_14])


def posed_w2c_44(
    omega_3: torch.Tensor, tau_3: torch.Tensor, scene_scale: float, w2c_init_44: torch.Tensor
) -> torch.Tensor:
    """The start pose moved by the twist (omega, tau in units of `scene_scale`) on its left."""
    return pose_update_44(omega_3, tau_3 * scene_scale) @ w2c_init_44


def pnp_c2w(
    points_p3: np.ndarray,
    pixels_p2: np.ndarray,
    K_33: np.ndarray,
    c2w_guess_44: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Camera-to-world pose that sees world points at the given pixels (RANSAC PnP + LM refine).

    Returns (c2w_44, inlier points [I, 3], their pixels [I, 2]), or None when there are too few
    points or inliers (the caller keeps its guess).
    """
    if len(points_p3) > _PNP_MAX_POINTS:
        pick = np.sort(rng.choice(len(points_p3), _PNP_MAX_POINTS, replace=False))
        points_p3, pixels_p2 = points_p3[pick], pixels_p2[pick]
    if len(points_p3) < _PNP_MIN_INLIERS:
        return None
    w2c_44 = np.linalg.inv(c2w_guess_44)
    rvec, _ = cv2.Rodrigues(w2c_44[:3, :3])
    tvec = w2c_44[:3, 3].reshape(3, 1).copy()
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        points_p3.astype(np.float64),
        pixels_p2.astype(np.float64),
        K_33.astype(np.float64),
        None,
        rvec,
        tvec,
        useExtrinsicGuess=True,
        iterationsCount=200,
        reprojectionError=1.0,
        confidence=0.999,
        flags=cv2.SOLVEPNP_ITERATIVE,
    )
    if not ok or inliers is None or len(inliers) < _PNP_MIN_INLIERS:
        logger.info(
            "PnP found no pose (%s inliers); keeping the guess",
            0 if inliers is None else len(inliers),
        )
        return None
    idx = inliers[:, 0]
    rvec, tvec = cv2.solvePnPRefineLM(
        points_p3[idx].astype(np.float64),
        pixels_p2[idx].astype(np.float64),
        K_33.astype(np.float64),
        None,
        rvec,
        tvec,
    )
    w2c_44 = np.eye(4)
    w2c_44[:3, :3] = cv2.Rodrigues(rvec)[0]
    w2c_44[:3, 3] = tvec[:, 0]
    return np.linalg.inv(w2c_44), points_p3[idx], pixels_p2[idx]


def reliable_still_hw(
    flow_fwd_hw2: np.ndarray,
    flow_bwd_hw2: np.ndarray | None,
    depth_valid_hw: np.ndarray,
    moving_prev_hw: np.ndarray,
    moving_next_hw: np.ndarray,
    mask_threshold: float,
) -> np.ndarray:
    """Pixels of a frame whose flow to the next is trustworthy for the camera: known depth,
    still at both ends (mask scores below `mask_threshold`), landing inside the next frame, and
    forward-backward consistent when backward flow (next -> this frame) is given."""
    height, width = depth_valid_hw.shape
    flow_hw2 = flow_fwd_hw2.astype(np.float64)
    ys, xs = np.mgrid[0:height, 0:width]
    target_p2 = np.stack([xs, ys], axis=-1).reshape(-1, 2) + flow_hw2.reshape(-1, 2)
    rows, cols = nearest_pixel(target_p2, height, width)
    reliable_p = (
        depth_valid_hw.reshape(-1)
        & (moving_prev_hw.reshape(-1) < mask_threshold)
        & inside_image(target_p2, height, width)
        & (moving_next_hw[rows, cols] < mask_threshold)
    )
    if flow_bwd_hw2 is not None:
        back_p2 = sample_bilinear(flow_bwd_hw2, target_p2)
        reliable_p &= np.linalg.norm(flow_hw2.reshape(-1, 2) + back_p2, axis=1) < FB_TOLERANCE_PX
    return reliable_p.reshape(height, width)


def flow_correspondences(
    depth_hw: np.ndarray,
    reliable_hw: np.ndarray,
    flow_fwd_hw2: np.ndarray,
    K_33: np.ndarray,
    c2w_44: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """World points of the reliable pixels of one frame and where the flow moves them next."""
    ys, xs = np.nonzero(reliable_hw)
    xy_p2 = np.stack([xs, ys], axis=1).astype(np.float64)
    points_p3 = backproject_p3(K_33, c2w_44, xy_p2, depth_hw[ys, xs].astype(np.float64))
    return points_p3, xy_p2 + flow_fwd_hw2[ys, xs]


def lifting_depth_hw(
    prior_depth_hw: np.ndarray, model_depth_hw: np.ndarray, model_alpha_hw: np.ndarray
) -> np.ndarray:
    """Depth that lifts a frame's still pixels for the next camera with `camera_depth="model"`:
    the model's still depth (rendered at the frame's pose) where the still Gaussians cover the
    pixel and the scaled prior departs from it by more than `MODEL_DEPTH_TOLERANCE`, the prior
    elsewhere. An estimated prior changes shape from frame to frame; the model holds one map."""
    covered_hw = (model_alpha_hw >= COVERED_ALPHA) & (model_depth_hw > 0)
    departs_hw = np.abs(prior_depth_hw - model_depth_hw) > MODEL_DEPTH_TOLERANCE * model_depth_hw
    return np.where(covered_hw & departs_hw, model_depth_hw, prior_depth_hw).astype(np.float32)


def pnp_start(
    priors: FitPriors,
    t: int,
    depth_prev_hw: np.ndarray,
    c2w_prev_44: np.ndarray,
    mask_threshold: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start pose of frame t: PnP on the flow correspondences of frame t-1's reliable still
    pixels, lifted by `depth_prev_hw` (its depth prior at the model's scale, or
    `lifting_depth_hw`; 0 = unknown) at its pose, from the prior pose of frame t when the priors
    have one, else from frame t-1's. Returns (c2w_44, inlier points [I, 3], their pixels
    [I, 2]); the guess and none when PnP finds no pose."""
    c2w_guess_44 = (
        c2w_prev_44 if priors.c2w_t44 is None else np.asarray(priors.c2w_t44[t], np.float64)
    )
    reliable_hw = reliable_still_hw(
        priors.flow_fwd_t1hw2[t - 1],
        None if priors.flow_bwd_t1hw2 is None else priors.flow_bwd_t1hw2[t - 1],
        depth_prev_hw > 0,
        np.asarray(priors.moving_thw[t - 1], np.float32),
        np.asarray(priors.moving_thw[t], np.float32),
        mask_threshold,
    )
    K_33 = np.asarray(priors.K_33, np.float64)
    points_p3, pixels_p2 = flow_correspondences(
        depth_prev_hw, reliable_hw, priors.flow_fwd_t1hw2[t - 1], K_33, c2w_prev_44
    )
    found = pnp_c2w(points_p3, pixels_p2, K_33, c2w_guess_44, rng)
    if found is None:
        return c2w_guess_44, points_p3[:0], pixels_p2[:0]
    return found


def refine_still_pose(
    gaussians: Gaussians,
    target: PhotometricTarget,
    still_hw: torch.Tensor,
    w2c_init_44: torch.Tensor,
    K_33: torch.Tensor,
    points_p3: torch.Tensor,
    pixels_p2: torch.Tensor,
    cfg: FitConfig,
    scene_scale: float,
    backend: Backend,
    fused: bool,
) -> torch.Tensor:
    """`optimise_pose` of the model's still Gaussians on the pixels the mask calls still
    (bool `still_hw`) and the still Gaussians cover at the start pose, drawn by the renderer
    `backend`, the loss code `fused` or not (the fit's runtime)."""
    still = gaussians.subset(~gaussians.moving_n)
    height, width = still_hw.shape
    with torch.no_grad():
        out = still.render(w2c_init_44, K_33, width, height, backend=backend)
    weight_hw = (out.alpha_hw >= COVERED_ALPHA) & still_hw
    return optimise_pose(
        still,
        target,
        weight_hw.float(),
        w2c_init_44,
        K_33,
        points_p3,
        pixels_p2,
        lambda_flow=cfg.lambda_camera_flow,
        iters=cfg.camera_iters,
        patience=cfg.camera_patience,
        lr=cfg.camera_lr,
        scene_scale=scene_scale,
        ssim_share=cfg.ssim_share,
        backend=backend,
        fused=fused,
    )


def depth_prior_scale(
    still_out: RenderOutput, prior_depth_hw: np.ndarray, usable_hw: np.ndarray, fallback: float
) -> float:
    """Scale that maps a frame's depth prior onto the model: the median ratio of the still
    Gaussians' rendered depth (`still_out`, at the frame's pose) to the prior over the covered
    `usable_hw` pixels (known prior, still mask), clipped to `DEPTH_SCALE_RANGE`; `fallback`
    (the previous frame's scale) when fewer than 50 pixels qualify. 1 for a metric-consistent
    prior; it absorbs per-frame scale drift otherwise."""
    model_hw = mean_depth_hw(still_out).cpu().numpy()
    usable_hw = (still_out.alpha_hw.cpu().numpy() >= COVERED_ALPHA) & usable_hw
    if usable_hw.sum() < _MIN_SCALE_PIXELS:
        return fallback
    ratio = float(np.median(model_hw[usable_hw] / prior_depth_hw[usable_hw]))
    return float(np.clip(ratio, *DEPTH_SCALE_RANGE))


def scale_clipped_t(depth_scale_t: np.ndarray) -> np.ndarray:
    """Bool [T]: frames whose depth-prior scale sits at a bound of `DEPTH_SCALE_RANGE` (clipped
    there, or taken over from a clipped frame): their prior drifted beyond what the fit absorbs,
    so its depth and the Gaussians it seeds sit at the wrong distance."""
    return np.isin(np.asarray(depth_scale_t, np.float64), DEPTH_SCALE_RANGE)


def optimise_pose(
    still: Gaussians,
    target: PhotometricTarget,
    weight_hw: torch.Tensor,
    w2c_init_44: torch.Tensor,
    K_33: torch.Tensor,
    points_p3: torch.Tensor,
    pixels_p2: torch.Tensor,
    *,
    lambda_flow: float,
    iters: int,
    lr: float,
    scene_scale: float,
    ssim_share: float,
    backend: str,
    fused: bool = False,
    patience: int = 0,
) -> torch.Tensor:
    """Refines a world-to-camera pose so the still Gaussians match the still pixels and the
    still correspondences (world points -> pixels, from the flow) reproject where they should.

    The update is a twist applied on the left of the start pose; its translation is in units of
    `scene_scale`, so one learning rate suits scenes of any size. Returns the pose with the lowest
    loss seen, so a good start (PnP) is never made worse by Adam's first, sign-sized steps.
    `fused`: the pose and the loss through `compiled.fuse` (CUDA). `patience` > 0: after every
    `patience` iterations, stop if none since the last check (or since the start) found a lower
    loss (`FitConfig.camera_patience`).
    """
    if iters == 0 or len(still) == 0:
        return w2c_init_44
    height, width = weight_hw.shape
    omega_3 = torch.zeros(3, dtype=w2c_init_44.dtype, device=w2c_init_44.device, requires_grad=True)
    tau_3 = torch.zeros(3, dtype=w2c_init_44.dtype, device=w2c_init_44.device, requires_grad=True)
    optimiser = torch.optim.Adam([omega_3, tau_3], lr=lr, fused=True)
    with torch.no_grad():
        means, quats = still.means_n3, still.unit_quats_n4
        scales, opacities, colors = still.scales_n3, still.opacities_n, still.colors_n3
    still_params = (means, quats, scales, opacities, colors)
    # The best so far stays on the device: comparing on the host would wait for every iteration.
    best_loss = torch.tensor(float("inf"), dtype=w2c_init_44.dtype, device=w2c_init_44.device)
    best_w2c_44 = w2c_init_44
    best_step = torch.zeros((), dtype=torch.int64, device=w2c_init_44.device)
    posed, step_loss = fuse(posed_w2c_44, fused), fuse(camera_loss, fused)
    for step in range(iters):
        w2c_44 = posed(omega_3, tau_3, scene_scale, w2c_init_44)
        out = render(*still_params, w2c_44, K_33, width, height, backend=backend)
        loss = step_loss(
            out.rgb_hw3,
            target,
            weight_hw,
            ssim_share,
            points_p3,
            pixels_p2,
            w2c_44,
            K_33,
            lambda_flow,
        )
        better = loss.detach() < best_loss
        best_loss = torch.where(better, loss.detach(), best_loss)
        best_w2c_44 = torch.where(better, w2c_44.detach(), best_w2c_44)
        if patience > 0:
            best_step = torch.where(better, step, best_step)
            checked = (step + 1) % patience == 0
            if checked and int(best_step) <= max(step - patience, 0):  # no new low since the last
                break
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        fused_adam_step(optimiser)
    return best_w2c_44
