"""Ingest: decode a video (mp4 or a folder of frames), resize, pick frames, hash, store.

Everything downstream is keyed by the hash of the decoded frames, so the same clip at the same
settings is recognised however it arrives.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from gflow.v1 import common_pb2
from services.common.artifacts import Artifacts
from services.common.errors import InvalidArgumentError
from services.common.video import store_frames

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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


def _read_folder(folder: Path) -> list[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InvalidArgumentError(
            "video", f"folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images"
        )
    frames = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InvalidArgumentError("video", f"{path} is not a readable image")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def _read_container(data: bytes, suffix: str, name: str) -> tuple[list[np.ndarray], float]:
    """Decode through a temporary file; an undecodable input is one line naming `name` (the
    user's file), not ffmpeg's dump about the temporary one."""
    import imageio.v3 as iio

    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            meta = iio.immeta(tmp.name, plugin="FFMPEG")
            frames = [np.asarray(f)[..., :3] for f in iio.imiter(tmp.name, plugin="FFMPEG")]
        except Exception as exc:  # imageio raises many types for undecodable input
            log.debug("ffmpeg could not decode %s: %s", name, exc)
            raise InvalidArgumentError(
                "video", f"cannot decode {name}: not a video file ffmpeg can read"
            ) from None
    return frames, float(meta.get("fps") or 0.0)


def decode_video(
    source: Path | bytes, suffix: str = ".mp4", name: str = "the uploaded video"
) -> tuple[list[np.ndarray], float]:
    """(frames as RGB uint8 [H, W, 3], fps or 0) from a folder, a video file or its bytes
    (`name` says which file the bytes came from, for errors)."""
    if isinstance(source, Path):
        if not source.exists():
            raise InvalidArgumentError("video", f"{source} does not exist")
        if source.is_dir():
            return _read_folder(source), 0.0
        return _read_container(source.read_bytes(), source.suffix or suffix, str(source))
    return _read_container(source, suffix, name)


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
