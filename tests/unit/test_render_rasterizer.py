"""The fast PyTorch rasteriser against its dense reference, and autograd against finite
differences: images, depth, alpha and gradients w.r.t. every input, the camera pose included."""

from __future__ import annotations

import math

import pytest
import torch

from services.fit.projection import quat_to_rotmat_n33
from services.fit.rasterizer_torch import render_torch, segmented_cumsum

INPUT_NAMES = ("means", "quats", "scales", "opacities", "colors", "w2c", "background")


def random_gaussians(
    n: int,
    width: int,
    height: int,
    seed: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    size_px: tuple[float, float] = (0.3, 6.0),
) -> dict[str, torch.Tensor]:
    """A random scene: N Gaussians spread over the view at 1.5-6 m (5% behind the camera, some
    centred off the image), footprints of `size_px` standard deviations in pixels, random
    rotations, opacities 0.05-1 and colours, seen by a camera turned and shifted away from the
    identity. Returns the tensor inputs by name (K, w2c and background included).
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    f = 0.9 * width
    K = torch.tensor([[f, 0, 0.47 * width], [0, 1.05 * f, 0.53 * height], [0, 0, 1]])
    z = uniform(n, lo=1.5, hi=6.0)
    x_px, y_px = uniform(n, lo=-0.1, hi=1.1) * width, uniform(n, lo=-0.1, hi=1.1) * height
    z[: n // 20] *= -1.0  # behind the camera
    cam_n3 = torch.stack([(x_px - K[0, 2]) * z / K[0, 0], (y_px - K[1, 2]) * z / K[1, 1], z], 1)
    c2w = torch.eye(4, dtype=torch.float64)
    turn_14 = torch.tensor([[1.0, 0.05, -0.08, 0.03]], dtype=torch.float64)
    c2w[:3, :3] = quat_to_rotmat_n33(turn_14)[0]
    c2w[:3, 3] = torch.tensor([0.2, -0.1, 0.3])
    means = cam_n3 @ c2w[:3, :3].T + c2w[:3, 3]
    sigma_px = torch.exp(uniform(n, 3, lo=math.log(size_px[0]), hi=math.log(size_px[1])))
    scene = {
        "means": means,
        "quats": torch.randn(n, 4, generator=gen, dtype=torch.float64),
        "scales": sigma_px * z.abs()[:, None] / f,
        "opacities": uniform(n, lo=0.05, hi=1.0),
        "colors": uniform(n, 3),
        "w2c": torch.linalg.inv(c2w),
        "K": K.to(torch.float64),
        "background": uniform(3),
    }
    return {k: v.to(device=device, dtype=dtype) for k, v in scene.items()}


def _render(scene: dict[str, torch.Tensor], width: int, height: int, dense: bool):
    return render_torch(
        scene["means"],
        scene["quats"],
        scene["scales"],
        scene["opacities"],
        scene["colors"],
        scene["w2c"],
        scene["K"],
        width,
        height,
        scene["background"],
        near=0.01,
        far=1e4,
        dense_reference=dense,
    )


def _outputs_and_grads(scene, width, height, dense):
    """Rendered (rgb, depth, alpha) and the gradient of a random linear loss of them."""
    inputs = {k: v.clone().requires_grad_(k in INPUT_NAMES) for k, v in scene.items()}
    rgbd_hw4, alpha_hw, _, _ = _render(inputs, width, height, dense)
    gen = torch.Generator().manual_seed(1)
    weights_hw5 = torch.rand(height, width, 5, generator=gen, dtype=torch.float64)
    rendered_hw5 = torch.cat([rgbd_hw4, alpha_hw[..., None]], dim=-1)
    loss = (rendered_hw5 * weights_hw5.to(rendered_hw5.dtype)).sum()
    grads = torch.autograd.grad(loss, [inputs[k] for k in INPUT_NAMES])
    return rendered_hw5.detach(), dict(zip(INPUT_NAMES, grads, strict=True))


@pytest.mark.parametrize(
    ("seed", "n", "width", "height", "size_px"),
    [
        (0, 300, 40, 30, (0.3, 6.0)),  # mixed sizes, some pixels saturate (T < 1e-4 stop)
        (1, 120, 33, 21, (0.2, 1.0)),  # sub-pixel Gaussians, odd image size
        (2, 40, 24, 18, (3.0, 20.0)),  # large Gaussians reaching past the image border
    ],
)
def test_sparse_matches_dense_reference_in_float64(seed, n, width, height, size_px):
    scene = random_gaussians(n, width, height, seed, size_px=size_px)
    fast, fast_grads = _outputs_and_grads(scene, width, height, dense=False)
    ref, ref_grads = _outputs_and_grads(scene, width, height, dense=True)

    assert ref[..., 4].max() > 0.5  # the scene is not empty
    assert torch.allclose(fast, ref, rtol=0, atol=1e-10)
    for name in INPUT_NAMES:
        scale = ref_grads[name].abs().max()
        assert scale > 0, f"no gradient reaches {name}"
        err = (fast_grads[name] - ref_grads[name]).abs().max()
        assert err <= 1e-9 * scale, f"{name}: gradient differs by {err} (max {scale})"


def test_dense_scene_saturates_and_still_matches():
    """Many opaque layers: the 'stop before T <= 1e-4' rule must cut the same Gaussians."""
    width, height = 24, 16
    scene = random_gaussians(200, width, height, seed=3, size_px=(4.0, 8.0))
    scene["opacities"] = 0.9 + 0.1 * scene["opacities"]
    fast, fast_grads = _outputs_and_grads(scene, width, height, dense=False)
    ref, ref_grads = _outputs_and_grads(scene, width, height, dense=True)
    assert (ref[..., 4] > 1 - 1e-3).float().mean() > 0.5  # most pixels are deep in the stack
    assert torch.allclose(fast, ref, rtol=0, atol=1e-10)
    for name in INPUT_NAMES:
        scale = ref_grads[name].abs().max()
        assert (fast_grads[name] - ref_grads[name]).abs().max() <= 1e-9 * scale, name


def test_sparse_matches_dense_reference_in_float32():
    width, height = 40, 30
    scene = random_gaussians(300, width, height, seed=4, dtype=torch.float32)
    fast, fast_grads = _outputs_and_grads(scene, width, height, dense=False)
    ref, ref_grads = _outputs_and_grads(scene, width, height, dense=True)
    assert fast.dtype == torch.float32
    depth_scale = ref[..., 3].abs().max()
    assert (fast[..., :3] - ref[..., :3]).abs().max() < 1e-5
    assert (fast[..., 4] - ref[..., 4]).abs().max() < 1e-5
    assert (fast[..., 3] - ref[..., 3]).abs().max() < 1e-5 * depth_scale
    for name in INPUT_NAMES:
        scale = ref_grads[name].abs().max()
        assert (fast_grads[name] - ref_grads[name]).abs().max() < 1e-4 * scale, name


def test_gradients_match_finite_differences():
    """Autograd through projection and compositing, w.r.t. every input and the pose."""
    width, height = 12, 10
    scene = random_gaussians(6, width, height, seed=5, size_px=(1.0, 3.0))
    names = list(INPUT_NAMES)
    weights_hw5 = torch.rand(
        height, width, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64
    )

    def weighted_sum(*tensors):
        inputs = dict(scene) | dict(zip(names, tensors, strict=True))
        rgbd_hw4, alpha_hw, _, _ = _render(inputs, width, height, dense=False)
        return (torch.cat([rgbd_hw4, alpha_hw[..., None]], dim=-1) * weights_hw5).sum()

    tensors = [scene[k].clone().requires_grad_(True) for k in names]
    grads = torch.autograd.grad(weighted_sum(*tensors), tensors)
    assert all(g.abs().sum() > 0 for g in grads)  # every input matters in this scene
    assert torch.autograd.gradcheck(weighted_sum, tensors, eps=1e-7, atol=1e-6, rtol=1e-5)


def test_segmented_cumsum_restarts_at_each_segment():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    segments = torch.tensor([0, 0, 3, 3, 3, 7])
    expected = torch.tensor([1.0, 3.0, 3.0, 7.0, 12.0, 6.0], dtype=torch.float64)
    assert torch.equal(segmented_cumsum(values, segments), expected)
