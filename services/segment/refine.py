"""Moving masks that hug the object: edge-aware refinement guided by the image, and removal of
components that do not persist over time.

Masks made from optical flow carry a halo: flow is smooth across object boundaries, so the motion
of an object smears a few pixels into the background around it (DIS flow: about its patch size)
and bridges narrow gaps between objects. Flow errors where content enters the frame or where the
flow is poorly textured leave small blobs on the background.

1. **Colour-guided relabelling** (`refine_mask_edges`). A trimap is built from the mask.
   The core (the mask eroded by the band width, and only where the flow passes its
   forward-backward check, since most of the halo is flow that fails it) is surely object;
   beyond the mask (dilated by 1 px) is surely background; the rest of the mask and a band
   outside it are unknown. Each unknown pixel is compared with the sure pixels within three band
   widths by a joint bilateral filter of each label: its mean colour similarity
   exp(-|dLab|^2 / (2 colour_sigma^2)) to the core and to the outside. Halo pixels look like the
   background next to them and fall back to it; object pixels the mask missed look like the core
   and join it; a blob with no reliable core disappears. Mask pixels with reliable flow leave
   only on a clear verdict (`keep_ratio`), so masks from good flow keep their shaded rims.
   A median filter smooths the result.
2. **Temporal support** (`drop_unsupported_components`). Each connected component of a frame's
   mask must overlap the masks of the previous or next frame warped into it by flow: a component
   with less than `min_temporal_support` of its pixels covered by such a warped mask is dropped.

`refine_masks` runs both over a clip. The segment engine calls it when frames are given; the fit
can import it for its own moving masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError
from services.flow.consistency import forward_backward_consistency, warp_image

_MAX_OFFSETS_PER_AXIS = 13  # the vote window is sampled on at most this many offsets per axis
# A narrower band means frames so small (under about 120 px diagonal) that an object is a few
# band widths across and its rim colours blur into the background (worse after video coding):
# the colour vote would cut objects more than halos there (64x48 from an mp4, exact flow:
# J 0.99 -> 0.84), so it is skipped.
_MIN_BAND_PX = 3


@dataclass
class MaskRefineConfig:
    """How moving masks are tightened to the object. Defaults suit DIS flow at 854x480 and below."""

    enabled: bool = True
    """Refine the masks (False: the flow masks as they come)."""
    band_px: int = 8
    """Width in px of the uncertain band (the mask's boundary zone that is relabelled by colour):
    the halo DIS flow leaves is about its patch size, 8 px (0: no colour relabelling)."""
    band_max_share: float = 0.025
    """Small frames cap the band at this share of the image diagonal, so small objects keep a
    core: 4 px at 128x96, 8 px from 256x192 up; below 3 px (frames under about 120 px diagonal,
    e.g. 64x48) there is no colour relabelling."""
    colour_sigma: float = 6.0
    """Lab colour distance at which a sure pixel's vote falls to exp(-1/2) (smaller: sharper
    colour separation, more sensitive to shading)."""
    keep_ratio: float = 5.0
    """A mask pixel whose flow is reliable leaves the mask only where the background's colour
    similarity is this many times the object's (1: plain majority, as for every other pixel):
    where the flow is right, the colour vote may only remove a clear halo."""
    min_temporal_support: float = 0.3
    """Least share of a component's pixels that the previous or next mask, warped into the frame
    by flow, must cover for the component to stay (0: keep every component)."""


def check_refine_config(cfg: MaskRefineConfig, field: str = "refine") -> None:
    """Raises InvalidArgumentError naming the bad field."""
    if cfg.band_px < 0:
        raise InvalidArgumentError(f"{field}.band_px", f"{cfg.band_px} must be >= 0 (0: off)")
    if not 0.0 < cfg.band_max_share < 0.5:
        raise InvalidArgumentError(
            f"{field}.band_max_share", f"{cfg.band_max_share} is outside (0, 0.5)"
        )
    if not (np.isfinite(cfg.colour_sigma) and cfg.colour_sigma > 0):
        raise InvalidArgumentError(
            f"{field}.colour_sigma", f"{cfg.colour_sigma} must be a finite number > 0"
        )
    if not (np.isfinite(cfg.keep_ratio) and cfg.keep_ratio >= 1.0):
        raise InvalidArgumentError(f"{field}.keep_ratio", f"{cfg.keep_ratio} must be >= 1")
    if not 0.0 <= cfg.min_temporal_support <= 1.0:
        raise InvalidArgumentError(
            f"{field}.min_temporal_support",
            f"{cfg.min_temporal_support} is outside [0, 1] (0 keeps every component)",
        )


def refine_masks(
    frames_thw3: np.ndarray,
    masks_thw: np.ndarray,
    flow_fwd_t1hw2: np.ndarray,
    flow_bwd_t1hw2: np.ndarray,
    cfg: MaskRefineConfig,
    fb_threshold_px: float = 1.0,
) -> np.ndarray:
    """Refined bool [T, H, W] masks: colour-guided band relabelling per frame, then the temporal
    support test against the refined neighbours.

    `frames_thw3` uint8 RGB [T, H, W, 3]; `masks_thw` bool [T, H, W]; flows float [T-1, H, W, 2]
    in px, pair i being frames i -> i+1 (forward) and i+1 -> i (backward); a pixel's flow is
    reliable where its forward-backward round trip misses by less than `fb_threshold_px`.
    """
    check_refine_config(cfg)
    n_frames, height, width = masks_thw.shape
    if frames_thw3.shape != (n_frames, height, width, 3) or frames_thw3.dtype != np.uint8:
        raise InvalidArgumentError(
            "frames",
            f"shape {frames_thw3.shape} dtype {frames_thw3.dtype}, expected uint8 "
            f"{(n_frames, height, width, 3)}: the video's RGB frames at the masks' size",
        )
    if not cfg.enabled:
        return masks_thw.copy()
    reliable_thw = _reliable_thw(flow_fwd_t1hw2, flow_bwd_t1hw2, fb_threshold_px)
    edges_thw = np.stack(
        [
            refine_mask_edges(image_hw3, mask_hw, reliable_hw, cfg)
            for image_hw3, mask_hw, reliable_hw in zip(
                frames_thw3, masks_thw, reliable_thw, strict=True
            )
        ]
    )
    return drop_unsupported_components(edges_thw, flow_fwd_t1hw2, flow_bwd_t1hw2, cfg)


def refine_mask_edges(
    image_hw3: np.ndarray, mask_hw: np.ndarray, reliable_hw: np.ndarray, cfg: MaskRefineConfig
) -> np.ndarray:
    """The mask with its uncertain pixels relabelled by colour (module docstring, step 1).

    `reliable_hw` marks pixels whose flow passed the forward-backward check: only those can
    vouch for the object (the halo is mostly flow that fails the check).
    """
    band = band_px(mask_hw.shape, cfg)
    mask_u8 = mask_hw.astype(np.uint8)
    if band == 0 or not mask_u8.any():
        return mask_hw.astype(bool)
    # Pixels beyond the image edge count as object for the erosion (cv2's default), so an object
    # leaving the frame keeps its core along the edge.
    core_hw = cv2.erode(mask_u8, _disk(band)).astype(bool) & reliable_hw
    outside_hw = ~cv2.dilate(mask_u8, _disk(1)).astype(bool)
    ys, xs = np.nonzero(~core_hw & cv2.dilate(mask_u8, _disk(band)).astype(bool))
    fg_p, bg_p = _colour_densities(image_hw3, core_hw, outside_hw, ys, xs, 3 * band, cfg)
    inside_p = mask_hw[ys, xs]
    keep_ratio_p = np.where(reliable_hw[ys, xs], cfg.keep_ratio, 1.0)
    vote_p = np.where(inside_p, keep_ratio_p * fg_p >= bg_p, fg_p > bg_p)
    refined_hw = core_hw.copy()
    # Where no sure pixel looks alike at all, the flow mask stands.
    refined_hw[ys, xs] = np.where(fg_p + bg_p < 1e-12, inside_p, vote_p)
    # The per-pixel vote leaves ragged edges and pinholes.
    median = (band // 2) * 2 + 1
    return cv2.medianBlur(refined_hw.astype(np.uint8), median).astype(bool)


def band_px(hw: tuple[int, int], cfg: MaskRefineConfig) -> int:
    """The uncertain band's width in px at this frame size (0: no colour relabelling)."""
    band = min(cfg.band_px, round(cfg.band_max_share * float(np.hypot(*hw))))
    return band if band >= _MIN_BAND_PX else 0


def _colour_densities(
    image_hw3: np.ndarray,
    core_hw: np.ndarray,
    outside_hw: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    radius: int,
    cfg: MaskRefineConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour similarity of pixels (ys, xs) to the core's and to the outside's pixels
    within `radius` (a joint bilateral filter of each label, normalised by its sample count, so
    the larger class does not win by numbers). Returns (object, background) per pixel."""
    lab_hw3 = cv2.cvtColor(image_hw3.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    step = max(1, -(-(2 * radius + 1) // _MAX_OFFSETS_PER_AXIS))
    pad = ((radius, radius), (radius, radius))
    lab_pad = np.pad(lab_hw3, (*pad, (0, 0)), mode="edge")
    label_pad = np.pad(core_hw.astype(np.int8) - outside_hw.astype(np.int8), pad)  # +1 / -1 / 0
    own_p3 = lab_hw3[ys, xs]
    sums_2p = np.zeros((2, len(ys)), np.float64)
    counts_2p = np.zeros((2, len(ys)), np.float64)
    inv_two_var = 1.0 / (2.0 * cfg.colour_sigma**2)
    for dy in range(-radius, radius + 1, step):
        for dx in range(-radius, radius + 1, step):
            if dy * dy + dx * dx > radius * radius:
                continue
            label_p = label_pad[ys + radius + dy, xs + radius + dx]
            other_p3 = lab_pad[ys + radius + dy, xs + radius + dx]
            weight_p = np.exp(-np.sum(np.square(own_p3 - other_p3), axis=1) * inv_two_var)
            for row, is_label_p in enumerate((label_p > 0, label_p < 0)):
                sums_2p[row] += weight_p * is_label_p
                counts_2p[row] += is_label_p
    fg_p, bg_p = sums_2p / np.maximum(counts_2p, 1.0)
    return fg_p, bg_p


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _reliable_thw(
    flow_fwd_t1hw2: np.ndarray, flow_bwd_t1hw2: np.ndarray, fb_threshold_px: float
) -> list[np.ndarray]:
    """Per frame, where its flow (forward; backward for the last frame) passes the round trip."""
    pairs = zip(flow_fwd_t1hw2, flow_bwd_t1hw2, strict=True)
    reliable = [forward_backward_consistency(f, b, fb_threshold_px)[0] for f, b in pairs]
    last = forward_backward_consistency(flow_bwd_t1hw2[-1], flow_fwd_t1hw2[-1], fb_threshold_px)
    return [*reliable, last[0]]


def drop_unsupported_components(
    masks_thw: np.ndarray,
    flow_fwd_t1hw2: np.ndarray,
    flow_bwd_t1hw2: np.ndarray,
    cfg: MaskRefineConfig,
) -> np.ndarray:
    """Masks without the components that the neighbour frames do not confirm (module docstring,
    step 2). A single frame has no neighbours and keeps everything."""
    n_frames = len(masks_thw)
    if cfg.min_temporal_support <= 0.0 or n_frames < 2:
        return masks_thw.copy()
    out_thw = masks_thw.copy()
    for t in range(n_frames):
        support_hw = np.zeros(masks_thw.shape[1:], bool)
        if t > 0:
            support_hw |= (
                warp_image(masks_thw[t - 1].astype(np.float32), flow_bwd_t1hw2[t - 1]) >= 0.5
            )
        if t < n_frames - 1:
            support_hw |= warp_image(masks_thw[t + 1].astype(np.float32), flow_fwd_t1hw2[t]) >= 0.5
        n_labels, labels_hw = cv2.connectedComponents(masks_thw[t].astype(np.uint8), connectivity=8)
        if n_labels <= 1:
            continue
        area_l = np.bincount(labels_hw.ravel(), minlength=n_labels)
        supported_l = np.bincount(labels_hw.ravel(), weights=support_hw.ravel(), minlength=n_labels)
        keep_l = supported_l >= cfg.min_temporal_support * area_l
        keep_l[0] = False
        out_thw[t] = keep_l[labels_hw]
    return out_thw
