"""Differentiable rendering of 3D Gaussians: one call, two backends chosen by device.

- gsplat 1.5.x on CUDA (`rasterizer_gsplat`), fast, JIT-compiled on first use;
- the project's own PyTorch rasteriser (`projection` + `rasterizer_torch`) everywhere else,
  readable and held to gsplat by tests/gpu/test_render_parity.py.

Both render RGB, alpha-weighted camera z and alpha, and pass gradients to every Gaussian
parameter and to the camera pose. docs/renderer.md has the conventions and measured speeds.

Pixel convention: the project's (as services/common/geometry.py): pixel (x, y) = (column,
row) has its centre at integer coordinates, so `K_33` maps a point to the pixel it lands in
without a half-pixel shift, and `means2d_n2` is in the same frame. gsplat puts pixel centres at
+0.5; `render` shifts the principal point by half a pixel on the way in and the centres back on
the way out, for both backends alike.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from services.common.errors import InvalidArgumentError
from services.fit.rasterizer_gsplat import gsplat_available, render_gsplat, require_gsplat
from services.fit.rasterizer_torch import render_torch

logger = logging.getLogger(__name__)

Backend = Literal["auto", "torch", "gsplat"]


@dataclass
class RenderOutput:
    """One rendered view. Pixel values are differentiable; `radii_n` is not.

    The projected centres and radii are derived on first use: the optimisation steps never read
    them, and on CUDA every small kernel they would cost is host time (docs/fit.md)."""

    rgb_hw3: Tensor
    """Composited colour, plus the background times the remaining transmittance."""
    depth_hw: Tensor
    """Alpha-weighted accumulated camera z, sum_i w_i z_i (gsplat "RGB+D"); divide by
    `alpha_hw` for the expected depth where alpha is not ~0."""
    alpha_hw: Tensor
    """Accumulated opacity, 1 - final transmittance."""
    renderer_means2d_n2: Tensor
    """Projected centres as the renderer gives them (pixel centres at +0.5, any value where
    culled); use `means2d_n2`."""
    renderer_radii_n2: Tensor
    """The renderer's per-axis footprint half-extents (0 = culled); use `radii_n`."""

    @functools.cached_property
    def means2d_n2(self) -> Tensor:
        """Projected centres (x, y) in pixels (integer pixel centres); 0 where `radii_n` is 0."""
        visible_n = (self.renderer_radii_n2 > 0).all(dim=-1)
        centres_n2 = self.renderer_means2d_n2
        return torch.where(visible_n[:, None], centres_n2 - 0.5, torch.zeros_like(centres_n2))

    @functools.cached_property
    def radii_n(self) -> Tensor:
        """int32 half-extent in pixels of each Gaussian's screen footprint (the larger of its
        box's x and y half-extents); 0 = culled (outside [near, far], too faint, or off the
        image)."""
        return self.renderer_radii_n2.amax(dim=-1).to(torch.int32)


def resolve_backend(backend: Backend, device: torch.device) -> Literal["torch", "gsplat"]:
    """auto = gsplat for CUDA tensors when gsplat imports, else torch.

    Raises FailedPreconditionError for "gsplat" when it is not installed, InvalidArgumentError
    for "gsplat" on a non-CUDA device or an unknown name.
    """
    if backend not in ("auto", "torch", "gsplat"):
        raise InvalidArgumentError("backend", f"{backend!r} is not one of auto, torch, gsplat")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if backend == "gsplat":
        require_gsplat()
        if device.type != "cuda":
            raise InvalidArgumentError(
                "backend",
                f"gsplat renders CUDA tensors only, these are on {device}; "
                "use backend='torch' or 'auto'",
            )
    return backend


def render(
    means_n3: Tensor,
    quats_n4: Tensor,
    scales_n3: Tensor,
    opacities_n: Tensor,
    colors_n3: Tensor,
    w2c_44: Tensor,
    K_33: Tensor,
    width: int,
    height: int,
    *,
    background_3: Tensor | None = None,
    near: float = 0.01,
    far: float = 1e4,
    backend: Backend = "auto",
) -> RenderOutput:
    """Renders N Gaussians through a pinhole camera, differentiably.

    Args:
        means_n3: Centres in world coordinates.
        quats_n4: Rotations as quaternions (w, x, y, z); need not be normalised.
        scales_n3: Standard deviations along the rotated axes (linear, positive).
        opacities_n: Peak opacity in [0, 1].
        colors_n3: RGB in [0, 1].
        w2c_44: World-to-camera transform, OpenCV axes (x right, y down, z forward).
        K_33: Intrinsics with pixel centres at integer coordinates (the project's convention).
        width, height: Image size in pixels.
        background_3: RGB seen where the Gaussians leave transmittance; None = black.
        near, far: Gaussians whose centre's camera z is outside [near, far] are not drawn.
        backend: "torch", "gsplat" (CUDA only), or "auto": gsplat for CUDA tensors when it
            imports, else torch.

    All tensors are float32 (float64 also works with the torch backend) on one device.
    Gradients reach means, quats, scales, opacities, colors, w2c_44 and background_3.

    Raises:
        InvalidArgumentError: a shape, dtype, device, size or depth range is wrong.
        FailedPreconditionError: backend="gsplat" and gsplat is not installed.
    """
    inputs = {
        "means_n3": means_n3,
        "quats_n4": quats_n4,
        "scales_n3": scales_n3,
        "opacities_n": opacities_n,
        "colors_n3": colors_n3,
        "w2c_44": w2c_44,
        "K_33": K_33,
    }
    if background_3 is not None:
        inputs["background_3"] = background_3
    _check_inputs(inputs, width, height, near, far)
    chosen = resolve_backend(backend, means_n3.device)
    if chosen == "gsplat" and means_n3.dtype != torch.float32:
        raise InvalidArgumentError("means_n3", "gsplat renders float32 only; convert the inputs")

    K_gsplat_33 = K_33.clone()
    K_gsplat_33[:2, 2] += 0.5
    # An empty scene is just the background; the PyTorch path draws it on any device, so gsplat
    # never sees zero-sized launches.
    draw = render_gsplat if chosen == "gsplat" and len(means_n3) > 0 else render_torch
    rgbd_hw4, alpha_hw, means2d_n2, radii_n2 = draw(
        means_n3,
        quats_n4,
        scales_n3,
        opacities_n,
        colors_n3,
        w2c_44,
        K_gsplat_33,
        width,
        height,
        background_3,
        near,
        far,
    )
    return RenderOutput(
        rgb_hw3=rgbd_hw4[..., :3],
        depth_hw=rgbd_hw4[..., 3],
        alpha_hw=alpha_hw,
        renderer_means2d_n2=means2d_n2,
        renderer_radii_n2=radii_n2,
    )


def _check_inputs(
    inputs: dict[str, Tensor], width: int, height: int, near: float, far: float
) -> None:
    """Raises InvalidArgumentError naming the first wrong input."""
    for name, tensor in inputs.items():
        if not isinstance(tensor, Tensor):
            raise InvalidArgumentError(
                name, f"expected a torch.Tensor, got {type(tensor).__name__}"
            )
    first = inputs["means_n3"]
    if first.dim() != 2:
        raise InvalidArgumentError("means_n3", f"shape {tuple(first.shape)}, expected [N, 3]")
    n = first.shape[0]
    expected = {
        "means_n3": (n, 3),
        "quats_n4": (n, 4),
        "scales_n3": (n, 3),
        "opacities_n": (n,),
        "colors_n3": (n, 3),
        "w2c_44": (4, 4),
        "K_33": (3, 3),
        "background_3": (3,),
    }
    for name, tensor in inputs.items():
        if tuple(tensor.shape) != expected[name]:
            raise InvalidArgumentError(
                name, f"shape {tuple(tensor.shape)}, expected {expected[name]} (N = {n})"
            )
        if tensor.dtype not in (torch.float32, torch.float64) or tensor.dtype != first.dtype:
            raise InvalidArgumentError(
                name, f"dtype {tensor.dtype}; all inputs must share float32 (or float64)"
            )
        if tensor.device != first.device:
            raise InvalidArgumentError(
                name, f"on {tensor.device} but means_n3 is on {first.device}; use one device"
            )
    if width < 1 or height < 1:
        raise InvalidArgumentError("width", f"image size {width}x{height} must be at least 1x1")
    if not 0.0 < near < far:
        raise InvalidArgumentError("near", f"need 0 < near < far, got near={near}, far={far}")
