"""Video encoding shared by every stage that writes an mp4 (browsers play H.264 yuv420p)."""

from __future__ import annotations

import numpy as np


def write_mp4(frames_thw3: np.ndarray, fps: float) -> bytes:
    """H.264 mp4 bytes of uint8 RGB frames in yuv420p, which browsers play; odd sizes are
    padded by one pixel for the codec. The pixel format goes through imageio's `pixelformat`
    only: also naming it in output_params made ffmpeg warn on every video."""
    import imageio.v3 as iio

    frames = np.asarray(frames_thw3, dtype=np.uint8)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return iio.imwrite(
        "<bytes>",
        frames,
        extension=".mp4",
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        macro_block_size=1,
        pixelformat="yuv420p",
    )


def read_mp4(data: bytes) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB frames of mp4 bytes (as written by write_mp4, padding included)."""
    import imageio.v3 as iio

    return np.asarray(iio.imread(data, extension=".mp4", plugin="FFMPEG"), dtype=np.uint8)
