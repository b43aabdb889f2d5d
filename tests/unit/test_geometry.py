"""The one projection (`common/geometry.project_p2`): hand values, numpy and torch alike, both
pose forms, both near-plane rules, and the round trip with back-projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.geometry import (
    axis_angle_33,
    backproject_p3,
    focal_intrinsics_33,
    pixel_grid_hw2,
    project_p2,
    reproject_hw,
    weighted_rigid_fit,
)

K_33 = focal_intrinsics_33(48, 64, 100.0)  # cx = 31.5, cy = 23.5


def _pose_44(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c2w_44 = np.eye(4)
    c2w_44[:3, :3] = axis_angle_33(rng.normal(size=3), rng.uniform(0.1, 1.0))
    c2w_44[:3, 3] = rng.normal(size=3)
    return c2w_44


def test_hand_values_and_near_plane_rules():
    points_p3 = np.array([[1.0, -0.5, 4.0], [0.2, 0.1, 0.0], [1.0, 2.0, -2.0]])
    xy_p2, z_p = project_p2(K_33, np.eye(4), points_p3)
    assert z_p.tolist() == [4.0, 0.0, -2.0]
    assert xy_p2[0].tolist() == [56.5, 11.0]  # 100 * 1 / 4 + 31.5, 100 * -0.5 / 4 + 23.5
    assert xy_p2[1].tolist() == [0.2 / 1e-12 * 100 + 31.5, 0.1 / 1e-12 * 100 + 23.5]
    assert xy_p2[2].tolist() == [-50 + 31.5, -100 + 23.5]  # behind: mirrored, z says so
    clamped_p2, clamped_z = project_p2(K_33, np.eye(4), points_p3, min_z=1e-6)
    assert clamped_z.tolist() == [4.0, 0.0, -2.0]
    assert clamped_p2[0].tolist() == [56.5, 11.0]
    assert clamped_p2[2].tolist() == [1.0 / 1e-6 * 100 + 31.5, 2.0 / 1e-6 * 100 + 23.5]


def test_numpy_torch_and_both_pose_forms_agree():
    rng = np.random.default_rng(1)
    c2w_44 = _pose_44(2)
    points_p3 = rng.normal(size=(500, 3)) * 3
    xy_p2, z_p = project_p2(K_33, c2w_44, points_p3)
    w2c_44 = np.linalg.inv(c2w_44)
    xy_w_p2, z_w_p = project_p2(K_33, w2c_44, points_p3, pose="w2c")
    np.testing.assert_allclose(xy_w_p2, xy_p2, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(z_w_p, z_p, rtol=1e-12, atol=1e-12)
    for pose, pose_44 in (("c2w", c2w_44), ("w2c", w2c_44)):
        xy_t, z_t = project_p2(
            torch.tensor(K_33), torch.tensor(pose_44), torch.tensor(points_p3), pose=pose
        )
        np.testing.assert_allclose(xy_t.numpy(), xy_p2, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(z_t.numpy(), z_p, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="pose='cam'"):
        project_p2(K_33, c2w_44, points_p3, pose="cam")


def test_torch_projection_is_differentiable_and_clamped():
    points_n3 = torch.tensor([[0.5, 0.0, 2.0], [0.5, 0.0, -1.0]], requires_grad=True)
    xy_n2, _ = project_p2(
        torch.tensor(K_33),
        torch.eye(4, dtype=torch.float64),
        points_n3.double(),
        pose="w2c",
        min_z=1e-6,
    )
    xy_n2[:, 0].sum().backward()
    # d(f x / z)/dx = f / z in front; behind the camera z is clamped, so no gradient flows to z
    assert points_n3.grad[0].tolist() == pytest.approx([50.0, 0.0, -100 * 0.5 / 4])
    assert points_n3.grad[1, 2].item() == 0.0


def test_backprojection_round_trip():
    c2w_44 = _pose_44(3)
    xy_p2 = pixel_grid_hw2(48, 64).reshape(-1, 2)
    depth_p = np.random.default_rng(4).uniform(0.5, 20.0, len(xy_p2))
    xy_back_p2, z_p = project_p2(K_33, c2w_44, backproject_p3(K_33, c2w_44, xy_p2, depth_p))
    np.testing.assert_allclose(xy_back_p2, xy_p2, atol=1e-9)
    np.testing.assert_allclose(z_p, depth_p, rtol=1e-12)


def test_reprojection_into_a_camera_moved_along_its_axis():
    """A camera moved 1 unit forward along its own z sees every point 1 unit nearer, at the
    pixel the pinhole puts it: x' = c + (x - c) * d / (d - 1)."""
    c2w_a_44 = _pose_44(5)
    c2w_b_44 = c2w_a_44.copy()
    c2w_b_44[:3, 3] += c2w_a_44[:3, 2]
    depth_hw = np.random.default_rng(6).uniform(2.0, 20.0, (48, 64))
    xy_hw2, z_hw = reproject_hw(depth_hw, K_33, c2w_a_44, c2w_b_44)
    centre_2 = K_33[:2, 2]
    expected_hw2 = (
        centre_2 + (pixel_grid_hw2(48, 64) - centre_2) * (depth_hw / (depth_hw - 1))[..., None]
    )
    np.testing.assert_allclose(z_hw, depth_hw - 1.0, rtol=1e-12)
    np.testing.assert_allclose(xy_hw2, expected_hw2, atol=1e-9)
    same_hw2, same_z_hw = reproject_hw(depth_hw, K_33, c2w_a_44, c2w_a_44)
    np.testing.assert_allclose(same_hw2, pixel_grid_hw2(48, 64), atol=1e-9)
    np.testing.assert_allclose(same_z_hw, depth_hw, rtol=1e-12)


def test_weighted_rigid_fit_recovers_a_rigid_motion_and_ignores_zero_weights():
    rng = np.random.default_rng(3)
    R_b33 = np.stack([axis_angle_33(rng.normal(size=3), rng.uniform(0.0, 3.0)) for _ in range(6)])
    a_bk3 = rng.normal(size=(6, 12, 3))
    b_bk3 = np.einsum("bij,bkj->bki", R_b33, a_bk3) + rng.normal(size=(6, 1, 3))
    w_bk = rng.uniform(0.1, 1.0, size=(6, 12))
    b_bk3[:, 0] += 5.0  # one wrong point per row, weighted 0
    w_bk[:, 0] = 0.0
    fit_b33, ca_b3, cb_b3 = weighted_rigid_fit(a_bk3, b_bk3, w_bk)
    np.testing.assert_allclose(fit_b33, R_b33, atol=1e-12)
    moved_bk3 = np.einsum("bij,bkj->bki", fit_b33, a_bk3 - ca_b3[:, None]) + cb_b3[:, None]
    np.testing.assert_allclose(moved_bk3[:, 1:], b_bk3[:, 1:], atol=1e-12)
    assert np.allclose(np.linalg.det(fit_b33), 1.0)
    # A mirror image is not a rotation: the fit stays a proper rotation.
    mirrored_bk3 = a_bk3 * np.array([1.0, 1.0, -1.0])
    proper_b33, _, _ = weighted_rigid_fit(a_bk3, mirrored_bk3, np.ones((6, 12)))
    assert np.allclose(np.linalg.det(proper_b33), 1.0)
    # No weight at all: the identity.
    still_b33, _, _ = weighted_rigid_fit(a_bk3, b_bk3, np.zeros((6, 12)))
    np.testing.assert_array_equal(still_b33, np.tile(np.eye(3), (6, 1, 1)))
