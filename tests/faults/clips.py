"""Small distinct clips for the fault suite: cheap to compute flow on, different in content."""

from __future__ import annotations

import dataclasses

import numpy as np

from gflow.v1 import common_pb2
from services.common.artifacts import Artifacts
from services.common.video import store_frames
from services.fit.config import FitConfig, preset

T, H, W = 4, 24, 32


def clip_frames(seed: int, frame_count: int = T) -> np.ndarray:
    """uint8 [T, H, W, 3]: a smooth random texture sliding one pixel right per frame."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (H, W + frame_count, 3)).astype(np.float32)
    texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) / 3
    return np.stack(
        [texture[:, frame_count - t : frame_count - t + W] for t in range(frame_count)]
    ).astype(np.uint8)


def stored_clip(artifacts: Artifacts, seed: int, frame_count: int = T) -> common_pb2.VideoRef:
    return store_frames(artifacts, clip_frames(seed, frame_count), fps=10.0)


def lean_fit() -> FitConfig:
    """The `test` preset cut to a few iterations: these tests need a fit to exist, not to be
    good, and must stay cheap on two cores."""
    return dataclasses.replace(
        preset("test"), init_points=200, max_points=400, iters_first=8, iters=4, camera_iters=2
    )
