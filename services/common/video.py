"""Ingested videos in the store: uint8 [T, H, W, 3] frames keyed by their content hash."""

from __future__ import annotations

import hashlib

import numpy as np

from gflow.v1 import common_pb2
from services.common.artifacts import Artifacts
from services.common.errors import InvalidArgumentError


def frames_hash(frames_thw3: np.ndarray) -> str:
    digest = hashlib.sha256(str(frames_thw3.shape).encode())
    digest.update(frames_thw3.tobytes())
    return digest.hexdigest()


def store_frames(artifacts: Artifacts, frames_thw3: np.ndarray, fps: float) -> common_pb2.VideoRef:
    """Store decoded frames (once per content) and describe them."""
    content = frames_hash(frames_thw3)
    key = f"video/{content[:40]}/frames"
    ref = artifacts.find(key) or artifacts.put_array(key, frames_thw3, "THWC")
    t, h, w, _ = frames_thw3.shape
    return common_pb2.VideoRef(
        frames=ref, height=h, width=w, fps=fps, frame_count=t, content_hash=content
    )


def load_frames(artifacts: Artifacts, video: common_pb2.VideoRef) -> np.ndarray:
    """The stored uint8 [T, H, W, 3] frames of an ingested video, checked against its record."""
    if not video.frames.key:
        raise InvalidArgumentError("video.frames", "the video reference names no frames artifact")
    frames = artifacts.get_array(
        video.frames, layout="THWC", expect_hw=(video.height, video.width), field="video.frames"
    )
    if frames.dtype != np.uint8 or frames.shape[0] != video.frame_count:
        raise InvalidArgumentError(
            "video.frames",
            f"expected {video.frame_count} uint8 frames, got {frames.shape} {frames.dtype}",
        )
    return frames
