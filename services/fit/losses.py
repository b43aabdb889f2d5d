"""Loss terms of the fit: photometric (L2 + SSIM), depth, flow and the two regularisers.

Each term is a plain function of tensors so a reader can see what one weight in FitConfig does.
Images are float [H, W, 3] in [0, 1]; per-pixel weights are float [H, W] (0 = ignore the pixel).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2


@functools.cache
def _gaussian_taps(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 1D Gaussian whose outer product with itself is SSIM's 11x11 window."""
    x = torch.arange(_SSIM_WINDOW, dtype=dtype, device=device) - (_SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _blur(x_chw: torch.Tensor) -> torch.Tensor:
    """Each channel convolved with the 11x11 Gaussian window (zero padding), done as two 1D
    passes: the window is separable, and the fit calls this every iteration."""
    channels = x_chw.shape[0]
    taps = _gaussian_taps(x_chw.dtype, x_chw.device)
    pad = _SSIM_WINDOW // 2
    rows = F.conv2d(
        x_chw[None],
        taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1),
        padding=(0, pad),
        groups=channels,
    )
    return F.conv2d(
        rows,
        taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1),
        padding=(pad, 0),
        groups=channels,
    )[0]


def ssim_map_hw(a_hw3: torch.Tensor, b_hw3: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (11x11 Gaussian window, sigma 1.5), averaged over the colour channels."""
    a = a_hw3.permute(2, 0, 1)
    b = b_hw3.permute(2, 0, 1)
    # The five local statistics in one blur call: fewer kernel launches per iteration.
    mu_a, mu_b, mean_aa, mean_bb, mean_ab = _blur(torch.cat([a, b, a * a, b * b, a * b])).chunk(5)
    var_a = mean_aa - mu_a**2
    var_b = mean_bb - mu_b**2
    cov = mean_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + _SSIM_C1) * (2 * cov + _SSIM_C2)
    den = (mu_a**2 + mu_b**2 + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    return (num / den).mean(dim=0)


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` under same-shaped weights (0 when every weight is 0)."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def photometric_loss(
    render_hw3: torch.Tensor,
    target_hw3: torch.Tensor,
    ssim_share: float,
    weight_hw: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1 - ssim_share) * L2 + ssim_share * (1 - SSIM), over the weighted pixels."""
    l2_hw = ((render_hw3 - target_hw3) ** 2).mean(dim=-1)
    loss = (1.0 - ssim_share) * _weighted_mean(l2_hw, weight_hw)
    if ssim_share > 0:
        dssim_hw = 1.0 - ssim_map_hw(render_hw3, target_hw3)
        loss = loss + ssim_share * _weighted_mean(dssim_hw, weight_hw)
    return loss


def depth_loss(
    depth_hw: torch.Tensor, prior_depth_hw: torch.Tensor, weight_hw: torch.Tensor
) -> torch.Tensor:
    """Mean absolute difference between rendered and prior depth over the weighted pixels."""
    return _weighted_mean((depth_hw - prior_depth_hw).abs(), weight_hw)


def flow_loss(projected_n2: torch.Tensor, target_n2: torch.Tensor) -> torch.Tensor:
    """Mean pixel distance between projected centres and where the flow says they went."""
    if len(projected_n2) == 0:
        return projected_n2.sum()
    return (projected_n2 - target_n2).norm(dim=-1).mean()


def isotropic_loss(log_scales_n3: torch.Tensor) -> torch.Tensor:
    """Mean absolute deviation of each Gaussian's log scales from their mean (0 = a sphere)."""
    if len(log_scales_n3) == 0:
        return log_scales_n3.sum()
    return (log_scales_n3 - log_scales_n3.mean(dim=-1, keepdim=True)).abs().mean()


def still_loss(
    means_n3: torch.Tensor, anchor_n3: torch.Tensor, still_n: torch.Tensor, unit: float
) -> torch.Tensor:
    """Mean squared displacement of the still Gaussians (bool `still_n`) from where the frame
    started, in `unit`s (the engine passes one pixel's footprint at the scene depth, so the weight
    is scale-free). A weighted mean rather than a selection: no host sync on CUDA."""
    squared_n = (((means_n3 - anchor_n3) / unit) ** 2).sum(dim=-1)
    return _weighted_mean(squared_n, still_n.to(squared_n.dtype))
