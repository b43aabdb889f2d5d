"""Ingested videos in the store: uint8 [T, H, W, 3] frames keyed by their content hash.

Servers never take a client's word for which video it sends: every stage key derives from the
SHA-256 the store recorded for the frames (`frames_sha256`), and the frames read for work are
checked against that checksum and against the request's `content_hash`.
"""

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
    """Store decoded frames (once per content) and describe them. An object already under the
    frames' key is reused only when it holds exactly these frames (else it is replaced)."""
    content = frames_hash(frames_thw3)
    key = f"video/{content[:40]}/frames"
    ref = artifacts.put_array_once(key, frames_thw3, "THWC")
    t, h, w, _ = frames_thw3.shape
    return common_pb2.VideoRef(
        frames=ref, height=h, width=w, fps=fps, frame_count=t, content_hash=content
    )


def frames_sha256(artifacts: Artifacts, video: common_pb2.VideoRef) -> str:
    """The recorded SHA-256 of the stored frames `video` names: what every stage key derives
    from. An empty content hash is refused (all such requests would share one key)."""
    if not video.content_hash:
        raise InvalidArgumentError(
            "video.content_hash", "is empty: send the VideoRef that ingest returned"
        )
    if not video.frames.key:
        raise InvalidArgumentError("video.frames", "the video reference names no frames artifact")
    return artifacts.pinned(video.frames, "video.frames").sha256


def load_frames(artifacts: Artifacts, video: common_pb2.VideoRef, sha256: str) -> np.ndarray:
    """The stored uint8 [T, H, W, 3] frames of an ingested video, checked against `sha256`
    (from `frames_sha256`) and against the video's record and content hash."""
    ref = common_pb2.ArtifactRef()
    ref.CopyFrom(video.frames)
    ref.sha256 = sha256
    frames = artifacts.get_array(
        ref, layout="THWC", expect_hw=(video.height, video.width), field="video.frames"
    )
    if frames.dtype != np.uint8 or frames.shape[0] != video.frame_count:
        raise InvalidArgumentError(
            "video.frames",
            f"expected {video.frame_count} uint8 frames, got {frames.shape} {frames.dtype}",
        )
    if frames_hash(frames) != video.content_hash:
        raise InvalidArgumentError(
            "video.content_hash",
            "does not match the stored frames: send the VideoRef that ingest returned",
        )
    return frames
