"""Per-frame camera pose: a PnP start from flow correspondences, then photometric refinement.

Poses are world-to-camera 4x4 matrices inside the optimiser (what the renderer takes) and
camera-to-world in the outputs, OpenCV axes (x right, y down, z forward). A frame's pose starts
from the still part of the previous frame: the model's rendered depth there lifts pixels to 3D,
the forward flow says where they went, and RANSAC PnP solves for the new camera. Then the pose is
refined by rendering only the still Gaussians against the still pixels of the new frame.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch

from services.evaluation.geometry import backproject_p3
from services.fit.gaussians import Gaussians
from services.fit.losses import flow_loss, photometric_loss
from services.fit.render import render

logger = logging.getLogger(__name__)

_PNP_MAX_POINTS = 4000  # correspondences fed to RANSAC (a random subset of the still pixels)
_PNP_MIN_INLIERS = 12


def project_n2(
    means_n3: torch.Tensor, w2c_44: torch.Tensor, K_33: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points -> (pixel xy [N, 2], camera z [N]); differentiable in points and pose."""
    cam_n3 = means_n3 @ w2c_44[:3, :3].T + w2c_44[:3, 3]
    z_n = cam_n3[:, 2]
    xy_n2 = cam_n3[:, :2] / z_n.clamp_min(1e-6)[:, None] * torch.diagonal(K_33)[:2] + K_33[:2, 2]
    return xy_n2, z_n


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


def optimise_pose(
    still: Gaussians,
    target_hw3: torch.Tensor,
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
) -> torch.Tensor:
    """Refines a world-to-camera pose so the still Gaussians match the still pixels and the
    still correspondences (world points -> pixels, from the flow) reproject where they should.

    The update is a twist applied on the left of the start pose; its translation is in units of
    `scene_scale`, so one learning rate suits scenes of any size. Returns the pose with the lowest
    loss seen, so a good start (PnP) is never made worse by Adam's first, sign-sized steps.
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
    for _ in range(iters):
        w2c_44 = pose_update_44(omega_3, tau_3 * scene_scale) @ w2c_init_44
        out = render(*still_params, w2c_44, K_33, width, height, backend=backend)
        loss = photometric_loss(out.rgb_hw3, target_hw3, ssim_share, weight_hw)
        loss = loss + lambda_flow * flow_loss(project_n2(points_p3, w2c_44, K_33)[0], pixels_p2)
        better = loss.detach() < best_loss
        best_loss = torch.where(better, loss.detach(), best_loss)
        best_w2c_44 = torch.where(better, w2c_44.detach(), best_w2c_44)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return best_w2c_44
