"""Small pictures a stage writes so a person can see at a glance whether its output is right."""

from __future__ import annotations

import cv2
import numpy as np


def encode_png(image_hw3: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(image_hw3, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def colorize(values_hw: np.ndarray, valid_hw: np.ndarray | None = None) -> np.ndarray:
    """Turbo colour map of a scalar map over its 2nd-98th percentile; invalid pixels black."""
    valid = np.isfinite(values_hw) if valid_hw is None else valid_hw & np.isfinite(values_hw)
    out = np.zeros((*values_hw.shape, 3), np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(values_hw[valid], [2, 98])
    scaled = np.clip((values_hw - lo) / max(hi - lo, 1e-9), 0, 1)
    scaled = np.where(valid, scaled, 0)
    rgb = cv2.cvtColor(
        cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB
    )
    out[valid] = rgb[valid]
    return out


def flow_to_rgb(flow_hw2: np.ndarray) -> np.ndarray:
    """Hue = direction, value = magnitude (normalised by the 98th percentile)."""
    dx, dy = flow_hw2[..., 0], flow_hw2[..., 1]
    magnitude = np.hypot(dx, dy)
    scale = max(float(np.percentile(magnitude, 98)), 1e-6)
    hsv = np.zeros((*flow_hw2.shape[:2], 3), np.uint8)
    hsv[..., 0] = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * 179).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = (np.clip(magnitude / scale, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def overlay_mask(image_hw3: np.ndarray, mask_hw: np.ndarray, color=(255, 40, 40)) -> np.ndarray:
    out = image_hw3.astype(np.float32)
    out[mask_hw] = 0.5 * out[mask_hw] + 0.5 * np.asarray(color, np.float32)
    return out.astype(np.uint8)


def strip(images: list[np.ndarray], max_width: int = 1024) -> np.ndarray:
    """Images side by side, scaled down together to at most `max_width` pixels."""
    row = np.concatenate(images, axis=1)
    if row.shape[1] > max_width:
        scale = max_width / row.shape[1]
        row = cv2.resize(
            row, (max_width, max(1, int(row.shape[0] * scale))), interpolation=cv2.INTER_AREA
        )
    return row
