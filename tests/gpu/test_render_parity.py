"""The PyTorch renderer against gsplat on the GPU: same random scene, same CUDA float32 inputs,
compared on rgb, depth, alpha, projected centres, radii and the gradients of every input.

Run: .venv/bin/python -m pytest tests/gpu/test_render_parity.py -q -s   (-s shows the table)

Expected differences, and so the tolerances: float32 rounding (~1e-6 relative) and gsplat's
fast-math exp; rarely a (Gaussian, pixel) pair sits exactly on the alpha = 1/255 cut and flips,
changing that pixel by at most ~1/255 (hence the max bound, with the mean held much tighter).
gsplat's backward pass rebuilds transmittance by dividing by (1 - alpha) in float32, which costs
it some gradient precision in saturated pixels (hence 1% / 5% on gradients).
"""

from __future__ import annotations

import pytest
import torch

from services.fit.rasterizer_gsplat import gsplat_available
from services.fit.render import render
from tests.unit.test_render_rasterizer import random_gaussians

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (an NVIDIA GPU)"),
    pytest.mark.skipif(not gsplat_available(), reason="needs gsplat: pip install gsplat==1.5.3"),
]

WIDTH, HEIGHT = 192, 144
GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors", "w2c", "background")
IMAGE_MAX_ABS, IMAGE_MEAN_ABS = 5e-3, 1e-5  # rgb and alpha; depth: times the largest depth
GRAD_MAX_REL, GRAD_L2_REL = 5e-2, 1e-2  # of the gsplat gradient's largest entry / its norm


def _render_and_grads(scene: dict[str, torch.Tensor], backend: str):
    inputs = {k: v.clone().requires_grad_(k in GRAD_NAMES) for k, v in scene.items()}
    out = render(
        inputs["means"],
        inputs["quats"],
        inputs["scales"],
        inputs["opacities"],
        inputs["colors"],
        inputs["w2c"],
        inputs["K"],
        WIDTH,
        HEIGHT,
        background_3=inputs["background"],
        backend=backend,
    )
    gen = torch.Generator().manual_seed(7)
    device = scene["means"].device
    weights_hw5 = torch.rand(HEIGHT, WIDTH, 5, generator=gen).to(device)
    weights_n2 = torch.rand(len(scene["means"]), 2, generator=gen).to(device)
    stacked_hw5 = torch.cat([out.rgb_hw3, out.depth_hw[..., None], out.alpha_hw[..., None]], -1)
    loss = (stacked_hw5 * weights_hw5).sum() + 1e-2 * (out.means2d_n2 * weights_n2).sum()
    grads = torch.autograd.grad(loss, [inputs[k] for k in GRAD_NAMES])
    return out, dict(zip(GRAD_NAMES, grads, strict=True))


@pytest.mark.parametrize(
    ("seed", "n", "size_px", "min_opacity"),
    [
        (0, 6000, (0.3, 6.0), 0.0),  # mixed sizes, most pixels see several Gaussians
        (1, 3000, (3.0, 12.0), 0.85),  # large and opaque: pixels saturate (T < 1e-4 stop)
    ],
)
def test_torch_backend_matches_gsplat(seed, n, size_px, min_opacity):
    scene = random_gaussians(
        n, WIDTH, HEIGHT, seed, dtype=torch.float32, device="cuda", size_px=size_px
    )
    scene["opacities"] = min_opacity + (1 - min_opacity) * scene["opacities"]
    ours, our_grads = _render_and_grads(scene, "torch")
    ref, ref_grads = _render_and_grads(scene, "gsplat")

    visible_n = (ref.radii_n > 0) & (ours.radii_n > 0)
    depth_scale = ref.depth_hw.abs().max().item()
    rows = {
        "rgb": (ours.rgb_hw3 - ref.rgb_hw3, 1.0),
        "alpha": (ours.alpha_hw - ref.alpha_hw, 1.0),
        "depth": (ours.depth_hw - ref.depth_hw, depth_scale),
    }
    print(
        f"\nscene seed {seed}: N={n}, {WIDTH}x{HEIGHT}, visible {int(visible_n.sum())}, "
        f"mean alpha {ref.alpha_hw.mean():.3f}"
    )
    for name, (diff, scale) in rows.items():
        print(
            f"  {name:<10} max |diff| {diff.abs().max():.2e}  mean {diff.abs().mean():.2e}"
            f"  (scale {scale:.3g})"
        )
    means2d_diff = (ours.means2d_n2 - ref.means2d_n2)[visible_n].abs().max().item()
    radii_diff = (ours.radii_n - ref.radii_n).abs()
    print(f"  means2d    max |diff| {means2d_diff:.2e} px over visible Gaussians")
    print(
        f"  radii      differ for {int((radii_diff > 0).sum())} of {n}, by at most "
        f"{int(radii_diff.max())} px"
    )
    grad_errors = {}
    for name in GRAD_NAMES:
        diff, g = our_grads[name] - ref_grads[name], ref_grads[name]
        grad_errors[name] = (
            (diff.abs().max() / g.abs().max()).item(),
            (diff.norm() / g.norm()).item(),
        )
        print(
            f"  d/d{name:<10} max |diff| {diff.abs().max():.2e} = {grad_errors[name][0]:.1e} "
            f"of max |g| {g.abs().max():.2e}; L2 rel {grad_errors[name][1]:.1e}"
        )

    for name, (diff, scale) in rows.items():
        assert diff.abs().max() <= IMAGE_MAX_ABS * scale, name
        assert diff.abs().mean() <= IMAGE_MEAN_ABS * scale, name
    assert torch.equal(ref.radii_n > 0, ours.radii_n > 0)
    assert radii_diff.max() <= 1 and (radii_diff > 0).float().mean() < 0.01
    assert means2d_diff < 1e-3
    for name, (max_rel, l2_rel) in grad_errors.items():
        assert max_rel <= GRAD_MAX_REL and l2_rel <= GRAD_L2_REL, name
