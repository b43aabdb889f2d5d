"""Every optimisation step's loss of one fit of a suite clip with its exact priors: how the loss
moves within a frame (after each fresh optimiser, towards the last step), to judge a change of
the optimisation schedule (docs/fit.md, "Adam's first steps from fresh moments").

Run from the project root (after `make setup`; one CPU thread, about a minute at 96x72x12):
    .venv/bin/python bench/loss_curve.py --clip orbit --set keep_adam_state=true

Prints, for the frames after the first, the mean over frames of the loss at a frame's first step,
the highest loss of the five steps after each fresh optimiser, the loss just before the second
one and at the frame's last step; --json-out keeps every step's loss.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from services.evaluation.fit_suite import exact_priors, suite_clip
from services.fit import losses
from services.fit.config import FitConfig, FitRuntime, preset_with
from services.fit.densify import DensifyStrategy
from services.fit.engine import fit
from services.synthetic.scene import make_scene


@dataclass
class LossCurve:
    """What to fit."""

    clip: str = "orbit"
    """A clip of the suite (services/evaluation/fit_suite.py)."""
    width: int = 96
    height: int = 72
    frames: int = 12
    preset: str = "fast"
    set: tuple[str, ...] = ()
    """FitConfig fields to change, as name=value (e.g. keep_adam_state=true)."""
    seed: int = 0
    """The fit's seed."""
    json_out: Path | None = None
    """Also write every step's loss here ({"first": [...], "later": [[...] per frame]})."""


def recorded_fit(bench: LossCurve, cfg: FitConfig) -> list[float]:
    """Fits the clip on the CPU and returns the total loss of every optimisation step, in order.
    The engine looks the loss function up at each frame, so wrapping it here records every
    step's value (reading it waits for the device: a CPU measurement, not a speed one)."""
    scene = make_scene(
        suite_clip(bench.clip).scene_config(bench.width, bench.height, bench.frames, 128)
    )
    step_losses: list[float] = []
    gaussians_loss = losses.gaussians_loss

    def recording_loss(*args, **kwargs):
        loss, terms = gaussians_loss(*args, **kwargs)
        step_losses.append(float(loss.detach()))
        return loss, terms

    losses.gaussians_loss = recording_loss
    try:
        fit(exact_priors(scene), cfg, FitRuntime(device="cpu"))
    finally:
        losses.gaussians_loss = gaussians_loss
    return step_losses


def main(bench: LossCurve) -> None:
    torch.set_num_threads(1)
    cfg = preset_with(bench.preset, bench.set, bench.seed)
    step_losses = recorded_fit(bench, cfg)
    later_fi = np.asarray(step_losses[cfg.iters_first :]).reshape(-1, cfg.iters)
    schedule = DensifyStrategy(cfg)  # a later frame starts with a pass; each starts an optimiser
    fresh = [it for it in range(cfg.iters) if schedule.is_due(it, first_pass=True)]
    settings = " ".join(bench.set) or "as is"
    print(f"| {bench.clip}, {bench.preset} ({settings}) | mean over frames 1-{len(later_fi)} |")
    print("|---|---|")
    print(f"| first step | {later_fi[:, 0].mean():.5f} |")
    for it in fresh:
        if it:
            print(f"| step {it - 1} (before pass {it}) | {later_fi[:, it - 1].mean():.5f} |")
        highest = later_fi[:, it + 1 : it + 6].max(1).mean()
        print(f"| highest of steps {it + 1}-{it + 5} | {highest:.5f} |")
    print(f"| last step | {later_fi[:, -1].mean():.5f} |")
    if bench.json_out is not None:
        curves = {"first": step_losses[: cfg.iters_first], "later": later_fi.tolist()}
        bench.json_out.write_text(json.dumps({"settings": list(bench.set), **curves}))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(tyro.cli(LossCurve))
