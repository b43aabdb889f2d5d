"""Where the fit spends its time on a synthetic clip: phases, then the top operators.

Run on the GPU machine (bench/gpu_session.sh profile) or on CPU at small sizes, from the project
root with PYTHONPATH=. (it imports bench.fit_bench):
    .venv/bin/python bench/fit_profile.py --width 64 --height 48 --frames 4 --preset test

First an unprofiled fit gives seconds per frame by phase (the engine's own phase timer); then a
second fit of the same clip, with torch.profiler on for its last `profiled_frames` frames, gives
the operators that take the most device and host time, so an optimisation targets what is
actually slow.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import tyro
from torch.profiler import ProfilerActivity, profile

from services.evaluation.fit_suite import exact_priors
from services.fit.config import FitRuntime, preset
from services.fit.engine import fit, resolve_device
from services.synthetic.scene import SceneConfig, make_scene


@dataclass
class ProfileConfig:
    width: int = 854
    """Clip width in pixels."""
    height: int = 480
    """Clip height in pixels."""
    frames: int = 8
    """Clip length (both fits run over all of it)."""
    profiled_frames: int = 3
    """Frames profiled: the last ones of a second, profiled fit of the same clip (the profiler's
    own overhead grows with them; late frames cost more than early ones)."""
    preset: str = "default"
    """Fit preset (default, fast, test)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to fit."""
    compile: bool = False
    """Fuse the loss code with torch.compile on CUDA (the fit runtime's `compile`)."""
    top: int = 25
    """Operators listed per table."""


def main() -> None:
    cfg = tyro.cli(ProfileConfig)
    scene = make_scene(SceneConfig(height=cfg.height, width=cfg.width, n_frames=cfg.frames))
    priors = exact_priors(scene)
    fit_cfg = preset(cfg.preset)
    runtime = FitRuntime(device=cfg.device, compile=cfg.compile)
    device = resolve_device(cfg.device)
    warm_up_cfg = dataclasses.replace(fit_cfg, iters_first=2, iters=2)
    fit(priors.first_frames(2), warm_up_cfg, runtime)

    started = time.perf_counter()
    result = fit(priors, fit_cfg, runtime)
    wall = time.perf_counter() - started
    print(
        f"{cfg.preset} {cfg.width}x{cfg.height}x{cfg.frames} on {device}: "
        f"{result.seconds / cfg.frames:.3f} s/frame fitting, {wall:.1f} s wall, "
        f"{len(result.frames[-1])} Gaussians at the end"
    )
    print("| phase | s/frame | share |\n|---|---|---|")
    for phase, seconds in sorted(result.phase_seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {phase} | {seconds / cfg.frames:.3f} | {seconds / result.seconds:.1%} |")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    first_profiled = cfg.frames - cfg.profiled_frames

    def toggle(done: int, total: int, message: str) -> None:
        """Starts the profiler after frame first_profiled - 1, stops it after the last one."""
        if done == first_profiled:
            prof.start()
        if done == total:
            prof.stop()

    if first_profiled == 0:
        prof.start()
    fit(priors, fit_cfg, runtime, toggle)
    print(f"profiled frames {first_profiled}..{cfg.frames - 1} of a second fit")
    averages = prof.key_averages()
    if device.type == "cuda":
        print(averages.table(sort_by="self_cuda_time_total", row_limit=cfg.top))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=cfg.top))


if __name__ == "__main__":
    main()
