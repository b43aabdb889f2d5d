"""The PyTorch renderer: depth-sorted alpha compositing of projected Gaussians, with autograd.

The compositing rules are gsplat 1.5.3's (`rasterize_to_pixels`, classic mode). At a pixel centre
p, Gaussian i has alpha_i = min(0.999, o_i exp(-m_i(p)^2 / 2)) and is skipped where alpha_i is
below 1/255. Front to back (by camera z of the centre), T_i = prod_{j<i} (1 - alpha_j); the
Gaussian that would bring the transmittance to 1e-4 or below ends the pixel and is itself left
out. The pixel value is sum_i c_i alpha_i T_i + T_final * background, and its alpha 1 - T_final.

Two implementations of that one rule, held together by tests/unit/test_render_rasterizer.py:

- `rasterize_sparse`, the one `render` uses: each Gaussian is paired only with the pixels inside
  its bounding box (at most 3.33 sigma, see projection.py), pairs below the alpha threshold are
  dropped, the rest are sorted by (pixel, depth) and composited per pixel with a segmented
  exclusive cumulative product (a cumulative sum of log(1 - alpha) in float64). Work and memory
  grow with the pixels the Gaussians cover, not with N x H x W.
- `rasterize_dense_reference`: every Gaussian against every pixel, then `torch.cumprod`. Plain,
  slow, and the definition the fast path is tested against.

Autograd does the backward pass of both. Pixel convention: gsplat's (centres at +0.5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from services.fit.projection import ALPHA_THRESHOLD, Projection, project_gaussians

MAX_ALPHA = 0.999
"""Alpha is clamped here so that 1 - alpha never reaches 0 (the backward divides by it)."""
MIN_TRANSMITTANCE = 1e-4
"""A pixel stops taking Gaussians before its transmittance would drop to this."""


def gaussian_alpha(
    dx: Tensor, dy: Tensor, conic_a: Tensor, conic_b: Tensor, conic_c: Tensor, opacity: Tensor
) -> Tensor:
    """Alpha of a Gaussian at offset (dx, dy) = centre - pixel centre; 0 where it is below 1/255.

    Elementwise (broadcasts); the conic is the inverse 2D covariance [[a, b], [b, c]].
    """
    half_mahalanobis_sq = 0.5 * (conic_a * dx * dx + conic_c * dy * dy) + conic_b * dx * dy
    alpha = torch.clamp(opacity * torch.exp(-half_mahalanobis_sq), max=MAX_ALPHA)
    contributes = (half_mahalanobis_sq >= 0) & (alpha >= ALPHA_THRESHOLD)
    return torch.where(contributes, alpha, torch.zeros_like(alpha))


def _visible_front_to_back(projection: Projection) -> Tensor:
    """Indices of the Gaussians that were not culled, sorted by camera z (ties by index)."""
    visible_v = torch.nonzero((projection.radii_n2 > 0).all(dim=-1)).squeeze(1)
    order_v = torch.argsort(projection.depths_n[visible_v].detach(), stable=True)
    return visible_v[order_v]


def rasterize_dense_reference(
    projection: Projection,
    opacities_n: Tensor,
    colors_nc: Tensor,
    width: int,
    height: int,
    background_c: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Every visible Gaussian against every pixel: (colors [H, W, C], alpha [H, W]).

    Memory is H * W * N; use it for tests only.
    """
    ids_v = _visible_front_to_back(projection)
    device, dtype = colors_nc.device, colors_nc.dtype
    ys_p, xs_p = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    means2d_v2, conics_v3 = projection.means2d_n2[ids_v], projection.conics_n3[ids_v]
    alpha_pv = gaussian_alpha(
        means2d_v2[:, 0] - (xs_p.reshape(-1, 1) + 0.5),
        means2d_v2[:, 1] - (ys_p.reshape(-1, 1) + 0.5),
        conics_v3[:, 0],
        conics_v3[:, 1],
        conics_v3[:, 2],
        opacities_n[ids_v],
    )
    transmittance_after_pv = torch.cumprod(1.0 - alpha_pv, dim=1)
    alpha_pv = alpha_pv * (transmittance_after_pv > MIN_TRANSMITTANCE)
    ones_p1 = torch.ones_like(alpha_pv[:, :1])
    transmittance_before_pv = torch.cumprod(
        torch.cat([ones_p1, 1.0 - alpha_pv[:, :-1]], dim=1), dim=1
    )
    colors_pc = (alpha_pv * transmittance_before_pv) @ colors_nc[ids_v]
    transmittance_p = torch.prod(1.0 - alpha_pv, dim=1)
    if background_c is not None:
        colors_pc = colors_pc + transmittance_p[:, None] * background_c
    return colors_pc.reshape(height, width, -1), (1.0 - transmittance_p).reshape(height, width)


def box_pixel_pairs(
    means2d_v2: Tensor, radii_v2: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor]:
    """All (gaussian, pixel) pairs with the pixel centre inside the Gaussian's bounding box.

    Returns (index into the inputs, pixel x, pixel y), each [K] int64; pairs come grouped by
    Gaussian in input order, row-major within a Gaussian. Not differentiable.
    """
    lo_v2 = torch.ceil(means2d_v2 - radii_v2 - 0.5).long()
    hi_v2 = torch.floor(means2d_v2 + radii_v2 - 0.5).long()
    x0_v, y0_v = lo_v2[:, 0].clamp(min=0), lo_v2[:, 1].clamp(min=0)
    x1_v, y1_v = hi_v2[:, 0].clamp(max=width - 1), hi_v2[:, 1].clamp(max=height - 1)
    nx_v, ny_v = (x1_v - x0_v + 1).clamp(min=0), (y1_v - y0_v + 1).clamp(min=0)
    count_v = nx_v * ny_v

    def per_pair(values_v: Tensor) -> Tensor:
        return torch.repeat_interleave(values_v, count_v)

    index_k = per_pair(torch.arange(len(count_v), device=count_v.device))
    local_k = torch.arange(len(index_k), device=index_k.device) - per_pair(
        torch.cumsum(count_v, 0) - count_v
    )
    nx_k = per_pair(nx_v)
    return index_k, per_pair(x0_v) + local_k % nx_k, per_pair(y0_v) + local_k // nx_k


def segmented_cumsum(values_k: Tensor, segment_k: Tensor) -> Tensor:
    """Inclusive cumulative sum restarting wherever `segment_k` (sorted) changes value."""
    total_k = torch.cumsum(values_k, dim=0)
    starts_k = torch.ones_like(segment_k, dtype=torch.bool)
    starts_k[1:] = segment_k[1:] != segment_k[:-1]
    index_k = torch.arange(len(values_k), device=values_k.device)
    start_index_k = torch.cummax(torch.where(starts_k, index_k, 0), dim=0).values
    return total_k - (total_k - values_k).index_select(0, start_index_k)


def rasterize_sparse(
    projection: Projection,
    opacities_n: Tensor,
    colors_nc: Tensor,
    width: int,
    height: int,
    background_c: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Same result as `rasterize_dense_reference`, from per-Gaussian pixel lists:
    (colors [H, W, C], alpha [H, W])."""
    ids_v = _visible_front_to_back(projection)
    device, dtype = colors_nc.device, colors_nc.dtype
    # Per-pair values are gathered column by column: on CPU, index_select of a 1-D tensor is
    # several times faster than of the rows of a table.
    alpha_columns_n = (
        *projection.means2d_n2.unbind(1),
        *projection.conics_n3.unbind(1),
        opacities_n,
    )

    def pair_alpha(gauss_k: Tensor, x_k: Tensor, y_k: Tensor) -> Tensor:
        mx, my, a, b, c, opacity = (col.index_select(0, gauss_k) for col in alpha_columns_n)
        return gaussian_alpha(
            mx - (x_k.to(dtype) + 0.5), my - (y_k.to(dtype) + 0.5), a, b, c, opacity
        )

    # Candidate pairs, front to back per Gaussian; keep those above the alpha threshold.
    with torch.no_grad():
        rank_k, x_k, y_k = box_pixel_pairs(
            projection.means2d_n2[ids_v], projection.radii_n2[ids_v], width, height
        )
        gauss_k = ids_v[rank_k]
        contributes_k = pair_alpha(gauss_k, x_k, y_k) > 0
        # A stable sort by pixel keeps the front-to-back order within each pixel (int32 keys
        # sort about twice as fast as int64 on CPU).
        pixel_k = (y_k * width + x_k)[contributes_k].to(torch.int32)
        pixel_k, order_k = torch.sort(pixel_k, stable=True)
        gauss_k = gauss_k[contributes_k][order_k]

    alpha_k = pair_alpha(gauss_k, pixel_k % width, pixel_k // width)
    colors_ck = torch.stack([col.index_select(0, gauss_k) for col in colors_nc.unbind(1)])
    # Transmittance in log space: a per-pixel cumulative product becomes a segmented sum.
    log_pass_k = torch.log1p(-alpha_k.double())
    log_after_k = segmented_cumsum(log_pass_k, pixel_k)
    kept_k = log_after_k.detach() > math.log(MIN_TRANSMITTANCE)
    log_pass_k = log_pass_k * kept_k
    weight_k = (alpha_k * torch.exp(log_after_k - log_pass_k).to(dtype)) * kept_k

    n_pixels = height * width
    colors_cp = torch.zeros(colors_nc.shape[1], n_pixels, device=device, dtype=dtype)
    colors_cp = colors_cp.index_add(1, pixel_k, colors_ck * weight_k)
    log_transmittance_p = torch.zeros(n_pixels, device=device, dtype=torch.float64)
    transmittance_p = torch.exp(log_transmittance_p.index_add(0, pixel_k, log_pass_k)).to(dtype)
    if background_c is not None:
        colors_cp = colors_cp + background_c[:, None] * transmittance_p
    colors_hwc = colors_cp.T.reshape(height, width, -1)
    return colors_hwc, (1.0 - transmittance_p).reshape(height, width)


def render_torch(
    means_n3: Tensor,
    quats_n4: Tensor,
    scales_n3: Tensor,
    opacities_n: Tensor,
    colors_n3: Tensor,
    w2c_44: Tensor,
    K_33: Tensor,
    width: int,
    height: int,
    background_3: Tensor | None,
    near: float,
    far: float,
    dense_reference: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Projects and rasterises RGB plus camera z: (rgbd [H, W, 4], alpha [H, W],
    means2d [N, 2], radii [N, 2]), all in gsplat's pixel convention (`K_33` included).

    `dense_reference` swaps in `rasterize_dense_reference`, for tests.
    """
    projection = project_gaussians(
        means_n3, quats_n4, scales_n3, opacities_n, w2c_44, K_33, width, height, near, far
    )
    colors_n4 = torch.cat([colors_n3, projection.depths_n[:, None]], dim=1)
    background_4 = None
    if background_3 is not None:
        background_4 = torch.cat([background_3, torch.zeros_like(background_3[:1])])
    rasterize = rasterize_dense_reference if dense_reference else rasterize_sparse
    rgbd_hw4, alpha_hw = rasterize(projection, opacities_n, colors_n4, width, height, background_4)
    return rgbd_hw4, alpha_hw, projection.means2d_n2, projection.radii_n2
