"""Stitch overlapping windows of a long video into one depth sequence of one consistent scale.

Each window is reconstructed on its own, in its own scale (and, with poses, its own world frame).
Consecutive windows share `overlap` frames; on those frames the new window's depth is fitted to
what is already assembled with a robust (Huber IRLS) least-squares scale, optionally plus a shift,
and blended in with a linear ramp so no frame jumps. Poses follow the same scale and the rigid
transform that best maps the new window's overlap cameras onto the assembled ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.depth.quality import bad_depth_mask

HUBER_K = 1.345  # Huber threshold in robust standard deviations (95% efficiency on Gaussian noise)
MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation for Gaussian noise


@dataclass
class ScaleShift:
    """`ref ~ scale * new + shift` on the pixels that were used."""

    scale: float
    shift: float
    n_used: int  # pixels with positive finite depth in both maps and positive weight
    inlier_share: float  # share of those within the Huber threshold at the end


def fit_scale_shift(
    ref: np.ndarray,
    new: np.ndarray,
    weight: np.ndarray | None = None,
    with_shift: bool = False,
    iterations: int = 20,
) -> ScaleShift:
    """Robust least squares for `ref ~ scale * new (+ shift)` over relative residuals.

    Residuals are divided by `ref` so near and far pixels count alike; Huber weights (threshold
    1.345 robust sigmas, sigma from the median absolute deviation) make outliers such as moving
    objects or bad matches count linearly. Starts from the median ratio. No usable pixel gives
    scale 1, shift 0 and n_used 0.
    """
    ok = ~bad_depth_mask(ref) & ~bad_depth_mask(new)
    if weight is not None:
        ok &= np.asarray(weight) > 0
    r = np.asarray(ref, np.float64)[ok]
    n = np.asarray(new, np.float64)[ok]
    w0 = np.ones_like(r) if weight is None else np.asarray(weight, np.float64)[ok]
    if r.size == 0:
        return ScaleShift(1.0, 0.0, 0, 0.0)
    scale, shift = float(np.median(r / n)), 0.0
    inliers = np.ones(r.size, bool)
    for _ in range(iterations):
        res = (scale * n + shift - r) / r
        mad = float(np.median(np.abs(res - np.median(res))))
        delta = max(HUBER_K * MAD_TO_SIGMA * mad, 1e-9)
        inliers = np.abs(res) <= delta
        huber = np.where(inliers, 1.0, delta / np.maximum(np.abs(res), 1e-300))
        w = w0 * huber / r**2
        if with_shift:
            A = np.stack([n, np.ones_like(n)], axis=1)
            AtA = A.T @ (A * w[:, None])
            if np.linalg.cond(AtA) > 1e12:  # no depth variation: the shift is not observable
                new_scale, new_shift = float(np.sum(w * n * r) / np.sum(w * n * n)), 0.0
            else:
                new_scale, new_shift = np.linalg.solve(AtA, A.T @ (w * r))
        else:
            new_scale, new_shift = float(np.sum(w * n * r) / np.sum(w * n * n)), 0.0
        converged = abs(new_scale - scale) <= 1e-10 * abs(scale) and abs(new_shift - shift) <= 1e-10
        scale, shift = float(new_scale), float(new_shift)
        if converged:
            break
    return ScaleShift(scale, shift, int(r.size), float(inliers.mean()))


@dataclass
class WindowPart:
    """One window's result at the working resolution, starting at frame `start` of the video."""

    start: int
    depth_thw: np.ndarray  # float32 [n, H, W], positive (repaired)
    confidence_thw: np.ndarray  # float32 [n, H, W] in [0, 1]
    c2w_t44: np.ndarray | None = None  # float64 [n, 4, 4] in the window's own world frame

    @property
    def stop(self) -> int:
        return self.start + len(self.depth_thw)


@dataclass
class Stitched:
    depth_thw: np.ndarray  # float32 [T, H, W] in the first window's scale
    confidence_thw: np.ndarray  # float32 [T, H, W]
    c2w_t44: np.ndarray | None  # float64 [T, 4, 4] when every window has poses
    fits: list[ScaleShift]  # per window (the first is the identity)
    notes: list[str] = field(default_factory=list)


def average_rigid(transforms_n44: np.ndarray) -> np.ndarray:
    """Mean of rigid transforms: rotations projected to SO(3) via SVD, translations averaged."""
    U, _, Vt = np.linalg.svd(transforms_n44[:, :3, :3].sum(axis=0))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    out = np.eye(4)
    out[:3, :3] = U @ D @ Vt
    out[:3, 3] = transforms_n44[:, :3, 3].mean(axis=0)
    return out


def stitch_windows(parts: list[WindowPart], n_frames: int, with_shift: bool = False) -> Stitched:
    """Assembles windows (sorted by start, each sharing at least one frame with the ones before,
    together covering 0..n_frames) into one sequence."""
    if not parts or parts[0].start != 0 or max(p.stop for p in parts) != n_frames:
        raise ValueError("windows must start at frame 0 and cover every frame")
    first = parts[0]
    height, width = first.depth_thw.shape[1:]
    depth = np.zeros((n_frames, height, width), np.float32)
    conf = np.zeros((n_frames, height, width), np.float32)
    has_poses = all(p.c2w_t44 is not None for p in parts)
    poses = np.tile(np.eye(4), (n_frames, 1, 1)) if has_poses else None
    depth[: first.stop], conf[: first.stop] = first.depth_thw, first.confidence_thw
    if poses is not None:
        poses[: first.stop] = first.c2w_t44
    fits = [ScaleShift(1.0, 0.0, 0, 1.0)]
    notes: list[str] = []
    covered = first.stop
    for part in parts[1:]:
        if part.start >= covered:
            raise ValueError(f"window at frame {part.start} shares no frame with the ones before")
        shared = slice(part.start, covered)
        n_shared = covered - part.start
        local = slice(0, n_shared)
        fit = fit_scale_shift(
            depth[shared],
            part.depth_thw[local],
            np.minimum(conf[shared], part.confidence_thw[local]),
            with_shift,
        )
        if fit.n_used == 0:
            notes.append(
                f"window at frame {part.start}: no pixel of the overlap has depth in both "
                "windows; its scale was kept at 1"
            )
        new_depth = np.maximum(fit.scale * part.depth_thw + fit.shift, 1e-6 * fit.scale)
        ramp = (np.arange(1, n_shared + 1) / (n_shared + 1))[:, None, None].astype(np.float32)
        depth[shared] = (1 - ramp) * depth[shared] + ramp * new_depth[local]
        conf[shared] = (1 - ramp) * conf[shared] + ramp * part.confidence_thw[local]
        depth[covered : part.stop] = new_depth[n_shared:]
        conf[covered : part.stop] = part.confidence_thw[n_shared:]
        if poses is not None:
            scaled = np.array(part.c2w_t44, np.float64, copy=True)
            scaled[:, :3, 3] *= fit.scale
            to_ref = average_rigid(poses[shared] @ np.linalg.inv(scaled[local]))
            poses[covered : part.stop] = to_ref @ scaled[n_shared:]
        fits.append(fit)
        covered = max(covered, part.stop)
    return Stitched(depth, conf, poses, fits, notes)
