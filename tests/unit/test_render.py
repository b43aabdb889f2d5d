"""The public `render` call against exact expectations: analytic footprints, depth ordering,
culling, the transmittance stop rule, backend choice, input checks, and a synthetic scene."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from services.common.errors import FailedPreconditionError, InvalidArgumentError
from services.common.geometry import backproject_p3, pixel_grid_hw2
from services.fit.projection import quat_to_rotmat_n33
from services.fit.rasterizer_gsplat import gsplat_available
from services.fit.render import render, resolve_backend
from services.synthetic.scene import SceneConfig, make_scene

WIDTH, HEIGHT = 32, 24
F = 30.0
# A turned and shifted camera; principal point off the pixel grid to pin the convention.
W2C = torch.eye(4)
W2C[:3, :3] = quat_to_rotmat_n33(torch.tensor([[0.9, 0.2, -0.1, 0.3]]))[0]
W2C[:3, 3] = torch.tensor([0.3, -0.2, 0.5])
K = torch.tensor([[F, 0.0, 13.25], [0.0, F, 10.6], [0.0, 0.0, 1.0]])
RED, GREEN, BLUE = torch.eye(3)


def _world(cam_n3: torch.Tensor) -> torch.Tensor:
    """Points given in this camera's frame, in world coordinates."""
    return (cam_n3 - W2C[:3, 3]) @ W2C[:3, :3]


def _gaussians(cam_n3, sigma_m, opacities, colors_n3):
    """Isotropic Gaussians placed in camera coordinates (random, unnormalised rotations)."""
    n = len(cam_n3)
    return dict(
        means_n3=_world(torch.as_tensor(cam_n3, dtype=torch.float32)),
        quats_n4=torch.randn(n, 4, generator=torch.Generator().manual_seed(n)) * 3.0,
        scales_n3=torch.as_tensor(sigma_m, dtype=torch.float32)[:, None].expand(n, 3).clone(),
        opacities_n=torch.as_tensor(opacities, dtype=torch.float32),
        colors_n3=torch.as_tensor(colors_n3, dtype=torch.float32),
    )


def _analytic_alpha_hw(centre_xy, var_px2, opacity):
    """gsplat's alpha of an isotropic 2D Gaussian at integer pixel centres."""
    ys, xs = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    d2 = (xs - centre_xy[0]) ** 2 + (ys - centre_xy[1]) ** 2
    alpha = torch.clamp(opacity * torch.exp(-0.5 * d2 / var_px2), max=0.999)
    return torch.where(alpha >= 1 / 255, alpha, 0.0)


def test_single_isotropic_gaussian_gives_the_analytic_footprint():
    z, sigma_m, opacity = 3.0, 0.2, 0.7
    g = _gaussians([[0.0, 0.0, z]], [sigma_m], [opacity], [[0.2, 0.5, 0.9]])
    out = render(**g, w2c_44=W2C, K_33=K, width=WIDTH, height=HEIGHT)

    var_px2 = (F * sigma_m / z) ** 2 + 0.3  # EWA projection plus gsplat's eps2d low-pass
    alpha_hw = _analytic_alpha_hw((13.25, 10.6), var_px2, opacity)
    assert alpha_hw[alpha_hw > 0].numel() > 100  # a real footprint with a thresholded rim
    assert torch.allclose(out.alpha_hw, alpha_hw, atol=1e-6, rtol=0)
    assert torch.allclose(out.rgb_hw3, alpha_hw[..., None] * g["colors_n3"][0], atol=1e-6)
    assert torch.allclose(out.depth_hw, alpha_hw * z, atol=1e-5)
    assert torch.allclose(out.means2d_n2, torch.tensor([[13.25, 10.6]]), atol=1e-5)
    extent = math.sqrt(2 * math.log(255 * opacity))  # where alpha falls to 1/255
    assert out.radii_n.tolist() == [math.ceil(extent * math.sqrt(var_px2))]


def test_two_overlapping_gaussians_composite_front_to_back():
    # Both on the optical axis (so their footprints are exactly isotropic), of different sizes;
    # the back one is listed first: the order must come from depth.
    back = ([0.0, 0.0, 4.0], 0.5, 0.8, GREEN)
    front = ([0.0, 0.0, 2.0], 0.1, 0.6, RED)
    cams, sigmas, opacities, colors = zip(back, front, strict=True)
    g = _gaussians(torch.tensor(cams), sigmas, opacities, torch.stack(colors))
    background = torch.tensor([0.1, 0.2, 0.3])
    out = render(**g, w2c_44=W2C, K_33=K, width=WIDTH, height=HEIGHT, background_3=background)

    def alpha_of(cam, sigma, opacity):
        centre = (F * cam[0] / cam[2] + 13.25, F * cam[1] / cam[2] + 10.6)
        return _analytic_alpha_hw(centre, (F * sigma / cam[2]) ** 2 + 0.3, opacity)

    a_back, a_front = alpha_of(*back[:3]), alpha_of(*front[:3])
    t_after_front = 1 - a_front
    expected_rgb = (
        a_front[..., None] * RED
        + (t_after_front * a_back)[..., None] * GREEN
        + (t_after_front * (1 - a_back))[..., None] * background
    )
    assert ((a_front > 0.3) & (a_back > 0.3)).sum() > 4  # they do overlap
    assert ((a_front < 0.1) & (a_back > 0.3)).sum() > 20  # the back one shows around it
    assert torch.allclose(out.rgb_hw3, expected_rgb, atol=1e-6)
    assert torch.allclose(out.depth_hw, a_front * 2.0 + t_after_front * a_back * 4.0, atol=1e-5)
    assert torch.allclose(out.alpha_hw, 1 - t_after_front * (1 - a_back), atol=1e-6)


def test_a_gaussian_beside_the_view_uses_the_clamped_jacobian():
    # Centre right of the image, beyond x/z = 1.3 half fields of view: gsplat evaluates the
    # perspective Jacobian at the clamped x/z, which widens the footprint by (1 + lim^2) only.
    z, sigma_m, opacity, x_over_z = 2.0, 0.25, 0.9, 0.8
    g = _gaussians([[x_over_z * z, 0.0, z]], [sigma_m], [opacity], [[1.0, 1.0, 1.0]])
    out = render(**g, w2c_44=W2C, K_33=K, width=WIDTH, height=HEIGHT)

    cx_gsplat = 13.25 + 0.5  # the limit is gsplat's, in its pixel convention
    lim = (WIDTH - cx_gsplat) / F + 0.3 * (0.5 * WIDTH / F)
    assert x_over_z > lim
    var_y = (F * sigma_m / z) ** 2 + 0.3
    var_x = (F * sigma_m / z) ** 2 * (1 + lim**2) + 0.3
    ys, xs = torch.meshgrid(torch.arange(HEIGHT), torch.arange(WIDTH), indexing="ij")
    u = F * x_over_z + 13.25
    alpha_hw = opacity * torch.exp(-0.5 * ((xs - u) ** 2 / var_x + (ys - 10.6) ** 2 / var_y))
    alpha_hw = torch.where(alpha_hw >= 1 / 255, alpha_hw, 0.0)
    assert u > WIDTH and (alpha_hw > 0).sum() > 20
    assert torch.allclose(out.alpha_hw, alpha_hw, atol=1e-6, rtol=0)


def test_the_gaussian_that_would_drop_transmittance_to_1e4_is_left_out():
    # Three opaque Gaussians on the axis through pixel (13, 10): alpha clamps to 0.999, so
    # after the first T = 1e-3; the second would bring it to 1e-6 and ends the pixel.
    K_on_grid = K.clone()
    K_on_grid[:2, 2] = torch.tensor([13.0, 10.0])
    g = _gaussians(
        torch.tensor([[0, 0, 3.0], [0, 0, 2.0], [0, 0, 4.0]]),
        [0.5] * 3,
        [1.0] * 3,
        torch.stack([GREEN, RED, BLUE]),
    )
    out = render(**g, w2c_44=W2C, K_33=K_on_grid, width=WIDTH, height=HEIGHT)
    assert torch.allclose(out.rgb_hw3[10, 13], 0.999 * RED, atol=1e-6, rtol=0)
    assert out.alpha_hw[10, 13].item() == pytest.approx(0.999, abs=1e-6)
    assert out.depth_hw[10, 13].item() == pytest.approx(0.999 * 2.0, abs=1e-5)


@pytest.mark.parametrize("z", [-2.0, 0.005, 50.0])
def test_gaussians_behind_the_camera_or_outside_near_far_render_nothing(z):
    g = _gaussians([[0.0, 0.0, z]], [0.3], [0.9], [[1.0, 1.0, 1.0]])
    g = {k: v.requires_grad_(True) for k, v in g.items()}
    w2c = W2C.clone().requires_grad_(True)
    background = torch.tensor([0.1, 0.2, 0.3])
    out = render(
        **g,
        w2c_44=w2c,
        K_33=K,
        width=WIDTH,
        height=HEIGHT,
        background_3=background,
        near=0.01,
        far=20.0,
    )
    assert torch.equal(out.rgb_hw3, background.expand(HEIGHT, WIDTH, 3))
    assert not out.alpha_hw.any() and not out.depth_hw.any()
    assert out.radii_n.tolist() == [0] and not out.means2d_n2.any()
    (out.rgb_hw3.sum() + out.depth_hw.sum() + out.means2d_n2.sum()).backward()
    for tensor in [*g.values(), w2c]:
        assert torch.equal(tensor.grad, torch.zeros_like(tensor))


def test_gradients_reach_every_input_through_render():
    g = _gaussians(
        torch.tensor([[0.1, 0.0, 3.0], [-0.2, 0.1, 2.5]]),
        [0.2, 0.3],
        [0.6, 0.5],
        torch.stack([RED, GREEN]),
    )
    g = {k: v.requires_grad_(True) for k, v in g.items()}
    w2c = W2C.clone().requires_grad_(True)
    out = render(**g, w2c_44=w2c, K_33=K, width=WIDTH, height=HEIGHT)
    (out.rgb_hw3.mean() + out.depth_hw.mean() + out.alpha_hw.mean()).backward()
    for name, tensor in [*g.items(), ("w2c_44", w2c)]:
        assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0, name
    assert not w2c.grad[3].any()  # the last row of a rigid transform is not used


def test_no_gaussians_gives_the_background():
    g = _gaussians(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0), torch.zeros(0, 3))
    out = render(
        **g,
        w2c_44=W2C,
        K_33=K,
        width=WIDTH,
        height=HEIGHT,
        background_3=torch.tensor([0.5, 0.5, 0.5]),
    )
    assert torch.equal(out.rgb_hw3, torch.full((HEIGHT, WIDTH, 3), 0.5))
    assert out.means2d_n2.shape == (0, 2) and out.radii_n.shape == (0,)


def test_synthetic_scene_points_project_where_the_flow_says():
    """Gaussians on frame-0 surface points, seen from frame 1: their centres land on the
    ground-truth flow targets (pins pose, intrinsics and pixel conventions to synth's)."""
    scene = make_scene(SceneConfig(n_frames=2, n_objects=0, n_tracks=4))
    xy_p2 = pixel_grid_hw2(*scene.depth_thw.shape[1:]).reshape(-1, 2)
    valid_p = scene.valid_fwd_t1hw[0].reshape(-1)
    points_p3 = backproject_p3(
        scene.K_33, scene.c2w_t44[0], xy_p2[valid_p], scene.depth_thw[0].reshape(-1)[valid_p]
    )
    n = len(points_p3)
    out = render(
        torch.tensor(points_p3, dtype=torch.float32),
        torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4),
        torch.full((n, 3), 1e-3),
        torch.full((n,), 0.9),
        torch.rand(n, 3),
        torch.tensor(np.linalg.inv(scene.c2w_t44[1]), dtype=torch.float32),
        torch.tensor(scene.K_33, dtype=torch.float32),
        scene.config.width,
        scene.config.height,
    )
    target_p2 = xy_p2[valid_p] + scene.flow_fwd_t1hw2[0].reshape(-1, 2)[valid_p]
    assert n > 1000 and (out.radii_n > 0).all()
    assert np.abs(out.means2d_n2.numpy() - target_p2).max() < 2e-3


def test_synthetic_frame_reprojects_to_the_next_frame():
    """One small Gaussian per frame-0 pixel, rendered from frame 1's camera, looks like frame 1
    and has its depth wherever frame 1 sees what frame 0 saw (a static scene)."""
    scene = make_scene(SceneConfig(n_frames=2, n_objects=0, n_tracks=4))
    height, width = scene.depth_thw.shape[1:]
    depth_p = scene.depth_thw[0].reshape(-1).astype(np.float64)
    points_p3 = backproject_p3(
        scene.K_33, scene.c2w_t44[0], pixel_grid_hw2(height, width).reshape(-1, 2), depth_p
    )
    n = len(points_p3)
    sigma_m = torch.tensor(0.6 * depth_p / scene.K_33[0, 0], dtype=torch.float32)
    out = render(
        torch.tensor(points_p3, dtype=torch.float32),
        torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4),
        sigma_m[:, None].expand(n, 3),
        torch.full((n,), 0.95),
        torch.tensor(scene.frames_thw3[0].reshape(-1, 3) / 255.0, dtype=torch.float32),
        torch.tensor(np.linalg.inv(scene.c2w_t44[1]), dtype=torch.float32),
        torch.tensor(scene.K_33, dtype=torch.float32),
        width,
        height,
    )
    seen = scene.valid_bwd_t1hw[0]
    mse = ((out.rgb_hw3.numpy() - scene.frames_thw3[1] / 255.0) ** 2)[seen].mean()
    depth_hw = out.depth_hw.numpy() / np.maximum(out.alpha_hw.numpy(), 1e-6)
    rel_err = np.abs(depth_hw - scene.depth_thw[1])[seen] / scene.depth_thw[1][seen]
    assert seen.mean() > 0.8
    assert -10 * np.log10(mse) > 30.0
    assert np.median(rel_err) < 0.01


def test_backend_choice_and_errors():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(InvalidArgumentError, match="backend"):
        resolve_backend("opengl", cpu)  # type: ignore[arg-type]
    g = _gaussians([[0.0, 0.0, 3.0]], [0.2], [0.7], [[1.0, 0.0, 0.0]])
    if gsplat_available():
        with pytest.raises(InvalidArgumentError, match="CUDA"):
            render(**g, w2c_44=W2C, K_33=K, width=WIDTH, height=HEIGHT, backend="gsplat")
    else:
        with pytest.raises(FailedPreconditionError, match=r"pip install gsplat==1\.5\.3"):
            render(**g, w2c_44=W2C, K_33=K, width=WIDTH, height=HEIGHT, backend="gsplat")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"means_n3": np.zeros((1, 3), np.float32)}, "means_n3"),
        ({"means_n3": torch.zeros(3)}, "means_n3"),
        ({"quats_n4": torch.ones(2, 4)}, "quats_n4"),
        ({"opacities_n": torch.ones(1, 1)}, "opacities_n"),
        ({"colors_n3": torch.ones(1, 3, dtype=torch.float64)}, "colors_n3"),
        ({"w2c_44": torch.eye(3)}, "w2c_44"),
        ({"background_3": torch.ones(4)}, "background_3"),
        ({"width": 0}, "width"),
        ({"near": 5.0, "far": 1.0}, "near"),
    ],
)
def test_bad_inputs_name_the_field(change, field):
    args = _gaussians([[0.0, 0.0, 3.0]], [0.2], [0.7], [[1.0, 0.0, 0.0]])
    args |= dict(w2c_44=W2C, K_33=K, width=WIDTH, height=HEIGHT) | change
    with pytest.raises(InvalidArgumentError) as info:
        render(**args)
    assert info.value.field == field
