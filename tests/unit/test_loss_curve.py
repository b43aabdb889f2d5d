"""bench/loss_curve.py: one loss per optimisation step of the real fit, the loss put back."""

from __future__ import annotations

import math

from bench.loss_curve import LossCurve, recorded_fit
from services.fit import losses
from services.fit.config import preset_with


def test_recorded_fit_gives_every_steps_loss_and_restores_the_loss_function():
    bench = LossCurve(
        clip="pan", width=32, height=24, frames=3, preset="test", set=("iters_first=5", "iters=7")
    )
    cfg = preset_with(bench.preset, bench.set, bench.seed)
    loss_function = losses.gaussians_loss
    step_losses = recorded_fit(bench, cfg)
    assert len(step_losses) == 5 + 2 * 7
    assert all(math.isfinite(value) and value > 0 for value in step_losses)
    assert losses.gaussians_loss is loss_function
