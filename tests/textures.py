"""Test images with texture in every direction: what flow and photometric checks need."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_texture_hw3(height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture (noise blurred to a few pixels), uint8."""
    noise_hw3 = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    smooth_hw3 = cv2.GaussianBlur(noise_hw3, (0, 0), 3.0)
    smooth_hw3 = (smooth_hw3 - smooth_hw3.min()) / (smooth_hw3.max() - smooth_hw3.min())
    return (255 * smooth_hw3).astype(np.uint8)
