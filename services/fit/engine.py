"""The GFlow fitting engine: a clip and its priors in, per-frame Gaussians and cameras out.

Frame 0: Gaussians are placed by lifting texture-weighted pixel samples with the depth prior,
then optimised on the frame. Each later frame t:
1. camera: a RANSAC PnP start from flow correspondences on the still part of frame t-1 (or the
   prior pose when the depth stage gave one), refined photometrically against the still pixels;
2. still/moving split of the Gaussians visible at t-1 (2-means on residual motion, mask prior);
3. moving Gaussians follow the flow, lifted by the depth prior (`motion.py`);
4. pixel-wise densification where frame t is uncovered or badly rendered;
5. optimisation of all Gaussians: RGB (L2 + SSIM), depth, flow on the moving ones, still and
   isotropic regularisers; then faint Gaussians are pruned.
Every random choice comes from generators seeded by (seed, frame, ...), and each frame starts a
fresh optimiser, so a checkpoint needs only the model and the outputs so far: a resumed run
repeats an uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from services.common.config import to_json
from services.common.errors import InvalidArgumentError, ProgressFn, no_progress
from services.evaluation.geometry import project_p2
from services.evaluation.metrics import psnr
from services.fit import checkpoint as ckpt
from services.fit.camera import flow_correspondences, optimise_pose, pnp_c2w, project_n2
from services.fit.checkpoint import CheckpointSink
from services.fit.cluster import split_moving
from services.fit.config import FitConfig, validate
from services.fit.densify import densify_budget, densify_probability_hw, prune_keep_n
from services.fit.gaussians import FrameGaussians, Gaussians, mean_depth_hw
from services.fit.initialise import gaussians_at_pixels, sample_pixels, texture_probability_hw
from services.fit.losses import (
    depth_loss,
    flow_loss,
    isotropic_loss,
    photometric_loss,
    still_loss,
)
from services.fit.motion import (
    COVERED_ALPHA,
    FB_TOLERANCE_PX,
    inside_image,
    lift_moving,
    nearest_pixel,
    sample_bilinear,
    spread_displacement,
    visible_n,
)
from services.fit.timing import PhaseTimer

logger = logging.getLogger(__name__)

# Learning rate of each parameter group relative to the configured one. Means move in units of
# the scene depth (median depth of frame 0), so one setting suits scenes of any size.
_LR_SCALE = {"means": 0.1, "scales": 1.0, "quats": 1.0, "opacities": 5.0, "colors": 2.0}
_MIN_SCALE_PIXELS = 50  # still pixels needed to re-estimate the depth prior's scale
_SCALE_RANGE = (0.5, 2.0)


@dataclass
class FitPriors:
    """A clip and the priors of the earlier stages (T frames of H x W pixels)."""

    frames_thw3: np.ndarray  # uint8 [T, H, W, 3] RGB
    depth_thw: np.ndarray  # float32 [T, H, W] camera z, one scale for the clip; <= 0 = unknown
    K_33: np.ndarray  # float64 intrinsics, pixel centres at integer coordinates
    flow_fwd_t1hw2: np.ndarray  # float32 [T-1, H, W, 2] (dx, dy) from frame t to t+1
    flow_bwd_t1hw2: np.ndarray | None  # float32 [T-1, H, W, 2] from t+1 to t, or None
    moving_thw: np.ndarray  # float32 [T, H, W] moving score in [0, 1], or bool
    c2w_t44: np.ndarray | None = None  # float64 [T, 4, 4] initial poses from the depth stage

    def validate(self) -> None:
        """Raises InvalidArgumentError naming the first field that cannot be used."""
        frames = self.frames_thw3
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InvalidArgumentError(
                "frames_thw3", f"need uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        T, H, W = frames.shape[:3]
        if T < 1 or H < 8 or W < 8:
            raise InvalidArgumentError("frames_thw3", f"need T >= 1 and H, W >= 8; got {T}x{H}x{W}")
        _check_array("depth_thw", self.depth_thw, (T, H, W))
        _check_array("flow_fwd_t1hw2", self.flow_fwd_t1hw2, (T - 1, H, W, 2))
        if self.flow_bwd_t1hw2 is not None:
            _check_array("flow_bwd_t1hw2", self.flow_bwd_t1hw2, (T - 1, H, W, 2))
        _check_array("moving_thw", self.moving_thw, (T, H, W))
        moving = np.asarray(self.moving_thw, np.float32)
        if moving.min(initial=0.0) < 0.0 or moving.max(initial=0.0) > 1.0:
            raise InvalidArgumentError("moving_thw", "scores must lie in [0, 1]")
        positive_t = (self.depth_thw > 0).reshape(T, -1).any(axis=1)
        if not positive_t.all():
            raise InvalidArgumentError(
                "depth_thw",
                f"frame {int(np.argmin(positive_t))} has no positive depth; "
                "re-run the depth stage (non-positive depth marks unknown pixels)",
            )
        _check_array("K_33", self.K_33, (3, 3))
        if not (self.K_33[0, 0] > 0 and self.K_33[1, 1] > 0):
            raise InvalidArgumentError("K_33", "focal lengths must be positive")
        if self.c2w_t44 is not None:
            _check_array("c2w_t44", self.c2w_t44, (T, 4, 4))
            if not np.allclose(self.c2w_t44[:, 3], [0.0, 0.0, 0.0, 1.0]):
                raise InvalidArgumentError("c2w_t44", "last rows must be [0, 0, 0, 1]")


def _check_array(field: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray) or array.shape != shape:
        got = array.shape if isinstance(array, np.ndarray) else type(array).__name__
        raise InvalidArgumentError(field, f"expected shape {shape}, got {got}")
    if array.dtype != bool and not np.isfinite(array).all():
        raise InvalidArgumentError(field, "contains NaN or infinite values")


@dataclass
class FitResult:
    """What a fit recovers, per frame (T frames of H x W pixels)."""

    c2w_t44: np.ndarray  # float64 [T, 4, 4] camera-to-world, OpenCV axes, frame 0's world
    K_33: np.ndarray  # float64 intrinsics (as given)
    frames: list[FrameGaussians]  # the Gaussians at each frame
    psnr_t: np.ndarray  # float64 [T] reconstruction PSNR (dB) of each frame
    moving_share_t: np.ndarray  # float64 [T] share of the Gaussians in the moving set
    depth_thw: np.ndarray  # float32 [T, H, W] rendered depth (0 where nothing is rendered)
    moving_mask_thw: np.ndarray  # bool [T, H, W] pixels the moving set dominates
    seconds: float  # fitting time summed over every run that contributed (resumes included)
    resumed_from: int | None = None  # last frame of the checkpoint this run resumed from
    # the fitting time split by phase (camera_refine, optimise, densify, ...)
    phase_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def height(self) -> int:
        return self.depth_thw.shape[1]

    @property
    def width(self) -> int:
        return self.depth_thw.shape[2]


def resolve_device(name: str) -> torch.device:
    """auto = cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            "device", "cuda requested but torch sees no CUDA device; use auto or cpu"
        )
    return torch.device(name)


def fit(
    priors: FitPriors,
    cfg: FitConfig,
    progress: ProgressFn = no_progress,
    checkpoints: CheckpointSink | None = None,
) -> FitResult:
    """Fits Gaussians and a camera to every frame; resumes from the latest checkpoint if any.

    progress(done frames, T, message) is called after each frame with its PSNR.
    """
    validate(cfg)
    priors.validate()
    return _Fitter(priors, cfg, progress, checkpoints).run()


@dataclass
class _Outputs:
    """Everything recorded per finished frame (what a checkpoint holds besides the model)."""

    c2w: list[np.ndarray] = dataclasses.field(default_factory=list)
    frames: list[FrameGaussians] = dataclasses.field(default_factory=list)
    psnr: list[float] = dataclasses.field(default_factory=list)
    moving_share: list[float] = dataclasses.field(default_factory=list)
    depth_scale: list[float] = dataclasses.field(default_factory=list)
    depth: list[np.ndarray] = dataclasses.field(default_factory=list)
    moving_mask: list[np.ndarray] = dataclasses.field(default_factory=list)


class _Fitter:
    """One fit: the priors on the device, the model, and the per-frame outputs so far."""

    def __init__(
        self,
        priors: FitPriors,
        cfg: FitConfig,
        progress: ProgressFn,
        checkpoints: CheckpointSink | None,
    ):
        self.priors, self.cfg, self.progress, self.sink = priors, cfg, progress, checkpoints
        self.device = resolve_device(cfg.device)
        self.T, self.H, self.W = priors.frames_thw3.shape[:3]
        self.K_33 = np.asarray(priors.K_33, np.float64)
        self.K_t = torch.as_tensor(self.K_33, dtype=torch.float32, device=self.device)
        self.moving_thw = np.asarray(priors.moving_thw, np.float32)
        self.depth_valid_thw = priors.depth_thw > 0
        self.scene_scale = float(np.median(priors.depth_thw[0][self.depth_valid_thw[0]]))
        self.pixel_footprint = self.scene_scale / float(self.K_33[0, 0])  # world units per pixel
        self.out = _Outputs()
        self.gaussians: Gaussians | None = None
        self.next_id = 0
        self.seconds = 0.0
        self.timer = PhaseTimer(self.device)
        self.resumed_from: int | None = None

    # -- driver ---------------------------------------------------------------------------

    def run(self) -> FitResult:
        fingerprint = self._fingerprint()
        self._restore(fingerprint)
        for t in range(len(self.out.frames), self.T):
            started = time.perf_counter()
            c2w_44 = self._fit_first() if t == 0 else self._fit_next(t)
            with self.timer.phase("finish_frame"):
                self._finish_frame(t, c2w_44)
            self.seconds += time.perf_counter() - started
            if self.sink is not None and (
                (t + 1) % self.cfg.checkpoint_every == 0 or t == self.T - 1
            ):
                with self.timer.phase("checkpoint"):
                    self.sink.save(t, self._checkpoint(fingerprint))
            self.progress(
                t + 1,
                self.T,
                f"frame {t + 1}/{self.T}: PSNR {self.out.psnr[t]:.2f} dB, "
                f"{len(self.gaussians)} Gaussians ({self.out.moving_share[t]:.0%} moving)",
            )
        return FitResult(
            c2w_t44=np.stack(self.out.c2w),
            K_33=self.K_33.copy(),
            frames=self.out.frames,
            psnr_t=np.array(self.out.psnr),
            moving_share_t=np.array(self.out.moving_share),
            depth_thw=np.stack(self.out.depth),
            moving_mask_thw=np.stack(self.out.moving_mask),
            seconds=self.seconds,
            phase_seconds=dict(self.timer.seconds),
            resumed_from=self.resumed_from,
        )

    # -- frames ---------------------------------------------------------------------------

    def _fit_first(self) -> np.ndarray:
        """Prior-driven initialisation on frame 0, then optimisation on it."""
        p, cfg = self.priors, self.cfg
        c2w_44 = np.eye(4) if p.c2w_t44 is None else np.asarray(p.c2w_t44[0], np.float64)
        with self.timer.phase("initialise"):
            probability_hw = texture_probability_hw(p.frames_thw3[0], cfg.texture_share)
            probability_hw = probability_hw * self.depth_valid_thw[0]
            rows, cols = sample_pixels(probability_hw, cfg.init_points, self._rng(0))
            self.gaussians = self._new_gaussians(rows, cols, 0, c2w_44, depth_scale=1.0)
        self.out.depth_scale.append(1.0)
        self._optimise(0, c2w_44, cfg.iters_first, cfg.lr_first, densify_first=False)
        return c2w_44

    def _fit_next(self, t: int) -> np.ndarray:
        cfg = self.cfg
        c2w_prev = self.out.c2w[t - 1]
        with self.timer.phase("split_and_move"), torch.no_grad():
            out_prev = self.gaussians.render(
                self._w2c(c2w_prev), self.K_t, self.W, self.H, backend=cfg.backend
            )
            depth_prev_hw = mean_depth_hw(out_prev).cpu().numpy().astype(np.float64)
            alpha_prev_hw = out_prev.alpha_hw.cpu().numpy().astype(np.float64)
        c2w_44 = self._camera(t, c2w_prev)
        with self.timer.phase("depth_scale"):
            self.out.depth_scale.append(self._depth_scale(t, c2w_44))
        with self.timer.phase("split_and_move"):
            flow = self._split_and_move(t, c2w_prev, c2w_44, depth_prev_hw, alpha_prev_hw)
        self._optimise(
            t,
            c2w_44,
            cfg.iters,
            cfg.lr,
            densify_first=True,
            flow=flow,
            anchor_n3=self.gaussians.means_n3.clone(),
        )
        return c2w_44

    def _split_and_move(
        self,
        t: int,
        c2w_prev: np.ndarray,
        c2w_44: np.ndarray,
        depth_prev_hw: np.ndarray,
        alpha_prev_hw: np.ndarray,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Relabels the Gaussians seen at t-1 still/moving and moves the moving ones to frame t.

        Returns the flow term's inputs: indices of the seen moving Gaussians and their target
        pixels in frame t."""
        g, cfg = self.gaussians, self.cfg
        means_n3 = g.means_n3.detach().cpu().numpy().astype(np.float64)
        moving_n = g.moving_n.cpu().numpy()
        xy_prev_n2, z_prev_n = project_p2(self.K_33, c2w_prev, means_n3)
        seen_n = visible_n(xy_prev_n2, z_prev_n, depth_prev_hw, alpha_prev_hw)
        target_s2 = xy_prev_n2[seen_n] + self._flow_at(t, xy_prev_n2[seen_n], moving_n[seen_n])
        still_xy_s2, _ = project_p2(self.K_33, c2w_44, means_n3[seen_n])
        moving_n = moving_n.copy()
        moving_n[seen_n] = split_moving(
            np.linalg.norm(target_s2 - still_xy_s2, axis=1),
            self._mask_score(t, xy_prev_n2[seen_n], target_s2),
            cfg.mask_threshold,
            cfg.cluster_min_motion_px,
        )
        seen_moving_n = seen_n & moving_n
        target_m2 = target_s2[moving_n[seen_n]]
        lifted_m3 = lift_moving(
            xy_prev_n2[seen_moving_n],
            z_prev_n[seen_moving_n],
            target_m2,
            self._prior_depth(t - 1),
            self._prior_depth(t),
            self.K_33,
            c2w_44,
        )
        hidden_moving_n = moving_n & ~seen_n
        new_means_n3 = means_n3.copy()
        new_means_n3[seen_moving_n] = lifted_m3
        new_means_n3[hidden_moving_n] += spread_displacement(
            means_n3[seen_moving_n],
            lifted_m3 - means_n3[seen_moving_n],
            means_n3[hidden_moving_n],
        )
        g.means_n3 = torch.as_tensor(new_means_n3, dtype=torch.float32, device=self.device)
        g.moving_n = torch.as_tensor(moving_n, device=self.device)
        return (
            torch.as_tensor(np.flatnonzero(seen_moving_n), device=self.device),
            torch.as_tensor(target_m2, dtype=torch.float32, device=self.device),
        )

    def _camera(self, t: int, c2w_prev: np.ndarray) -> np.ndarray:
        """Pose of frame t: RANSAC PnP on still flow correspondences (from the prior pose, else the
        previous one; that guess stands when PnP fails), refined against the still part."""
        p, cfg, g = self.priors, self.cfg, self.gaussians
        c2w_guess = c2w_prev if p.c2w_t44 is None else np.asarray(p.c2w_t44[t], np.float64)
        with self.timer.phase("camera_pnp"):
            reliable_hw = self._reliable_still_hw(t)
            points_p3, pixels_p2 = flow_correspondences(
                self._prior_depth(t - 1), reliable_hw, p.flow_fwd_t1hw2[t - 1], self.K_33, c2w_prev
            )
            found = pnp_c2w(points_p3, pixels_p2, self.K_33, c2w_guess, self._rng(t, 1))
        if found is None:
            c2w_init, points_p3, pixels_p2 = c2w_guess, points_p3[:0], pixels_p2[:0]
        else:
            c2w_init, points_p3, pixels_p2 = found
        with self.timer.phase("camera_refine"):
            still = g.subset(~g.moving_n)
            w2c_init = self._w2c(c2w_init)
            with torch.no_grad():
                out = still.render(w2c_init, self.K_t, self.W, self.H, backend=cfg.backend)
            weight_hw = (out.alpha_hw >= COVERED_ALPHA) & self._tensor(
                self.moving_thw[t] < cfg.mask_threshold
            )
            w2c_44 = optimise_pose(
                still,
                self._frame(t),
                weight_hw.float(),
                w2c_init,
                self.K_t,
                self._tensor(points_p3.astype(np.float32)),
                self._tensor(pixels_p2.astype(np.float32)),
                lambda_flow=cfg.lambda_flow,
                iters=cfg.camera_iters,
                lr=cfg.camera_lr,
                scene_scale=self.scene_scale,
                ssim_share=cfg.ssim_share,
                backend=cfg.backend,
            )
            return np.linalg.inv(w2c_44.detach().cpu().numpy().astype(np.float64))

    def _reliable_still_hw(self, t: int) -> np.ndarray:
        """Pixels of frame t-1 whose flow to t is trustworthy for the camera: known depth, still
        at both ends, inside frame t, forward-backward consistent when backward flow is given."""
        p, thr = self.priors, self.cfg.mask_threshold
        flow_hw2 = p.flow_fwd_t1hw2[t - 1].astype(np.float64)
        ys, xs = np.mgrid[0 : self.H, 0 : self.W]
        target_p2 = np.stack([xs, ys], axis=-1).reshape(-1, 2) + flow_hw2.reshape(-1, 2)
        rows, cols = nearest_pixel(target_p2, self.H, self.W)
        reliable_p = (
            self.depth_valid_thw[t - 1].reshape(-1)
            & (self.moving_thw[t - 1].reshape(-1) < thr)
            & inside_image(target_p2, self.H, self.W)
            & (self.moving_thw[t][rows, cols] < thr)
        )
        if p.flow_bwd_t1hw2 is not None:
            back_p2 = sample_bilinear(p.flow_bwd_t1hw2[t - 1], target_p2)
            reliable_p &= np.linalg.norm(flow_hw2.reshape(-1, 2) + back_p2, axis=1) < (
                FB_TOLERANCE_PX
            )
        return reliable_p.reshape(self.H, self.W)

    def _depth_scale(self, t: int, c2w_44: np.ndarray) -> float:
        """Scale that maps frame t's depth prior onto the model (median ratio on still pixels);
        1 for metric-consistent priors, and it absorbs per-frame scale drift otherwise."""
        g = self.gaussians
        with torch.no_grad():
            out = g.render(
                self._w2c(c2w_44),
                self.K_t,
                self.W,
                self.H,
                select_n=~g.moving_n,
                backend=self.cfg.backend,
            )
        model_hw = mean_depth_hw(out).cpu().numpy()
        usable_hw = (
            (out.alpha_hw.cpu().numpy() >= COVERED_ALPHA)
            & self.depth_valid_thw[t]
            & (self.moving_thw[t] < self.cfg.mask_threshold)
        )
        if usable_hw.sum() < _MIN_SCALE_PIXELS:
            return self.out.depth_scale[t - 1]
        ratio = float(np.median(model_hw[usable_hw] / self.priors.depth_thw[t][usable_hw]))
        return float(np.clip(ratio, *_SCALE_RANGE))

    def _flow_at(self, t: int, xy_n2: np.ndarray, moving_n: np.ndarray) -> np.ndarray:
        """Forward flow t-1 -> t at sub-pixel points, each read from its own side of the moving
        mask (its current label), so Gaussians at a motion boundary take their own motion."""
        flow_hw2 = self.priors.flow_fwd_t1hw2[t - 1]
        moving_hw = self.moving_thw[t - 1] >= self.cfg.mask_threshold
        return np.where(
            moving_n[:, None],
            sample_bilinear(flow_hw2, xy_n2, moving_hw),
            sample_bilinear(flow_hw2, xy_n2, ~moving_hw),
        )

    def _mask_score(self, t: int, xy_prev_n2: np.ndarray, target_n2: np.ndarray) -> np.ndarray:
        """Mask prior of each Gaussian: mean of its score at t-1 and where the flow puts it at t
        (the t-1 score alone when that is outside the image)."""
        rows0, cols0 = nearest_pixel(xy_prev_n2, self.H, self.W)
        rows1, cols1 = nearest_pixel(target_n2, self.H, self.W)
        before = self.moving_thw[t - 1][rows0, cols0]
        after = np.where(
            inside_image(target_n2, self.H, self.W), self.moving_thw[t][rows1, cols1], before
        )
        return 0.5 * (before + after)

    # -- optimisation ---------------------------------------------------------------------

    def _optimise(
        self,
        t: int,
        c2w_44: np.ndarray,
        iters: int,
        lr: float,
        *,
        densify_first: bool,
        flow: tuple[torch.Tensor, torch.Tensor] | None = None,
        anchor_n3: torch.Tensor | None = None,
    ) -> None:
        """Optimises all Gaussians on frame t with the camera fixed; densifies on schedule."""
        cfg = self.cfg
        w2c_44 = self._w2c(c2w_44)
        target_hw3 = self._frame(t)
        prior_hw = self._tensor(self._prior_depth(t))
        prior_valid_hw = self._tensor(self.depth_valid_thw[t])
        optimiser = None
        with self.timer.phase("optimise"):
            for it in range(iters):
                due = (it == 0 and densify_first) or (
                    cfg.densify_every > 0 and it > 0 and it % cfg.densify_every == 0
                )
                if due:
                    with self.timer.phase("densify"):
                        added = self._densify(t, c2w_44, it)
                    if anchor_n3 is not None:
                        anchor_n3 = torch.cat([anchor_n3, added.means_n3])
                    optimiser = None
                g = self.gaussians
                if optimiser is None:
                    optimiser = self._optimiser(g, lr)
                out = g.render(w2c_44, self.K_t, self.W, self.H, backend=cfg.backend)
                depth_weight_hw = (
                    (out.alpha_hw.detach() >= COVERED_ALPHA) & prior_valid_hw
                ).float()
                loss = cfg.lambda_rgb * photometric_loss(out.rgb_hw3, target_hw3, cfg.ssim_share)
                loss = loss + cfg.lambda_depth * depth_loss(
                    mean_depth_hw(out), prior_hw, depth_weight_hw
                )
                loss = loss + cfg.lambda_isotropic * isotropic_loss(g.log_scales_n3)
                if anchor_n3 is not None:
                    loss = loss + cfg.lambda_still * still_loss(
                        g.means_n3, anchor_n3, ~g.moving_n, self.pixel_footprint
                    )
                if flow is not None:
                    index, target_n2 = flow
                    projected_n2, _ = project_n2(g.means_n3[index], w2c_44, self.K_t)
                    loss = loss + cfg.lambda_flow * flow_loss(projected_n2, target_n2)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        self.gaussians.requires_grad_(False)

    def _optimiser(self, g: Gaussians, lr: float) -> torch.optim.Adam:
        g.requires_grad_(True)
        groups = []
        for name, tensor in g.parameters().items():
            scale = _LR_SCALE[name] * (self.scene_scale if name == "means" else 1.0)
            groups.append({"params": [tensor], "lr": lr * scale, "name": name})
        return torch.optim.Adam(groups, eps=1e-15, fused=True)  # one kernel per group

    def _densify(self, t: int, c2w_44: np.ndarray, iteration: int) -> Gaussians:
        """Adds Gaussians at uncovered or badly rendered pixels of frame t; returns the new ones."""
        g = self.gaussians.requires_grad_(False)
        with torch.no_grad():
            out = g.render(self._w2c(c2w_44), self.K_t, self.W, self.H, backend=self.cfg.backend)
            error_hw = (out.rgb_hw3 - self._frame(t)).abs().mean(dim=-1).cpu().numpy()
        probability_hw = densify_probability_hw(
            error_hw, out.alpha_hw.cpu().numpy(), self.depth_valid_thw[t], self.cfg
        )
        rows, cols = sample_pixels(
            probability_hw, densify_budget(len(g), self.cfg), self._rng(t, 2, iteration)
        )
        drawn_n = out.radii_n > 0
        others_xy_m2 = out.means2d_n2[drawn_n].cpu().numpy().astype(np.float64)
        added = self._new_gaussians(rows, cols, t, c2w_44, self.out.depth_scale[t], others_xy_m2)
        self.gaussians = g.concat(added)
        logger.debug("frame %d iteration %d: added %d Gaussians", t, iteration, len(added))
        return added

    def _new_gaussians(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        t: int,
        c2w_44: np.ndarray,
        depth_scale: float,
        others_xy_m2: np.ndarray | None = None,
    ) -> Gaussians:
        added = gaussians_at_pixels(
            rows,
            cols,
            self.priors.frames_thw3[t],
            self.priors.depth_thw[t] * depth_scale,
            self.moving_thw[t] >= self.cfg.mask_threshold,
            self.K_33,
            c2w_44,
            self.next_id,
            self.cfg.init_opacity,
            self.device,
            others_xy_m2,
        )
        self.next_id += len(added)
        return added

    def _finish_frame(self, t: int, c2w_44: np.ndarray) -> None:
        """Prunes, renders the frame's outputs and records them."""
        g = self.gaussians.subset(prune_keep_n(self.gaussians, self.cfg))
        self.gaussians = g
        w2c_44 = self._w2c(c2w_44)
        with torch.no_grad():
            out = g.render(w2c_44, self.K_t, self.W, self.H, backend=self.cfg.backend)
            flags_n3 = g.moving_n.float()[:, None].expand(-1, 3).contiguous()
            moving_out = g.render(
                w2c_44, self.K_t, self.W, self.H, colors_n3=flags_n3, backend=self.cfg.backend
            )
        rgb_hw3 = out.rgb_hw3.clamp(0, 1).cpu().numpy().astype(np.float64)
        self.out.c2w.append(c2w_44)
        self.out.frames.append(g.to_frame())
        self.out.psnr.append(psnr(rgb_hw3, self.priors.frames_thw3[t] / 255.0, max_value=1.0))
        self.out.moving_share.append(float(g.moving_n.float().mean()) if len(g) else 0.0)
        depth_hw = torch.where(out.alpha_hw > 1e-3, mean_depth_hw(out), 0.0)
        self.out.depth.append(depth_hw.cpu().numpy().astype(np.float32))
        self.out.moving_mask.append(moving_out.rgb_hw3[..., 0].cpu().numpy() > 0.5)

    # -- small helpers --------------------------------------------------------------------

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, *keys])

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        dtype = torch.bool if array.dtype == bool else torch.float32
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

    def _w2c(self, c2w_44: np.ndarray) -> torch.Tensor:
        return self._tensor(np.linalg.inv(c2w_44))

    def _frame(self, t: int) -> torch.Tensor:
        return self._tensor(self.priors.frames_thw3[t] / np.float32(255.0))

    def _prior_depth(self, t: int) -> np.ndarray:
        return self.priors.depth_thw[t] * np.float32(self.out.depth_scale[t])

    # -- checkpoints ----------------------------------------------------------------------

    def _fingerprint(self) -> str:
        """Hash of the inputs and of every setting that changes the result."""
        p = self.priors
        digest = hashlib.sha256()
        settings = dataclasses.replace(self.cfg, checkpoint_every=1)
        digest.update(to_json(settings).encode())
        digest.update(str(self.device.type).encode())
        for array in (
            p.frames_thw3,
            p.depth_thw,
            p.K_33,
            p.flow_fwd_t1hw2,
            p.flow_bwd_t1hw2,
            p.moving_thw,
            p.c2w_t44,
        ):
            if array is None:
                digest.update(b"none")
            else:
                digest.update(f"{array.dtype}{array.shape}".encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def _checkpoint(self, fingerprint: str) -> bytes:
        g, out = self.gaussians, self.out
        arrays = {
            f"model_{f.name}": getattr(g, f.name).detach().cpu().numpy()
            for f in dataclasses.fields(g)
        }
        for t, frame in enumerate(out.frames):
            arrays.update(
                {f"frame{t}_{f.name}": getattr(frame, f.name) for f in dataclasses.fields(frame)}
            )
        arrays["c2w_t44"] = np.stack(out.c2w)
        arrays["psnr_t"] = np.array(out.psnr)
        arrays["moving_share_t"] = np.array(out.moving_share)
        arrays["depth_scale_t"] = np.array(out.depth_scale)
        arrays["depth_thw"] = np.stack(out.depth)
        arrays["moving_mask_thw"] = np.stack(out.moving_mask)
        meta = {
            "fingerprint": fingerprint,
            "frames_done": len(out.frames),
            "next_id": self.next_id,
            "seconds": self.seconds,
            "phase_seconds": self.timer.seconds,
        }
        return ckpt.pack(arrays, meta)

    def _restore(self, fingerprint: str) -> None:
        if self.sink is None:
            return
        latest = self.sink.load_latest()
        if latest is None:
            return
        frame, data = latest
        arrays, meta = ckpt.unpack(data)
        if meta.get("fingerprint") != fingerprint:
            logger.warning(
                "checkpoint of frame %d is for other inputs or settings; starting over", frame
            )
            return
        done = int(meta["frames_done"])
        self.gaussians = Gaussians(
            **{
                f.name: torch.as_tensor(arrays[f"model_{f.name}"], device=self.device)
                for f in dataclasses.fields(Gaussians)
            }
        )
        names = [f.name for f in dataclasses.fields(FrameGaussians)]
        self.out = _Outputs(
            c2w=list(arrays["c2w_t44"]),
            frames=[
                FrameGaussians(**{k: arrays[f"frame{t}_{k}"] for k in names}) for t in range(done)
            ],
            psnr=[float(v) for v in arrays["psnr_t"]],
            moving_share=[float(v) for v in arrays["moving_share_t"]],
            depth_scale=[float(v) for v in arrays["depth_scale_t"]],
            depth=list(arrays["depth_thw"]),
            moving_mask=list(arrays["moving_mask_thw"]),
        )
        self.next_id = int(meta["next_id"])
        self.seconds = float(meta["seconds"])
        self.timer.seconds = {k: float(v) for k, v in meta.get("phase_seconds", {}).items()}
        self.resumed_from = done - 1
        logger.info("resuming the fit after frame %d of %d", done - 1, self.T)
