"""Camera geometry every stage and the evaluation share: projection, back-projection,
intrinsics and rotations.

Conventions: poses are camera-to-world 4x4 matrices (`c2w_44`) except inside the fit's
optimiser, which holds world-to-camera ones (`w2c_44`, what the renderer takes); OpenCV camera
axes (x right, y down, z forward); pixel (x, y) = (column, row) with integer coordinates at pixel
centres (the renderer alone uses gsplat's +0.5 centres, converted at its boundary).

`project_p2` and `apply_33` take numpy arrays or torch tensors alike, so the fit's differentiable
projection and the evaluation's numpy one are the same maths; nothing here imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # annotations only: this module never imports torch
    import torch

    Array = np.ndarray | torch.Tensor

TINY_Z = 1e-12
"""Camera z below this in magnitude is replaced by it in `project_p2`'s division (no NaN)."""


def apply_33(M_33: Array, points_p3: Array) -> Array:
    """M @ p for every row p (numpy arrays or torch tensors).

    numpy goes through einsum, not BLAS: multithreaded BLAS on tall, thin products stalls badly
    when the cores are shared; torch uses its matrix product (differentiable, on any device).
    This is the one place that tells the two apart.
    """
    if isinstance(points_p3, np.ndarray):
        return np.einsum("ij,pj->pi", M_33, points_p3)
    return points_p3 @ M_33.T


def pixel_grid_hw2(height: int, width: int) -> np.ndarray:
    """(x, y) pixel-centre coordinates of every pixel, float64 [H, W, 2]."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([xs, ys], axis=-1)


def focal_intrinsics_33(height: int, width: int, focal_px: float) -> np.ndarray:
    """Square-pixel intrinsics with focal length `focal_px` and the principal point at the image
    centre."""
    return np.array(
        [[focal_px, 0.0, (width - 1) / 2.0], [0.0, focal_px, (height - 1) / 2.0], [0, 0, 1.0]]
    )


def intrinsics_33(height: int, width: int, fov_x_deg: float) -> np.ndarray:
    """Square-pixel intrinsics with horizontal field of view `fov_x_deg`, principal point at the
    image centre."""
    return focal_intrinsics_33(height, width, 0.5 * width / np.tan(np.deg2rad(fov_x_deg) / 2.0))


def project_p2(
    K_33: Array,
    pose_44: Array,
    points_p3: Array,
    *,
    pose: Literal["c2w", "w2c"] = "c2w",
    min_z: float | None = None,
) -> tuple[Array, Array]:
    """World points -> (pixel xy [P, 2], camera z [P]), for numpy arrays or torch tensors.

    `pose_44` is camera-to-world (`pose="c2w"`: the camera frame is R^T (p - C)) or
    world-to-camera (`pose="w2c"`: R p + t). The returned z is the camera z itself (<= 0 behind
    the camera). The division uses it as it is, with |z| < TINY_Z replaced by TINY_Z (points
    behind the camera land mirrored: callers mask them by z), or, with `min_z`, z clamped from
    below at `min_z` (the fit: finite pixels and gradients for points at or behind the camera).
    """
    if pose == "c2w":
        cam_p3 = apply_33(pose_44[:3, :3].T, points_p3 - pose_44[:3, 3])
    elif pose == "w2c":
        cam_p3 = apply_33(pose_44[:3, :3], points_p3) + pose_44[:3, 3]
    else:
        raise ValueError(f"pose={pose!r}: use 'c2w' or 'w2c'")
    z_p = cam_p3[:, 2]
    if min_z is None:
        divisor_p = 1.0 * z_p  # a copy, in both libraries
        divisor_p[abs(z_p) < TINY_Z] = TINY_Z
    else:
        divisor_p = z_p.clip(min=min_z)
    xy_p2 = cam_p3[:, :2] / divisor_p[:, None] * K_33.diagonal()[:2] + K_33[:2, 2]
    return xy_p2, z_p


def camera_rays_p3(K_33: np.ndarray, xy_p2: np.ndarray) -> np.ndarray:
    """Camera-frame rays with z = 1 through pixels (x, y) [P, 2] -> [P, 3] (what the offline
    depth backend triangulates with; `backproject_p3` goes on to world points)."""
    fx, fy, cx, cy = K_33[0, 0], K_33[1, 1], K_33[0, 2], K_33[1, 2]
    return np.stack([(xy_p2[:, 0] - cx) / fx, (xy_p2[:, 1] - cy) / fy, np.ones(len(xy_p2))], axis=1)


def backproject_p3(
    K_33: np.ndarray, c2w_44: np.ndarray, xy_p2: np.ndarray, depth_p: np.ndarray
) -> np.ndarray:
    """Pixels with camera-z depth -> world points [P, 3]."""
    rays_p3 = apply_33(np.linalg.inv(K_33), np.concatenate([xy_p2, np.ones((len(xy_p2), 1))], 1))
    return apply_33(c2w_44[:3, :3], rays_p3 * depth_p[:, None]) + c2w_44[:3, 3]


def reproject_hw(
    depth_hw: np.ndarray, K_33: np.ndarray, c2w_a_44: np.ndarray, c2w_b_44: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of camera a, lifted to its camera-z `depth_hw`, lands in camera b:
    (pixel xy [H, W, 2], camera z [H, W] in b)."""
    h, w = depth_hw.shape
    xy_p2 = pixel_grid_hw2(h, w).reshape(-1, 2)
    world_p3 = backproject_p3(K_33, c2w_a_44, xy_p2, depth_hw.reshape(-1).astype(np.float64))
    xy_b_p2, z_b_p = project_p2(K_33, c2w_b_44, world_p3)
    return xy_b_p2.reshape(h, w, 2), z_b_p.reshape(h, w)


def rigid_flow_hw2(
    depth_hw: np.ndarray, K_33: np.ndarray, c2w_a_44: np.ndarray, c2w_b_44: np.ndarray
) -> np.ndarray:
    """Flow a -> b that camera motion alone induces on a static scene with depth `depth_hw`."""
    xy_b_hw2, _ = reproject_hw(depth_hw, K_33, c2w_a_44, c2w_b_44)
    return xy_b_hw2 - pixel_grid_hw2(*depth_hw.shape)


def relative_pose_from_c2w(
    c2w_a_44: np.ndarray, c2w_b_44: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) with X_b = R X_a + t from two camera-to-world poses."""
    rel_44 = np.linalg.inv(c2w_b_44) @ c2w_a_44
    return rel_44[:3, :3], rel_44[:3, 3]


def skew_33(v_3: np.ndarray) -> np.ndarray:
    """The matrix [v]x with [v]x p = v x p; batched over leading axes ([..., 3] -> [..., 3, 3])."""
    x, y, z = np.moveaxis(np.asarray(v_3), -1, 0)
    zero = np.zeros_like(x)
    rows = (np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1))
    return np.stack(rows, -2)


def rotation_33(axis: str, angle_rad: float) -> np.ndarray:
    """Right-handed rotation about a coordinate axis ('x', 'y' or 'z')."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    if axis == "x":
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == "y":
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def axis_angle_33(axis_3: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues' formula: rotation by `angle_rad` about the unit vector `axis_3`."""
    k = axis_3 / np.linalg.norm(axis_3)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * kx + (1.0 - np.cos(angle_rad)) * kx @ kx


def rotation_angle_deg(R_33: np.ndarray) -> float:
    """Angle of a rotation matrix in degrees (clipped so round-off cannot give NaN)."""
    cos = np.clip((np.trace(R_33) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.rad2deg(np.arccos(cos)))


def weighted_rigid_fit(
    a_bk3: np.ndarray, b_bk3: np.ndarray, w_bk: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched weighted Kabsch: per batch row, the rotation R [B, 3, 3] (det +1) and the weighted
    centroids ca, cb [B, 3] such that b ≈ R (a - ca) + cb minimises sum_k w_k |residual_k|^2.
    Rows whose weights sum to 0 give the identity about their (unweighted) centroids."""
    total_b = w_bk.sum(axis=1, keepdims=True)
    empty_b = total_b[:, 0] <= 0
    share_bk = np.where(
        empty_b[:, None], 1.0 / a_bk3.shape[1], w_bk / np.where(empty_b, 1, total_b[:, 0])[:, None]
    )
    ca_b3 = np.einsum("bk,bkc->bc", share_bk, a_bk3)
    cb_b3 = np.einsum("bk,bkc->bc", share_bk, b_bk3)
    cov_b33 = np.einsum("bk,bki,bkj->bij", share_bk, b_bk3 - cb_b3[:, None], a_bk3 - ca_b3[:, None])
    U_b33, _, Vt_b33 = np.linalg.svd(cov_b33)
    D_b33 = np.repeat(np.eye(3)[None], len(a_bk3), axis=0)
    D_b33[:, 2, 2] = np.sign(np.linalg.det(U_b33 @ Vt_b33))  # U, Vt orthogonal: det is +-1
    R_b33 = U_b33 @ D_b33 @ Vt_b33
    R_b33[empty_b] = np.eye(3)
    return R_b33, ca_b3, cb_b3
