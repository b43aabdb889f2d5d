"""Pinhole camera helpers shared by the synthetic scenes, the metrics and the two-view check.

Conventions: OpenCV camera axes (x right, y down, z forward); pixel (x, y) = (column, row) with
integer coordinates at pixel centres; poses are camera-to-world 4x4 matrices (`c2w_44`).
"""

from __future__ import annotations

import numpy as np


def apply_33(M_33: np.ndarray, points_p3: np.ndarray) -> np.ndarray:
    """M @ p for every row p, i.e. points_p3 @ M.T, without BLAS: multithreaded BLAS on tall,
    thin products stalls badly when the cores are shared."""
    return np.einsum("ij,pj->pi", M_33, points_p3)


def pixel_grid_hw2(height: int, width: int) -> np.ndarray:
    """(x, y) pixel-centre coordinates of every pixel, float64 [H, W, 2]."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([xs, ys], axis=-1)


def intrinsics_33(height: int, width: int, fov_x_deg: float) -> np.ndarray:
    """Square-pixel intrinsics with the principal point at the image centre."""
    f = 0.5 * width / np.tan(np.deg2rad(fov_x_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def project_p2(
    K_33: np.ndarray, c2w_44: np.ndarray, points_p3: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """World points -> (pixel xy [P, 2], camera z [P]). Points behind the camera get z <= 0."""
    R, C = c2w_44[:3, :3], c2w_44[:3, 3]
    cam_p3 = apply_33(R.T, points_p3 - C)
    z_p = cam_p3[:, 2]
    safe_z = np.where(np.abs(z_p) < 1e-12, 1e-12, z_p)
    xy_p2 = (cam_p3[:, :2] / safe_z[:, None]) * np.diag(K_33)[:2] + K_33[:2, 2]
    return xy_p2, z_p


def backproject_p3(
    K_33: np.ndarray, c2w_44: np.ndarray, xy_p2: np.ndarray, depth_p: np.ndarray
) -> np.ndarray:
    """Pixels with camera-z depth -> world points [P, 3]."""
    rays_p3 = apply_33(np.linalg.inv(K_33), np.concatenate([xy_p2, np.ones((len(xy_p2), 1))], 1))
    return apply_33(c2w_44[:3, :3], rays_p3 * depth_p[:, None]) + c2w_44[:3, 3]


def rigid_flow_hw2(
    depth_hw: np.ndarray, K_33: np.ndarray, c2w_a_44: np.ndarray, c2w_b_44: np.ndarray
) -> np.ndarray:
    """Flow a -> b that camera motion alone induces on a static scene with depth `depth_hw`."""
    h, w = depth_hw.shape
    xy_p2 = pixel_grid_hw2(h, w).reshape(-1, 2)
    world_p3 = backproject_p3(K_33, c2w_a_44, xy_p2, depth_hw.reshape(-1).astype(np.float64))
    xy_b_p2, _ = project_p2(K_33, c2w_b_44, world_p3)
    return (xy_b_p2 - xy_p2).reshape(h, w, 2)


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
