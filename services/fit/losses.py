"""Loss terms of the fit: photometric (L2 + SSIM), depth, flow and the two regularisers.

Each term is a plain function of tensors so a reader can see what one weight in FitConfig does.
`fit_terms` gives one optimisation step's terms by name (`TERMS`), `term_weights` pairs each name
with its weight in FitConfig, and `weighted_sum` is the one place they are added up, so every
term can be logged and benchmarked on its own.
`gaussians_loss` and `camera_loss` are whole steps' losses (the Gaussians' and the camera
refinement's): the units `compiled.fuse` hands to torch.compile on CUDA.
Images are float [H, W, 3] in [0, 1]; per-pixel weights are float [H, W] (0 = ignore the pixel).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.common.geometry import project_p2
from services.fit.config import FitConfig
from services.fit.gaussians import Gaussians, mean_depth_hw
from services.fit.motion import COVERED_ALPHA
from services.fit.render import RenderOutput


@dataclass
class FlowTargets:
    """Where the flow term pulls: the seen moving Gaussians (indices [M]), their target pixels
    [M, 2] in the frame, and the frame's camera."""

    index_m: torch.Tensor
    target_m2: torch.Tensor
    w2c_44: torch.Tensor
    K_33: torch.Tensor


TERMS = ("photometric", "depth", "isotropic", "still", "flow")
"""The terms of the Gaussians' loss, in the order they are added."""

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2
_NEAR_Z = 1e-6  # camera z below this divides as this in the fit's projection


def project_n2(
    points_n3: torch.Tensor, w2c_44: torch.Tensor, K_33: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fit's use of `geometry.project_p2`: world-to-camera pose, camera z clamped at
    `_NEAR_Z` in the division so pixels and gradients stay finite; differentiable in points and
    pose. Returns (pixels [N, 2], camera z [N])."""
    return project_p2(K_33, w2c_44, points_n3, pose="w2c", min_z=_NEAR_Z)


def _gaussian_taps(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 1D Gaussian whose outer product with itself is SSIM's 11x11 window."""
    x = torch.arange(_SSIM_WINDOW, dtype=dtype, device=device) - (_SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


# Eager code reuses the taps; compiled code folds them into its kernels (and dynamo would only
# trace through a cache).
_cached_gaussian_taps = functools.cache(_gaussian_taps)


def _blur(x_chw: torch.Tensor) -> torch.Tensor:
    """Each channel convolved with the 11x11 Gaussian window (zero padding), done as two 1D
    passes: the window is separable, and the fit calls this every iteration."""
    channels = x_chw.shape[0]
    taps_fn = _gaussian_taps if torch.compiler.is_compiling() else _cached_gaussian_taps
    taps = taps_fn(x_chw.dtype, x_chw.device)
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


@dataclass
class PhotometricTarget:
    """A frame as the photometric term compares renders with it: its pixels [H, W, 3] and, for
    SSIM, their local means and mean squares [3, H, W]. These stay fixed while the frame is
    fitted, so they are blurred once per frame rather than at every step (the blur is a fifth of
    a step's GPU time at 854x480)."""

    rgb_hw3: torch.Tensor
    mean_3hw: torch.Tensor
    mean_sq_3hw: torch.Tensor


def photometric_target(frame_hw3: torch.Tensor) -> PhotometricTarget:
    """A frame's `PhotometricTarget`."""
    b = frame_hw3.permute(2, 0, 1)
    with torch.no_grad():
        mean_3hw, mean_sq_3hw = _blur(torch.cat([b, b * b])).chunk(2)
    return PhotometricTarget(frame_hw3, mean_3hw, mean_sq_3hw)


def ssim_map_hw(a_hw3: torch.Tensor, target: PhotometricTarget) -> torch.Tensor:
    """Per-pixel SSIM of an image against a target (11x11 Gaussian window, sigma 1.5), averaged
    over the colour channels."""
    a = a_hw3.permute(2, 0, 1)
    b = target.rgb_hw3.permute(2, 0, 1)
    mu_b, mean_bb = target.mean_3hw, target.mean_sq_3hw
    # The image's three local statistics in one blur call: fewer kernel launches per iteration.
    mu_a, mean_aa, mean_ab = _blur(torch.cat([a, a * a, a * b])).chunk(3)
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
    target: PhotometricTarget,
    ssim_share: float,
    weight_hw: torch.Tensor | None = None,
) -> torch.Tensor:
    """(1 - ssim_share) * L2 + ssim_share * (1 - SSIM), over the weighted pixels."""
    l2_hw = ((render_hw3 - target.rgb_hw3) ** 2).mean(dim=-1)
    loss = (1.0 - ssim_share) * _weighted_mean(l2_hw, weight_hw)
    if ssim_share > 0:
        dssim_hw = 1.0 - ssim_map_hw(render_hw3, target)
        loss = loss + ssim_share * _weighted_mean(dssim_hw, weight_hw)
    return loss


def depth_loss(
    depth_hw: torch.Tensor, prior_depth_hw: torch.Tensor, weight_hw: torch.Tensor
) -> torch.Tensor:
    """Mean absolute difference between rendered and prior depth over the weighted pixels."""
    return _weighted_mean((depth_hw - prior_depth_hw).abs(), weight_hw)


def flow_loss(
    points_n3: torch.Tensor, w2c_44: torch.Tensor, K_33: torch.Tensor, target_n2: torch.Tensor
) -> torch.Tensor:
    """Mean pixel distance between where world points project and where the flow says they
    went."""
    if len(points_n3) == 0:
        return points_n3.sum()
    return (project_n2(points_n3, w2c_44, K_33)[0] - target_n2).norm(dim=-1).mean()


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


def term_weights(cfg: FitConfig) -> dict[str, float]:
    """Each term's weight in the configuration."""
    return {
        "photometric": cfg.lambda_rgb,
        "depth": cfg.lambda_depth,
        "isotropic": cfg.lambda_isotropic,
        "still": cfg.lambda_still,
        "flow": cfg.lambda_flow,
    }


def image_terms(
    out: RenderOutput,
    target: PhotometricTarget,
    prior_depth_hw: torch.Tensor,
    prior_valid_hw: torch.Tensor,
    *,
    ssim_share: float,
) -> dict[str, torch.Tensor]:
    """The terms on the rendered image: photometric, and depth on covered pixels with a known
    prior."""
    depth_weight_hw = ((out.alpha_hw.detach() >= COVERED_ALPHA) & prior_valid_hw).float()
    return {
        "photometric": photometric_loss(out.rgb_hw3, target, ssim_share),
        "depth": depth_loss(mean_depth_hw(out), prior_depth_hw, depth_weight_hw),
    }


def gaussian_terms(
    gaussians: Gaussians,
    *,
    anchor_n3: torch.Tensor | None,
    footprint: float,
    flow: FlowTargets | None,
) -> dict[str, torch.Tensor]:
    """The terms on the Gaussians themselves: isotropic; "still" when the frame's start
    positions are given (`anchor_n3`, in units of `footprint`), "flow" when the seen moving
    Gaussians and their flow targets are."""
    terms = {"isotropic": isotropic_loss(gaussians.log_scales_n3)}
    if anchor_n3 is not None:
        terms["still"] = still_loss(gaussians.means_n3, anchor_n3, ~gaussians.moving_n, footprint)
    if flow is not None:
        terms["flow"] = flow_loss(
            gaussians.means_n3[flow.index_m], flow.w2c_44, flow.K_33, flow.target_m2
        )
    return terms


def fit_terms(
    out: RenderOutput,
    target: PhotometricTarget,
    prior_depth_hw: torch.Tensor,
    prior_valid_hw: torch.Tensor,
    gaussians: Gaussians,
    *,
    ssim_share: float,
    anchor_n3: torch.Tensor | None,
    footprint: float,
    flow: FlowTargets | None,
) -> dict[str, torch.Tensor]:
    """The terms of one optimisation step of the Gaussians, by name, in `TERMS` order:
    `image_terms` then `gaussian_terms`."""
    return {
        **image_terms(out, target, prior_depth_hw, prior_valid_hw, ssim_share=ssim_share),
        **gaussian_terms(gaussians, anchor_n3=anchor_n3, footprint=footprint, flow=flow),
    }


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Sum of weight x term over the terms, added in their order."""
    names = iter(terms)
    first = next(names)
    total = weights[first] * terms[first]
    for name in names:
        total = total + weights[name] * terms[name]
    return total


def gaussians_loss(
    out: RenderOutput,
    target: PhotometricTarget,
    prior_depth_hw: torch.Tensor,
    prior_valid_hw: torch.Tensor,
    gaussians: Gaussians,
    weights: dict[str, float],
    *,
    ssim_share: float,
    anchor_n3: torch.Tensor | None,
    footprint: float,
    flow: FlowTargets | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One Gaussians step's weighted loss and its terms (`fit_terms`, `weighted_sum`)."""
    terms = fit_terms(
        out,
        target,
        prior_depth_hw,
        prior_valid_hw,
        gaussians,
        ssim_share=ssim_share,
        anchor_n3=anchor_n3,
        footprint=footprint,
        flow=flow,
    )
    return weighted_sum(terms, weights), terms


def camera_loss(
    rgb_hw3: torch.Tensor,
    target: PhotometricTarget,
    weight_hw: torch.Tensor,
    ssim_share: float,
    points_p3: torch.Tensor,
    pixels_p2: torch.Tensor,
    w2c_44: torch.Tensor,
    K_33: torch.Tensor,
    lambda_flow: float,
) -> torch.Tensor:
    """One camera-refinement step's loss: photometric on the weighted (still) pixels plus
    `lambda_flow` times the reprojection distance of the still correspondences."""
    loss = photometric_loss(rgb_hw3, target, ssim_share, weight_hw)
    return loss + lambda_flow * flow_loss(points_p3, w2c_44, K_33, pixels_p2)


def term_values(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The terms as numbers (reading them waits for the device)."""
    return {name: float(term.detach()) for name, term in terms.items()}


def describe_terms(values: dict[str, float]) -> str:
    """Term values for a log line: "photometric 0.0123, depth 0.0456, ..."."""
    return ", ".join(f"{name} {value:.4g}" for name, value in values.items())
