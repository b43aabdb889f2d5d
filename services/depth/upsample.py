"""Edge-aware densification and resizing of depth maps, free of block and stripe artefacts.

MASt3R's sparse alignment optimises one depth per anchor on a grid (every `subsample` pixels,
first anchor at subsample // 2). Its own dense output gives each pixel the depth of the anchor of
its block times a fixed offset, so every block boundary can jump: stripes and blocks whose period
is the subsample (failure case 4). Here the anchors are interpolated smoothly instead (bilinear in
log depth between anchor centres, so nothing can repeat with the anchor period), and then either
  - multiplied into a dense prior (the network's own dense depth map) as a smooth ratio field,
    which keeps the prior's edges, or
  - refined with a guided filter (He et al., 2010) whose guide is the image, which puts depth
    edges where the image has edges.
Everything works in log depth, so a scale change of the input scales the output exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError
from services.depth.quality import bad_depth_mask

GUIDED_EPS = 1e-3  # guided filter regulariser for a [0, 1] colour guide (edges above ~3% contrast)


def guide_from_rgb(image_hw3: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] guide in [0, 1] from a uint8 RGB image."""
    return np.asarray(image_hw3, np.float32) / 255.0


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    size = (2 * radius + 1, 2 * radius + 1)
    return cv2.boxFilter(image, -1, size, normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(
    guide_hw3: np.ndarray,
    src_hw: np.ndarray,
    radius: int,
    eps: float = GUIDED_EPS,
    weight_hw: np.ndarray | None = None,
) -> np.ndarray:
    """Colour guided filter: locally `src ~ a . guide + b` in (2r+1)^2 windows, averaged.

    Where the guide is flat the output is a local mean of `src`; where the guide has an edge the
    output follows that edge. With `weight_hw`, only weighted pixels inform the local models
    (zero weight: a hole), so a hole takes the colour-to-depth relation of its surroundings;
    pixels none of whose windows hold any weight keep `src`. `guide_hw3` is float in [0, 1];
    returns float32 [H, W].
    """
    if guide_hw3.shape[:2] != src_hw.shape:
        raise InvalidArgumentError(
            "guide_hw3", f"guide is {guide_hw3.shape[:2]} but the map is {src_hw.shape}"
        )
    guide = np.asarray(guide_hw3, np.float32)
    src = np.asarray(src_hw, np.float32)
    radius = max(1, int(radius))
    w = np.ones_like(src) if weight_hw is None else np.asarray(weight_hw, np.float32)
    total = _box(w, radius)
    norm = np.maximum(total, 1e-12)

    def mean(x: np.ndarray) -> np.ndarray:
        weighted = x * (w[..., None] if x.ndim == 3 else w)
        return _box(weighted, radius) / (norm[..., None] if x.ndim == 3 else norm)

    mean_i = mean(guide)  # [H, W, 3]
    mean_p = mean(src)
    cov_ip = mean(guide * src[..., None]) - mean_i * mean_p[..., None]
    outer = (guide[..., :, None] * guide[..., None, :]).reshape(*src.shape, 9)
    var_i = mean(outer).reshape(*src.shape, 3, 3) - mean_i[..., :, None] * mean_i[..., None, :]
    var_i += eps * np.eye(3, dtype=np.float32)
    a = np.linalg.solve(var_i, cov_ip[..., None])[..., 0]  # [H, W, 3]
    b = mean_p - np.sum(a * mean_i, axis=-1)
    # Average the models of all windows covering a pixel, each by how much it saw.
    support = _box(total, radius)
    out = (
        np.sum(_box(a * total[..., None], radius) * guide, axis=-1) + _box(b * total, radius)
    ) / np.maximum(support, 1e-12)
    return np.where(support > 1e-9, out, src).astype(np.float32)


def push_pull_fill(values_hw: np.ndarray, weight_hw: np.ndarray) -> np.ndarray:
    """Fills pixels of zero weight by weighted pyramid interpolation (push-pull).

    Weighted averages are pulled down a pyramid of halvings until every cell has support, then
    pushed back up with bilinear upsampling; pixels with full weight (>= 1) keep their value.
    Returns float32 [H, W]; all-zero weights give zeros.
    """
    values = np.asarray(values_hw, np.float32)
    weight = np.clip(np.asarray(weight_hw, np.float32), 0.0, None)
    weight = np.where(np.isfinite(values), weight, 0.0)
    values = np.where(weight > 0, values, 0.0)
    if not (weight > 0).any():
        return np.zeros_like(values)
    return _push_pull(values * weight, weight)


def _push_pull(wv: np.ndarray, w: np.ndarray) -> np.ndarray:
    height, width = w.shape
    mean = np.where(w > 0, wv / np.maximum(w, 1e-12), 0.0)
    if (w > 0).all() or min(height, width) <= 1:
        coarse_mean = np.full_like(mean, wv.sum() / max(w.sum(), 1e-12))
        return np.where(w > 0, mean, coarse_mean).astype(np.float32)
    size = ((width + 1) // 2, (height + 1) // 2)
    coarse = _push_pull(
        cv2.resize(wv, size, interpolation=cv2.INTER_AREA),
        cv2.resize(w, size, interpolation=cv2.INTER_AREA),
    )
    up = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    alpha = np.clip(w, 0.0, 1.0)  # full support keeps its own value, partial support blends
    return (alpha * mean + (1.0 - alpha) * up).astype(np.float32)


def anchor_pixels(length: int, subsample: int) -> np.ndarray:
    """Pixel coordinates of MASt3R's anchors along one axis: subsample // 2, + subsample, ..."""
    return np.arange(subsample // 2, length, subsample)


def _interp_grid(grid_gh_gw: np.ndarray, height: int, width: int, subsample: int) -> np.ndarray:
    """Bilinear interpolation of a value per anchor to every pixel (constant beyond the edges)."""
    xs = (np.arange(width, dtype=np.float32) - subsample // 2) / subsample
    ys = (np.arange(height, dtype=np.float32) - subsample // 2) / subsample
    map_x = np.broadcast_to(xs[None, :], (height, width)).astype(np.float32)
    map_y = np.broadcast_to(ys[:, None], (height, width)).astype(np.float32)
    return cv2.remap(
        grid_gh_gw.astype(np.float32),
        map_x,
        map_y,
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def upsample_anchor_depth(
    coarse_gh_gw: np.ndarray,
    height: int,
    width: int,
    subsample: int,
    guide_hw3: np.ndarray | None = None,
    prior_hw: np.ndarray | None = None,
) -> np.ndarray:
    """Dense float32 [height, width] depth from one depth per anchor, with no block pattern.

    `coarse_gh_gw` holds the depth at anchor (i, j), i.e. pixel (x, y) = (s//2 + j*s, s//2 + i*s)
    with s = `subsample` (MASt3R's layout). Bad anchors (<= 0, non-finite) are filled from their
    neighbours first. With `prior_hw` (a dense depth of the same view, e.g. the network's), the
    result is the prior times a smoothly interpolated anchor/prior ratio; otherwise the log depth
    is interpolated and then refined by a guided filter on `guide_hw3` when given.
    """
    gh, gw = len(anchor_pixels(height, subsample)), len(anchor_pixels(width, subsample))
    if coarse_gh_gw.shape != (gh, gw):
        raise InvalidArgumentError(
            "coarse_gh_gw",
            f"shape {coarse_gh_gw.shape}, but a {width}x{height} image with subsample "
            f"{subsample} has {gh}x{gw} anchors (rows x columns)",
        )
    good = ~bad_depth_mask(coarse_gh_gw)
    if not good.any():
        raise InvalidArgumentError("coarse_gh_gw", "no anchor has a positive finite depth")
    log_coarse = np.log(np.where(good, coarse_gh_gw, 1.0))
    if prior_hw is not None:
        ys, xs = anchor_pixels(height, subsample), anchor_pixels(width, subsample)
        prior_at = prior_hw[np.ix_(ys, xs)]
        usable = good & ~bad_depth_mask(prior_at)
        if usable.any():
            log_ratio = np.where(usable, log_coarse - np.log(np.where(usable, prior_at, 1.0)), 0)
            log_ratio = push_pull_fill(log_ratio, usable.astype(np.float32))
            ratio_hw = np.exp(_interp_grid(log_ratio, height, width, subsample))
            prior_ok = ~bad_depth_mask(prior_hw)
            dense = np.where(prior_ok, np.where(prior_ok, prior_hw, 1.0) * ratio_hw, np.nan)
            if prior_ok.all():
                return dense.astype(np.float32)
            # Where the prior itself is bad, fall back to the interpolated anchors.
            fallback = upsample_anchor_depth(coarse_gh_gw, height, width, subsample, guide_hw3)
            return np.where(prior_ok, dense, fallback).astype(np.float32)
    log_coarse = push_pull_fill(log_coarse, good.astype(np.float32))
    log_dense = _interp_grid(log_coarse, height, width, subsample)
    if guide_hw3 is not None:
        log_dense = guided_filter(guide_hw3, log_dense, radius=subsample)
    return np.exp(log_dense).astype(np.float32)


def resize_depth(
    depth_hw: np.ndarray, height: int, width: int, guide_hw3: np.ndarray | None = None
) -> np.ndarray:
    """Depth at another resolution: bilinear in log depth, then guided by the target-size image.

    The guide (float [0, 1], [height, width, 3]) restores sharp edges lost by upscaling; its
    radius follows the scale factor. Expects positive finite depth (repair it first).
    """
    h, w = depth_hw.shape
    if (h, w) == (height, width):
        return depth_hw.astype(np.float32)
    log_dense = cv2.resize(
        np.log(depth_hw.astype(np.float32)), (width, height), interpolation=cv2.INTER_LINEAR
    )
    if guide_hw3 is not None and (height > h or width > w):
        radius = int(np.ceil(max(height / h, width / w)))
        log_dense = guided_filter(guide_hw3, log_dense, radius=radius)
    return np.exp(log_dense).astype(np.float32)


def resize_confidence(conf_hw: np.ndarray, height: int, width: int) -> np.ndarray:
    """Confidence at another resolution (area average down, bilinear up), kept in [0, 1]."""
    h, w = conf_hw.shape
    if (h, w) == (height, width):
        return conf_hw.astype(np.float32)
    mode = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    out = cv2.resize(conf_hw.astype(np.float32), (width, height), interpolation=mode)
    return np.clip(out, 0.0, 1.0)
