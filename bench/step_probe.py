"""Host time of one Gaussian optimisation step on CUDA, by part: what a cheaper step could save.

Run on the GPU machine from the project root (PYTHONPATH=.):
    python3 bench/step_probe.py --width 854 --height 480

Times `steps` fast-preset steps (after `warmup_steps`) of Gaussians placed on frame 0 of a
synthetic clip, rendered at frame 1, in four forms: `none` (render, a trivial loss, backward and
Adam: the floor any loss sits on), `full` (the engine's compiled `losses.gaussians_loss`),
`graph+compiled` and `graph+eager` (the image terms replayed from a CUDA graph made by
`torch.cuda.make_graphed_callables`, the per-Gaussian terms compiled or eager), in the order of
`ORDER`: `none` and `full` again at the end, so a drift of the host shows. docs/fit.md, "Host
time per step, cut further".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import tyro

from services.evaluation.fit_suite import exact_priors
from services.fit import losses
from services.fit.adam import fused_adam_step
from services.fit.compiled import fuse
from services.fit.config import preset
from services.fit.gaussians import Gaussians
from services.fit.initialise import PixelSeeder
from services.fit.render import RenderOutput
from services.synthetic.scene import SceneConfig, make_scene

logger = logging.getLogger("step_probe")

ORDER = ("none", "full", "graph+compiled", "graph+eager", "full", "none")


@dataclass
class ProbeConfig:
    """What to time."""

    width: int = 854
    """Frame width in pixels."""
    height: int = 480
    """Frame height in pixels."""
    steps: int = 200
    """Timed steps per form."""
    warmup_steps: int = 15
    """Untimed steps before each form's timing (compiling and graph capture happen here)."""


class StepForms:
    """One fast-preset step of the Gaussians in each form of `ORDER`, on fixed targets."""

    def __init__(self, cfg: ProbeConfig):
        device = torch.device("cuda")
        scene = make_scene(SceneConfig(height=cfg.height, width=cfg.width, n_frames=2))
        priors = exact_priors(scene)
        self.fit_cfg = preset("fast")
        self.size = (cfg.width, cfg.height)
        rng = np.random.default_rng(0)
        seeder = PixelSeeder(priors, self.fit_cfg, device)
        self.gaussians: Gaussians = seeder.first_frame(np.asarray(scene.c2w_t44[0]), rng)
        self.K_33 = torch.as_tensor(np.asarray(priors.K_33), dtype=torch.float32, device=device)
        c2w_44 = torch.as_tensor(np.asarray(scene.c2w_t44[1]), dtype=torch.float32, device=device)
        self.w2c_44 = torch.linalg.inv(c2w_44)
        frame_hw3 = priors.frames_thw3[1] / np.float32(255.0)
        self.target = losses.photometric_target(
            torch.as_tensor(frame_hw3, dtype=torch.float32, device=device)
        )
        self.prior_hw = torch.as_tensor(priors.depth_thw[1], dtype=torch.float32, device=device)
        self.prior_valid_hw = self.prior_hw > 0
        n = len(self.gaussians)
        self.anchor_n3 = self.gaussians.means_n3.detach().clone()
        index_m = torch.arange(0, n, 3, device=device)
        target_m2 = torch.rand(len(index_m), 2, device=device) * min(self.size)
        self.flow = losses.FlowTargets(index_m, target_m2, self.w2c_44, self.K_33)
        self.weights = losses.term_weights(self.fit_cfg)
        self.footprint = 0.003
        self.full_loss = fuse(losses.gaussians_loss, True)
        self.compiled_rest = fuse(self.rest_loss, True)
        self.graphed_image = None
        self.optimiser = self.gaussians.optimiser(self.fit_cfg.lr, 1.0)

    def image_loss(self, rgb_hw3, depth_hw, alpha_hw, prior_hw, prior_valid_hw, *target_fields):
        """The engine's image terms, weighted (and each term, detached, as the engine logs
        them); tensors in and out, as a CUDA graph takes them (the target as its fields)."""
        none = torch.empty(0, 2, device=rgb_hw3.device)  # projections: the terms never read them
        out = RenderOutput(rgb_hw3, depth_hw, alpha_hw, none, none)
        target = losses.PhotometricTarget(*target_fields)
        terms = losses.image_terms(
            out, target, prior_hw, prior_valid_hw, ssim_share=self.fit_cfg.ssim_share
        )
        detached = tuple(term.detach() for term in terms.values())
        return losses.weighted_sum(terms, self.weights), *detached

    def rest_loss(self, g: Gaussians, anchor_n3: torch.Tensor, flow: losses.FlowTargets):
        """The engine's per-Gaussian terms, weighted."""
        terms = losses.gaussian_terms(g, anchor_n3=anchor_n3, footprint=self.footprint, flow=flow)
        return losses.weighted_sum(terms, self.weights)

    def step(self, form: str) -> None:
        g = self.gaussians
        out = g.render(self.w2c_44, self.K_33, *self.size, backend="gsplat")
        if form == "none":
            loss = out.rgb_hw3.sum() + out.depth_hw.sum() + out.alpha_hw.sum()
            loss = loss + g.log_scales_n3.sum()
        elif form == "full":
            loss, _ = self.full_loss(
                out,
                self.target,
                self.prior_hw,
                self.prior_valid_hw,
                g,
                self.weights,
                ssim_share=self.fit_cfg.ssim_share,
                anchor_n3=self.anchor_n3,
                footprint=self.footprint,
                flow=self.flow,
            )
        else:
            args = (out.rgb_hw3, out.depth_hw, out.alpha_hw, self.prior_hw, self.prior_valid_hw)
            args = (*args, self.target.rgb_hw3, self.target.mean_3hw, self.target.mean_sq_3hw)
            if self.graphed_image is None:
                samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
                self.graphed_image = torch.cuda.make_graphed_callables(self.image_loss, samples)
            weighted, _, _ = self.graphed_image(*args)
            rest = self.compiled_rest if form == "graph+compiled" else self.rest_loss
            loss = weighted + rest(g, self.anchor_n3, self.flow)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        fused_adam_step(self.optimiser)


def main(cfg: ProbeConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("step_probe times CUDA steps (gsplat): run it on a machine with a GPU")
    forms = StepForms(cfg)
    logger.info("%d Gaussians, %dx%d", len(forms.gaussians), cfg.width, cfg.height)
    for form in ORDER:
        start = time.perf_counter()
        for _ in range(cfg.warmup_steps):
            forms.step(form)
        torch.cuda.synchronize()
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(cfg.steps):
            forms.step(form)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - start) / cfg.steps * 1e3
        logger.info("%-15s %.2f ms/step (warm-up %.1f s)", form, ms, warmup_s)


if __name__ == "__main__":
    main(tyro.cli(ProbeConfig))
