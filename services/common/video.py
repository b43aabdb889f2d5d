"""Video in one place: decoding (a file, its bytes or a folder of frames, with the frame rate
the container records), H.264 mp4 encoding, and ingested videos in the store.

Stored videos are uint8 [T, H, W, 3] frames keyed by their content hash. Servers never take a
client's word for which video it sends: every stage key derives from the SHA-256 the store
recorded for the frames (`frames_sha256`), and the frames read for work are checked against that
checksum and against the request's `content_hash`.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np

from gflow.v1 import common_pb2
from services.common.artifacts import Artifacts
from services.common.errors import InvalidArgumentError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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


def write_mp4(frames_thw3: np.ndarray, fps: float) -> bytes:
    """H.264 mp4 bytes of uint8 RGB frames in yuv420p, which browsers play; odd sizes are
    padded by one pixel for the codec. The pixel format goes through imageio's `pixelformat`
    only: also naming it in output_params made ffmpeg warn on every video."""
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
