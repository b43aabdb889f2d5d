"""Ingest: the pipeline step that stores a user's clip: decode it (services.common.video), pick
frames, resize them to the working size, store them under their hash.

Everything downstream is keyed by the hash of the decoded frames, so the same clip at the same
settings is recognised however it arrives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gflow.v1 import common_pb2
from services.common.artifacts import Artifacts
from services.common.errors import InvalidArgumentError
from services.common.video import decode_video, store_frames

log = logging.getLogger(__name__)


@dataclass
class IngestConfig:
    """Which frames to take and at what working resolution."""

    # Longest side of the working resolution in pixels (frames are never upscaled); 0 = keep.
    max_side: int = 512
    # First frame (inclusive) and last frame (exclusive, None = to the end) of the source.
    start: int = 0
    end: int | None = None
    # Take every `stride`-th frame.
    stride: int = 1
    # Frame rate to record for a folder of images (mp4 files carry their own).
    fps: float = 10.0


def working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H, W) scaled so the longest side is at most `max_side`, both even (for video codecs)."""
    scale = min(1.0, max_side / max(height, width)) if max_side > 0 else 1.0
    return max(2, int(round(height * scale / 2)) * 2), max(2, int(round(width * scale / 2)) * 2)


def prepare_frames(frames: list[np.ndarray], config: IngestConfig) -> np.ndarray:
    """Select, check and resize frames into one uint8 [T, H, W, 3] array."""
    if config.stride < 1:
        raise InvalidArgumentError("ingest.stride", f"must be >= 1, got {config.stride}")
    selected = frames[config.start : config.end : config.stride]
    if len(selected) < 2:
        raise InvalidArgumentError(
            "video",
            f"needs at least 2 frames after start/end/stride, got {len(selected)} of {len(frames)}",
        )
    sizes = {f.shape[:2] for f in selected}
    if len(sizes) > 1:
        raise InvalidArgumentError("video", f"frames differ in size: {sorted(sizes)}")
    height, width = selected[0].shape[:2]
    out_h, out_w = working_size(height, width, config.max_side)
    resized = [
        f
        if (out_h, out_w) == (height, width)
        else cv2.resize(f, (out_w, out_h), interpolation=cv2.INTER_AREA)
        for f in selected
    ]
    return np.ascontiguousarray(np.stack(resized).astype(np.uint8))


def ingest(
    artifacts: Artifacts,
    source: Path | bytes,
    config: IngestConfig,
    suffix: str = ".mp4",
    name: str = "the uploaded video",
) -> common_pb2.VideoRef:
    """Decode `source` (a folder, a file, or the bytes of the file `name` with its `suffix`)
    and store it."""
    frames, fps = decode_video(source, suffix, name)
    frames_thw3 = prepare_frames(frames, config)
    log.info("ingested %d frames at %dx%d", *frames_thw3.shape[:3])
    return store_frames(artifacts, frames_thw3, fps or config.fps)
