"""The GFlow fitting engine: a clip and its priors in, per-frame Gaussians and cameras out.

Frame 0: Gaussians are placed by lifting texture-weighted pixel samples with the depth prior,
then optimised on the frame. Each later frame t:
1. camera: a RANSAC PnP start from flow correspondences on the still part of frame t-1 (or the
   prior pose when the depth stage gave one), refined photometrically against the still pixels
   (`camera.py`); the PnP runs on a worker thread while frame t-1's Gaussians are optimised;
   with `camera_from_prior_poses` the depth stage's pose is taken as it is;
2. still/moving split of the Gaussians visible at t-1 (2-means on residual motion, mask prior),
   and the moving ones follow the flow, lifted by the depth prior (`motion.py`);
3. pixel-wise densification where frame t is uncovered or badly rendered (`densify.py`);
4. optimisation of all Gaussians on the named loss terms of `losses.py` (RGB, depth, flow on the
   moving ones, still and isotropic regularisers); then faint Gaussians are pruned.
Every random choice comes from generators seeded by (seed, frame, ...), and each densification
pass and frame starts a fresh optimiser (with `keep_adam_state`, given the kept moments of
`moments.AdamMoments`), so a checkpoint (`checkpoint.FitCheckpoint`) needs only the model, those
moments and the outputs of the frames since the previous one: a resumed run repeats an
uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from services.common.errors import InvalidArgumentError, ProgressFn, no_progress
from services.fit import checkpoint as ckpt
from services.fit import losses
from services.fit.adam import fused_adam_step
from services.fit.camera import (
    DEPTH_SCALE_RANGE,
    depth_prior_scale,
    lifting_depth_hw,
    pnp_start,
    refine_still_pose,
    scale_clipped_t,
)
from services.fit.compiled import fuse
from services.fit.config import FitConfig, FitRuntime
from services.fit.densify import DensifyStrategy
from services.fit.gaussians import Gaussians, mean_depth_hw
from services.fit.initialise import PixelSeeder
from services.fit.moments import AdamMoments
from services.fit.motion import split_and_move
from services.fit.priors import FitPriors
from services.fit.render import RenderOutput
from services.fit.result import FitOutputs, FitResult
from services.fit.timing import PhaseTimer

logger = logging.getLogger(__name__)


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
    runtime: FitRuntime = FitRuntime(),
    progress: ProgressFn = no_progress,
    checkpoints: ckpt.CheckpointSink | None = None,
) -> FitResult:
    """Fits Gaussians and a camera to every frame; resumes from the latest checkpoint if any.

    `runtime` picks the device and the renderer. progress(done frames, T, message) is called
    after each frame with its PSNR.
    """
    priors.validate()
    priors = priors.with_moving_widened(cfg.moving_mask_margin_px)
    return _Fitter(priors, cfg, runtime, progress, checkpoints).run()


class _Fitter:
    """One fit: the priors on the device, the model, and the per-frame outputs so far."""

    def __init__(
        self,
        priors: FitPriors,
        cfg: FitConfig,
        runtime: FitRuntime,
        progress: ProgressFn,
        checkpoints: ckpt.CheckpointSink | None,
    ):
        self.priors, self.cfg, self.progress, self.sink = priors, cfg, progress, checkpoints
        self.device = resolve_device(runtime.device)
        self.renderer = runtime.backend
        self.fused = runtime.compiles_on(self.device.type)
        self.T, self.H, self.W = priors.frames_thw3.shape[:3]
        self.K_33 = np.asarray(priors.K_33, np.float64)
        self.K_t = torch.as_tensor(self.K_33, dtype=torch.float32, device=self.device)
        self.moving_thw = np.asarray(priors.moving_thw, np.float32)
        # Where the moving objects surely are (hard masks), for the fit's moving masks.
        self.hard_moving_thw = priors.hard_moving_masks()
        self.depth_valid_thw = priors.depth_thw > 0
        self.scene_scale = float(np.median(priors.depth_thw[0][self.depth_valid_thw[0]]))
        self.pixel_footprint = self.scene_scale / float(self.K_33[0, 0])  # world units per pixel
        self.densify = DensifyStrategy(cfg)
        self.weights = losses.term_weights(cfg)
        self.seeder = PixelSeeder(priors, cfg, self.device)
        self.out = FitOutputs()
        self.held_back = 0  # pixels `max_points` kept from densification on the current frame
        self.gaussians: Gaussians | None = None
        self.moments: AdamMoments | None = None  # with cfg.keep_adam_state
        self.seconds = 0.0
        self.timer = PhaseTimer(self.device)
        self.resumed_from: int | None = None
        self.checkpointed = 0  # frames the sink's checkpoints hold
        self.pnp_worker: ThreadPoolExecutor | None = None
        self.pnp_ahead: tuple[int, Future] | None = None

    # -- driver ---------------------------------------------------------------------------

    def run(self) -> FitResult:
        fingerprint = ckpt.inputs_fingerprint(self.priors, self.cfg, self.device, self.renderer)
        self._restore(fingerprint)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gflow-pnp") as worker:
            self.pnp_worker = worker
            self._fit_frames(fingerprint)
        return self.out.to_result(self.K_33, self.seconds, self.timer.seconds, self.resumed_from)

    def _fit_frames(self, fingerprint: str) -> None:
        for t in range(len(self.out.frames), self.T):
            started = time.perf_counter()
            c2w_44 = self._fit_first() if t == 0 else self._fit_next(t)
            with self.timer.phase("finish_frame"):
                self._finish_frame(t, c2w_44)
            self._start_next_pnp(t + 1, c2w_44, finished=True)
            self.seconds += time.perf_counter() - started
            if self.sink is not None and (
                (t + 1) % self.cfg.checkpoint_every == 0 or t == self.T - 1
            ):
                with self.timer.phase("checkpoint"):
                    state = ckpt.FitCheckpoint(
                        fingerprint,
                        self.gaussians,
                        self.moments,
                        self.out.since(self.checkpointed),
                        self.seeder.next_id,
                        self.seconds,
                        self.timer.seconds,
                        first_frame=self.checkpointed,
                    )
                    self.sink.save(t, state.to_bytes())
                    self.checkpointed = t + 1
            self.progress(
                t + 1,
                self.T,
                f"frame {t + 1}/{self.T}: PSNR {self.out.psnr[t]:.2f} dB, "
                f"{len(self.gaussians)} Gaussians ({self.out.moving_share[t]:.0%} moving)",
            )

    def _restore(self, fingerprint: str) -> None:
        state = (
            None if self.sink is None else ckpt.resumable_state(self.sink, fingerprint, self.device)
        )
        if state is None:
            if self.sink is not None:
                self.sink.clear()  # a checkpoint of other inputs (or a broken chain) is no use
            return
        self.gaussians, self.moments, self.out = state.gaussians, state.moments, state.outputs
        self.checkpointed = len(self.out.frames)
        self.seeder.next_id = state.next_id
        self.seconds, self.timer.seconds = state.seconds, state.phase_seconds
        self.resumed_from = len(self.out.frames) - 1
        logger.info("resuming the fit after frame %d of %d", self.resumed_from, self.T)

    # -- frames ---------------------------------------------------------------------------

    def _fit_first(self) -> np.ndarray:
        """Prior-driven initialisation on frame 0, then optimisation on it."""
        p, cfg = self.priors, self.cfg
        c2w_44 = np.eye(4) if p.c2w_t44 is None else np.asarray(p.c2w_t44[0], np.float64)
        with self.timer.phase("initialise"):
            self.gaussians = self.seeder.first_frame(c2w_44, self._rng(0))
        self.out.depth_scale.append(1.0)
        self._start_next_pnp(1, c2w_44, finished=False)
        self._optimise(0, c2w_44, cfg.iters_first, cfg.lr_first, densify_first=False)
        return c2w_44

    def _fit_next(self, t: int) -> np.ndarray:
        cfg = self.cfg
        c2w_prev = self.out.c2w[t - 1]
        with self.timer.phase("split_and_move"), torch.no_grad():
            out_prev = self._render(self.gaussians, self._w2c(c2w_prev))
            depth_prev_hw = mean_depth_hw(out_prev).cpu().numpy().astype(np.float64)
            alpha_prev_hw = out_prev.alpha_hw.cpu().numpy().astype(np.float64)
        c2w_44 = self._camera(t, c2w_prev)
        with self.timer.phase("depth_scale"):
            scale = self._depth_scale(t, c2w_44) if cfg.rescale_depth_prior else 1.0
            if scale_clipped_t([scale])[0] and not scale_clipped_t(self.out.depth_scale).any():
                logger.warning(
                    "frame %d: the depth prior's scale against the model left %s and was "
                    "clipped at %g; from here its depth is off by the rest (the depth stage's "
                    "scale drifts: see its scale_drift figure)",
                    t,
                    DEPTH_SCALE_RANGE,
                    scale,
                )
            self.out.depth_scale.append(scale)
        self._start_next_pnp(t + 1, c2w_44, finished=False)
        with self.timer.phase("split_and_move"):
            flow = self._split_and_move(t, c2w_prev, c2w_44, depth_prev_hw, alpha_prev_hw)
        anchor_n3 = self.gaussians.means_n3.clone()
        self._optimise(
            t, c2w_44, cfg.iters, cfg.lr, densify_first=True, flow=flow, anchor_n3=anchor_n3
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
        """`motion.split_and_move` on the model; returns the flow term's inputs: indices of the
        seen moving Gaussians [M] and their target pixels [M, 2] in frame t."""
        g = self.gaussians
        update = split_and_move(
            g.means_n3.detach().cpu().numpy().astype(np.float64),
            g.moving_n.cpu().numpy(),
            self.priors,
            t,
            c2w_prev_44=c2w_prev,
            c2w_next_44=c2w_44,
            depth_prev_hw=depth_prev_hw,
            alpha_prev_hw=alpha_prev_hw,
            prior_depth_prev_hw=self._prior_depth(t - 1),
            prior_depth_next_hw=self._prior_depth(t),
            trusted_prev_hw=self._depth_trusted_hw(t - 1),
            trusted_next_hw=self._depth_trusted_hw(t),
            cfg=self.cfg,
            mask_keeps=self.cfg.cluster_mask_keeps if self._keeps_prior_poses() else math.inf,
        )
        g.means_n3 = torch.as_tensor(update.means_n3, dtype=torch.float32, device=self.device)
        g.moving_n = torch.as_tensor(update.moving_n, device=self.device)
        return (
            torch.as_tensor(np.flatnonzero(update.seen_moving_n), device=self.device),
            torch.as_tensor(update.target_m2, dtype=torch.float32, device=self.device),
        )

    def _camera(self, t: int, c2w_prev: np.ndarray) -> np.ndarray:
        """Pose of frame t: RANSAC PnP on still flow correspondences (from the prior pose, else the
        previous one; that guess stands when PnP fails), refined against the still part; the
        prior pose itself with `camera_from_prior_poses`."""
        if self._keeps_prior_poses():
            return np.asarray(self.priors.c2w_t44[t], np.float64)
        with self.timer.phase("camera_pnp"):
            if self.pnp_ahead is None or self.pnp_ahead[0] != t:  # the first frame after a resume
                self._start_pnp(t, c2w_prev)
            c2w_init, points_p3, pixels_p2 = self.pnp_ahead[1].result()
            self.pnp_ahead = None
        with self.timer.phase("camera_refine"):
            w2c_44 = refine_still_pose(
                self.gaussians,
                losses.photometric_target(self._frame(t)),
                self._tensor(self.moving_thw[t] < self.cfg.mask_threshold),
                self._w2c(c2w_init),
                self.K_t,
                self._tensor(points_p3.astype(np.float32)),
                self._tensor(pixels_p2.astype(np.float32)),
                self.cfg,
                self.scene_scale,
                self.renderer,
                self.fused,
            )
            return np.linalg.inv(w2c_44.detach().cpu().numpy().astype(np.float64))

    def _start_next_pnp(self, t: int, c2w_prev: np.ndarray, *, finished: bool) -> None:
        """`_start_pnp` of frame t at its moment in frame t-1's work: before frame t-1's
        optimisation (`finished` False) lifting at the prior, once frame t-1 is finished
        (optimised and pruned) with `camera_depth="model"`."""
        if finished == (self.cfg.camera_depth == "model"):
            self._start_pnp(t, c2w_prev)

    def _start_pnp(self, t: int, c2w_prev: np.ndarray) -> None:
        """Starts `camera.pnp_start` of frame t on the worker thread. Lifting at the depth prior,
        it starts as soon as frame t-1's pose and depth scale are final: it needs nothing else of
        frame t-1, so it runs on the CPU while frame t-1's Gaussians are optimised (on CUDA that
        hides it; the result is the same). With `camera_depth="model"` it starts once frame t-1 is
        finished and lifts at the model as it then stands, pruned: what a checkpoint holds, so a
        resumed fit repeats it."""
        if t < self.T and not self._keeps_prior_poses():
            depth_prev_hw = self._prior_depth(t - 1)
            if self.cfg.camera_depth == "model":
                still_out = self._render_still(c2w_prev)
                depth_prev_hw = lifting_depth_hw(
                    depth_prev_hw,
                    mean_depth_hw(still_out).cpu().numpy(),
                    still_out.alpha_hw.cpu().numpy(),
                )
            task = self.pnp_worker.submit(
                pnp_start,
                self.priors,
                t,
                depth_prev_hw,
                c2w_prev,
                self.cfg.mask_threshold,
                self._rng(t, 1),
            )
            self.pnp_ahead = (t, task)

    def _keeps_prior_poses(self) -> bool:
        """Whether the cameras are the priors' poses (`camera_from_prior_poses`, poses given)."""
        return self.cfg.camera_from_prior_poses and self.priors.c2w_t44 is not None

    def _depth_scale(self, t: int, c2w_44: np.ndarray) -> float:
        """`camera.depth_prior_scale` of frame t at its new pose."""
        usable_hw = self.depth_valid_thw[t] & (self.moving_thw[t] < self.cfg.mask_threshold)
        return depth_prior_scale(
            self._render_still(c2w_44),
            self.priors.depth_thw[t],
            usable_hw,
            self.out.depth_scale[t - 1],
        )

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
        w2c_44 = self._w2c(c2w_44)
        target = losses.photometric_target(self._frame(t))
        prior_hw = self._tensor(self._prior_depth(t))
        prior_valid_hw = self._tensor(self.depth_valid_thw[t])
        flow_targets = None if flow is None else losses.FlowTargets(*flow, w2c_44, self.K_t)
        step_loss = fuse(losses.gaussians_loss, self.fused)
        optimiser, terms = None, {}
        with self.timer.phase("optimise"):
            for it in range(iters):
                if self.densify.is_due(it, first_pass=densify_first):
                    self._keep_moments(optimiser)
                    with self.timer.phase("densify"):
                        added = self._densify(t, c2w_44, it)
                    if anchor_n3 is not None:
                        anchor_n3 = torch.cat([anchor_n3, added.means_n3])
                    optimiser = None
                g = self.gaussians
                if optimiser is None:
                    optimiser = g.optimiser(lr, self.scene_scale)
                    if self.moments is not None:
                        self.moments.load_into(optimiser, g)
                out = self._render(g, w2c_44)
                loss, terms = step_loss(
                    out,
                    target,
                    prior_hw,
                    prior_valid_hw,
                    g,
                    self.weights,
                    ssim_share=self.cfg.ssim_share,
                    anchor_n3=anchor_n3,
                    footprint=self.pixel_footprint,
                    flow=flow_targets,
                )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                fused_adam_step(optimiser)
                if logger.isEnabledFor(logging.DEBUG):  # reading the terms waits for the GPU
                    values = losses.term_values(terms)
                    logger.debug("frame %d step %d: %s", t, it, losses.describe_terms(values))
        self._keep_moments(optimiser)
        self.gaussians.requires_grad_(False)
        values = losses.term_values(terms)  # the last step's
        self.out.add_loss_terms(values)
        logger.info("frame %d loss terms at the last step: %s", t, losses.describe_terms(values))

    def _keep_moments(self, optimiser: torch.optim.Adam | None) -> None:
        """With `keep_adam_state`, keeps the optimiser's moments for the next one."""
        if self.cfg.keep_adam_state and optimiser is not None:
            self.moments = AdamMoments.of(optimiser, self.gaussians) or self.moments

    def _densify(self, t: int, c2w_44: np.ndarray, iteration: int) -> Gaussians:
        """Adds Gaussians at the pixels of frame t the strategy picks; returns the new ones."""
        g = self.gaussians.requires_grad_(False)
        with torch.no_grad():
            out = self._render(g, self._w2c(c2w_44))
            rows, cols, others_xy_m2, held_back = self.densify.pick_pixels(
                out, self._frame(t), self.depth_valid_thw[t], len(g), self._rng(t, 2, iteration)
            )
        if held_back and not self.held_back and not any(self.out.held_back):
            logger.warning(
                "frame %d: max_points = %d Gaussians reached; from here on uncovered and badly "
                "fitted pixels get no new Gaussians and the renders degrade (raise max_points: "
                "--pipeline.fit.max-points for gflow run)",
                t,
                self.cfg.max_points,
            )
        self.held_back += held_back
        added = self.seeder.at_pixels(rows, cols, t, c2w_44, self.out.depth_scale[t], others_xy_m2)
        self.gaussians = g.concat(added)
        logger.debug("frame %d iteration %d: added %d Gaussians", t, iteration, len(added))
        return added

    def _finish_frame(self, t: int, c2w_44: np.ndarray) -> None:
        """Prunes, renders the frame's outputs and records them."""
        g = self.gaussians = self.densify.prune(self.gaussians)
        w2c_44 = self._w2c(c2w_44)
        with torch.no_grad():
            out = self._render(g, w2c_44)
            flags_n3 = g.moving_n.float()[:, None].expand(-1, 3).contiguous()
            moving_out = self._render(g, w2c_44, colors_n3=flags_n3)
        depth_hw = torch.where(out.alpha_hw > 1e-3, mean_depth_hw(out), 0.0)
        # The moving mask: where moving Gaussians dominate, kept to the priors' masks where those
        # are hard: the moving Gaussians' footprint spills past the object over thin still
        # Gaussians behind it. Soft scores, the segment stage's estimate, do not cut it.
        moving_hw = moving_out.rgb_hw3[..., 0].cpu().numpy() > 0.5
        if self.hard_moving_thw is not None:
            moving_hw &= self.hard_moving_thw[t]
        self.out.add_frame(
            c2w_44,
            g.to_frame(),
            float(g.moving_n.float().mean()) if len(g) else 0.0,
            out.rgb_hw3.clamp(0, 1).cpu().numpy().astype(np.float64),
            self.priors.frames_thw3[t],
            depth_hw.cpu().numpy().astype(np.float32),
            moving_hw,
            self.held_back,
        )
        self.held_back = 0

    # -- small helpers --------------------------------------------------------------------

    def _render(self, g: Gaussians, w2c_44: torch.Tensor, **options) -> RenderOutput:
        return g.render(w2c_44, self.K_t, self.W, self.H, backend=self.renderer, **options)

    def _render_still(self, c2w_44: np.ndarray) -> RenderOutput:
        """The still Gaussians alone at a camera pose, without gradients."""
        g = self.gaussians
        with torch.no_grad():
            return self._render(g, self._w2c(c2w_44), select_n=~g.moving_n)

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, *keys])

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        dtype = torch.bool if array.dtype == bool else torch.float32
        return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

    def _w2c(self, c2w_44: np.ndarray) -> torch.Tensor:
        return self._tensor(np.linalg.inv(c2w_44))

    def _frame(self, t: int) -> torch.Tensor:
        return self._tensor(self.priors.frames_thw3[t] / np.float32(255.0))

    def _depth_trusted_hw(self, t: int) -> np.ndarray:
        """Pixels of frame t whose prior depth change a moving Gaussian may follow (FitConfig's
        `moving_depth_from_filled_prior`)."""
        if self.cfg.moving_depth_from_filled_prior:
            return np.ones((self.H, self.W), bool)
        return self.priors.depth_measured_hw(t)

    def _prior_depth(self, t: int) -> np.ndarray:
        return self.priors.depth_thw[t] * np.float32(self.out.depth_scale[t])
