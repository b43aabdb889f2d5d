"""Projection of 3D Gaussians to 2D image-plane Gaussians (EWA splatting), after gsplat 1.5.

This is the first half of the PyTorch renderer; `rasterizer_torch` composites what it returns.
Every rule follows gsplat 1.5.3 (`fully_fused_projection`, pinhole camera) so that the two
backends agree to float rounding:

- the covariance is R S S^T R^T with R from the normalised quaternion (w, x, y, z);
- the 2D covariance is J W Sigma W^T J^T, where J is the perspective Jacobian evaluated at the
  centre with x/z and y/z clamped to 1.3 times the half field of view (this keeps Gaussians far
  outside the image from blowing up), plus `eps2d` * I, a low-pass filter of about a pixel;
- the box half-extent per axis is ceil(k * sqrt(var)), with k = min(3.33, sqrt(2 ln(255 o))):
  outside the ellipse of that Mahalanobis radius the alpha o * exp(-m^2 / 2) is below 1/255;
- a Gaussian is culled (radii 0) when its centre is outside [near, far] in camera z, its
  opacity is below 1/255, or its box lies entirely outside the image.

Pixel convention (gsplat's): pixel (col j, row i) covers [j, j+1) x [i, i+1), its centre is
(j + 0.5, i + 0.5). `render.py` converts from the project's integer-centre intrinsics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS2D = 0.3
"""Added to the 2D covariance's diagonal (pixels^2): a low-pass filter, gsplat's default."""
ALPHA_THRESHOLD = 1.0 / 255.0
"""A Gaussian contributes to a pixel only where its alpha reaches this."""
MAX_EXTENT_SIGMA = 3.33
"""Upper bound of the bounding box half-extent, in standard deviations."""
FOV_CLAMP_MARGIN = 0.3
"""x/z and y/z beyond the image's half field of view by this share of it are clamped in J."""


@dataclass
class Projection:
    """Per-Gaussian 2D footprint. Rows with radii 0 are culled; their other values are finite
    but meaningless."""

    means2d_n2: Tensor
    """Projected centres (x, y) in pixels, gsplat convention (pixel centres at +0.5)."""
    conics_n3: Tensor
    """Inverse 2D covariance as its upper triangle (a, b, c): m^2 = a dx^2 + 2 b dx dy + c dy^2."""
    depths_n: Tensor
    """Camera z of the centres; sorts Gaussians front to back and is the rendered depth."""
    radii_n2: Tensor
    """int32 bounding-box half-extent (x, y) in pixels; 0 = culled."""


def quat_to_rotmat_n33(quats_n4: Tensor) -> Tensor:
    """Rotation matrices from quaternions (w, x, y, z); the quaternions need not be unit."""
    w, x, y, z = torch.unbind(quats_n4 / quats_n4.norm(dim=-1, keepdim=True), dim=-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def covariance_n33(quats_n4: Tensor, scales_n3: Tensor) -> Tensor:
    """World covariance R S S^T R^T of each Gaussian (S = diag(scales), linear scales)."""
    rs_n33 = quat_to_rotmat_n33(quats_n4) * scales_n3[:, None, :]
    return rs_n33 @ rs_n33.transpose(1, 2)


def project_gaussians(
    means_n3: Tensor,
    quats_n4: Tensor,
    scales_n3: Tensor,
    opacities_n: Tensor,
    w2c_44: Tensor,
    K_33: Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
    eps2d: float = EPS2D,
) -> Projection:
    """Projects every Gaussian through a pinhole camera (gsplat pixel convention for `K_33`).

    Differentiable w.r.t. means, quats, scales and `w2c_44`; radii (and the culling in them)
    are not.
    """
    rot_33, trans_3 = w2c_44[:3, :3], w2c_44[:3, 3]
    means_cam_n3 = means_n3 @ rot_33.T + trans_3
    cov_cam_n33 = rot_33 @ covariance_n33(quats_n4, scales_n3) @ rot_33.T

    x, y, z = torch.unbind(means_cam_n3, dim=-1)
    in_depth_range_n = (z >= near) & (z <= far)
    # Culled centres (e.g. behind the camera) would divide by ~0; a stand-in z keeps every value
    # and gradient finite, and those rows are never rendered.
    z = torch.where(in_depth_range_n, z, torch.ones_like(z))
    fx, fy, cx, cy = K_33[0, 0], K_33[1, 1], K_33[0, 2], K_33[1, 2]

    # Perspective Jacobian at the centre, with x/z and y/z clamped as gsplat does.
    tan_half_fov_x, tan_half_fov_y = 0.5 * width / fx, 0.5 * height / fy
    x_over_z = torch.clamp(
        x / z,
        min=-(cx / fx + FOV_CLAMP_MARGIN * tan_half_fov_x),
        max=(width - cx) / fx + FOV_CLAMP_MARGIN * tan_half_fov_x,
    )
    y_over_z = torch.clamp(
        y / z,
        min=-(cy / fy + FOV_CLAMP_MARGIN * tan_half_fov_y),
        max=(height - cy) / fy + FOV_CLAMP_MARGIN * tan_half_fov_y,
    )
    zeros_n = torch.zeros_like(z)
    jac_n23 = torch.stack(
        [
            torch.stack([fx / z, zeros_n, -fx * x_over_z / z], dim=-1),
            torch.stack([zeros_n, fy / z, -fy * y_over_z / z], dim=-1),
        ],
        dim=-2,
    )
    cov2d_n22 = jac_n23 @ cov_cam_n33 @ jac_n23.transpose(1, 2)
    var_x, cov_xy, var_y = (
        cov2d_n22[:, 0, 0] + eps2d,
        cov2d_n22[:, 0, 1],
        cov2d_n22[:, 1, 1] + eps2d,
    )
    det_n = var_x * var_y - cov_xy * cov_xy
    det_ok_n = det_n > 0
    det_n = torch.where(det_ok_n, det_n, torch.ones_like(det_n))
    conics_n3 = torch.stack([var_y / det_n, -cov_xy / det_n, var_x / det_n], dim=-1)
    means2d_n2 = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)

    with torch.no_grad():
        visible_n = in_depth_range_n & det_ok_n & (opacities_n >= ALPHA_THRESHOLD)
        safe_opacity_n = torch.clamp(opacities_n, min=ALPHA_THRESHOLD)
        extent_n = torch.clamp(
            torch.sqrt(2.0 * torch.log(safe_opacity_n / ALPHA_THRESHOLD)), max=MAX_EXTENT_SIGMA
        )
        radii_n2 = torch.ceil(
            extent_n[:, None] * torch.sqrt(torch.stack([var_x, var_y], dim=-1).clamp(min=0))
        )
        visible_n &= (radii_n2 > 0).any(dim=-1)
        lo_n2, hi_n2 = means2d_n2 - radii_n2, means2d_n2 + radii_n2
        visible_n &= (hi_n2[:, 0] > 0) & (lo_n2[:, 0] < width)
        visible_n &= (hi_n2[:, 1] > 0) & (lo_n2[:, 1] < height)
        radii_n2 = torch.where(visible_n[:, None], radii_n2, 0).to(torch.int32)

    return Projection(
        means2d_n2=means2d_n2, conics_n3=conics_n3, depths_n=means_cam_n3[:, 2], radii_n2=radii_n2
    )
