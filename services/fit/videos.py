"""Videos of a fit: reconstruction, Gaussian centres, depth, moving masks and trajectories.

Each video is H.264 mp4 bytes (services.common.video.write_mp4). Trajectories are drawn from
the tracks the fit stage writes (services.fit.tracks.track_queries; by default a grid of frame-0
points); still tracks are drawn in blue, moving ones in warm colours by speed. Every statistic
used for drawing is defined on empty sets, so a clip where nothing moves, or everything does, or
no point is tracked, draws like any other (the original crashed there).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError
from services.common.preview import colorize, overlay_mask
from services.common.video import write_mp4
from services.fit.engine import FitPriors, FitResult
from services.fit.gaussians import render_frame
from services.fit.queries import DEFAULT_TRACK_GRID, grid_queries_q3
from services.fit.tracks import Tracks, track_queries

VIDEO_NAMES = ("reconstruction", "centres", "depth", "moving", "trajectories")
_CENTRE_SIGMA_PX = 0.6  # on-screen size of a Gaussian in the centres video
_STILL_RGB = (60, 160, 255)  # OpenCV draws the given values into the RGB frames as they are


def render_videos(
    result: FitResult,
    priors: FitPriors,
    *,
    fps: float = 10.0,
    names: tuple[str, ...] = VIDEO_NAMES,
    device: str = "cpu",
    backend: str = "auto",
    tracks: Tracks | None = None,
) -> dict[str, bytes]:
    """The named videos of a fit as mp4 bytes, keyed by name (see VIDEO_NAMES); the
    trajectories video draws `tracks` (None: a DEFAULT_TRACK_GRID grid of frame-0 points)."""
    makers = {
        "reconstruction": lambda: reconstruction_frames(
            result, priors.frames_thw3, device, backend
        ),
        "centres": lambda: centre_frames(result, device, backend),
        "depth": lambda: depth_frames(result),
        "moving": lambda: np.stack(
            [
                overlay_mask(frame, mask)
                for frame, mask in zip(priors.frames_thw3, result.moving_mask_thw, strict=True)
            ]
        ),
        "trajectories": lambda: trajectory_frames(result, priors.frames_thw3, tracks),
    }
    unknown = [name for name in names if name not in makers]
    if unknown:
        raise InvalidArgumentError("names", f"unknown videos {unknown}; use {list(makers)}")
    return {name: write_mp4(makers[name](), fps) for name in names}


def reconstruction_frames(
    result: FitResult, frames_thw3: np.ndarray, device: str = "cpu", backend: str = "auto"
) -> np.ndarray:
    """Input and reconstruction side by side: uint8 [T, H, 2W, 3]."""
    out = []
    for t, frame in enumerate(result.frames):
        rendered = render_frame(
            frame,
            result.c2w_t44[t],
            result.K_33,
            result.width,
            result.height,
            device=device,
            backend=backend,
        )
        rgb_hw3 = (rendered.rgb_hw3.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        out.append(np.concatenate([frames_thw3[t], rgb_hw3], axis=1))
    return np.stack(out)


def centre_frames(result: FitResult, device: str = "cpu", backend: str = "auto") -> np.ndarray:
    """Every Gaussian drawn as a small opaque dot of its colour: uint8 [T, H, W, 3]."""
    out = []
    for t, frame in enumerate(result.frames):
        w2c_44 = np.linalg.inv(result.c2w_t44[t])
        z_n = frame.means_n3 @ w2c_44[:3, 2].astype(np.float32) + np.float32(w2c_44[2, 3])
        sigma_n = np.maximum(z_n, 1e-6) * _CENTRE_SIGMA_PX / result.K_33[0, 0]
        dots = dataclasses.replace(
            frame,
            scales_n3=np.repeat(sigma_n[:, None], 3, axis=1).astype(np.float32),
            opacities_n=np.ones(len(frame), np.float32),
        )
        rendered = render_frame(
            dots,
            result.c2w_t44[t],
            result.K_33,
            result.width,
            result.height,
            device=device,
            backend=backend,
        )
        out.append((rendered.rgb_hw3.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
    return np.stack(out)


def depth_frames(result: FitResult) -> np.ndarray:
    """Rendered depth in one colour scale for the whole clip: uint8 [T, H, W, 3]."""
    T, H, W = result.depth_thw.shape
    stacked_hw = result.depth_thw.reshape(T * H, W)
    return colorize(stacked_hw, stacked_hw > 0).reshape(T, H, W, 3)


def trajectory_frames(
    result: FitResult, frames_thw3: np.ndarray, tracks: Tracks | None = None
) -> np.ndarray:
    """`tracks` drawn over the input (None: a DEFAULT_TRACK_GRID grid of frame-0 points):
    uint8 [T, H, W, 3]."""
    if tracks is None:
        queries_q3 = grid_queries_q3(result.height, result.width, DEFAULT_TRACK_GRID)
        tracks = track_queries(result, queries_q3)
    return draw_trajectories(frames_thw3, tracks.points_qt2, tracks.occluded_qt, tracks.moving_q)


def draw_trajectories(
    frames_thw3: np.ndarray,
    points_nt2: np.ndarray,
    occluded_nt: np.ndarray,
    moving_n: np.ndarray,
    tail: int = 8,
) -> np.ndarray:
    """Draws the last `tail` steps of each track on every frame: uint8 [T, H, W, 3].

    Still tracks are blue; moving ones go from yellow (slow) to red (the fastest moving track).
    Any of the sets may be empty.
    """
    points_nt2 = np.asarray(points_nt2, np.float64).reshape(-1, len(frames_thw3), 2)
    occluded_nt = np.asarray(occluded_nt, bool).reshape(len(points_nt2), len(frames_thw3))
    moving_n = np.asarray(moving_n, bool).reshape(-1)
    colours_n3 = _track_colours(points_nt2, occluded_nt, moving_n)
    out = []
    for t, frame_hw3 in enumerate(frames_thw3):
        canvas = np.ascontiguousarray(frame_hw3.copy())
        for n in range(len(points_nt2)):
            colour = tuple(int(c) for c in colours_n3[n])
            for s in range(max(1, t - tail + 1), t + 1):
                if not (occluded_nt[n, s - 1] or occluded_nt[n, s]):
                    cv2.line(
                        canvas,
                        _px(points_nt2[n, s - 1]),
                        _px(points_nt2[n, s]),
                        colour,
                        1,
                        cv2.LINE_AA,
                    )
            if not occluded_nt[n, t]:
                cv2.circle(canvas, _px(points_nt2[n, t]), 1, colour, -1, cv2.LINE_AA)
        out.append(canvas)
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def _px(xy_2: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy_2[0]))), int(round(float(xy_2[1])))


def _track_colours(
    points_nt2: np.ndarray, occluded_nt: np.ndarray, moving_n: np.ndarray
) -> np.ndarray:
    """RGB per track: still blue; moving by mean visible speed relative to the fastest."""
    steps_nt = np.linalg.norm(np.diff(points_nt2, axis=1), axis=-1)
    seen_nt = ~(occluded_nt[:, 1:] | occluded_nt[:, :-1])
    counts_n = seen_nt.sum(axis=1)
    speed_n = np.where(counts_n > 0, (steps_nt * seen_nt).sum(axis=1) / np.maximum(counts_n, 1), 0)
    fastest = float(speed_n[moving_n].max()) if moving_n.any() else 0.0
    relative_n = speed_n / fastest if fastest > 0 else np.zeros_like(speed_n)
    colours_n3 = np.tile(np.array(_STILL_RGB, np.float64), (len(moving_n), 1))
    warm_n3 = np.stack(
        [
            np.full_like(relative_n, 255.0),
            230.0 * (1.0 - relative_n),
            np.full_like(relative_n, 40.0),
        ],
        axis=1,
    )
    colours_n3[moving_n] = warm_n3[moving_n]
    return colours_n3.astype(np.uint8)
