"""Fitting engine speed and quality on a synthetic clip with exact priors; prints a table.

Run from the project root (after `make setup`, or with PYTHONPATH=.):
    .venv/bin/python bench/fit_bench.py                       # 854x480, 50 frames, default + fast
    .venv/bin/python bench/fit_bench.py --width 64 --height 48 --frames 8 --presets test  # CPU
    .venv/bin/python bench/fit_bench.py --presets fast --repeats 3 --compile  # mean and spread
    .venv/bin/python bench/fit_bench.py --presets default --set camera_iters=50  # a preset change

The clip comes from services/synthetic/scene.py (moving camera, one moving object by default)
with its exact depth, forward/backward flow, moving masks and intrinsics as the priors, so the
figures measure the engine alone. Per preset: seconds per frame (fitting only), peak GPU memory
(CUDA only), mean PSNR, TAP-Vid average Jaccard and occlusion accuracy (queries at each track's
first visible frame), camera ATE after Sim(3) alignment, mean moving-mask IoU, and the Gaussians
alive at the last frame; then the seconds per phase (with counts of cudaMalloc calls and page faults
over the fit: what a first fit of a process pays), and each loss term at the last optimisation
step of a frame (mean over the frames that have it) with its weighted value (weight x term).
"""

from __future__ import annotations

import functools
import itertools
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from services.evaluation import metrics
from services.evaluation.fit_suite import exact_priors, load_readout, tapvid_row
from services.fit.config import FitRuntime, preset_with
from services.fit.engine import fit, resolve_device
from services.fit.losses import term_weights
from services.fit.tracks import configured_tracks
from services.synthetic.scene import SceneConfig, SyntheticScene, make_scene


@dataclass
class BenchConfig:
    """What to measure."""

    width: int = 854
    """Clip width in pixels."""
    height: int = 480
    """Clip height in pixels."""
    frames: int = 50
    """Clip length."""
    presets: tuple[str, ...] = ("default", "fast")
    """Fit presets to run (default, fast, test)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to fit (the fit's runtime device)."""
    camera: Literal["moving", "rotation", "static"] = "moving"
    """Camera motion of the synthetic clip."""
    objects: int = 1
    """Moving objects in the clip (0 to 3)."""
    tracks: int = 256
    """Ground-truth tracks sampled for the TAP-Vid figures."""
    seed: int = 0
    """Seed of the clip, and of the (first) fit unless `fit_seed` is given."""
    fit_seed: int | None = None
    """Seed of the (first) fit on the same clip, to add fits to earlier ones."""
    repeats: int = 1
    """Fits per preset, with fit seeds fit_seed, fit_seed + 1, ...: GPU fits are not
    bit-reproducible (gsplat's backward pass accumulates with atomics) and one run cannot decide a
    small accuracy difference, so several give the mean and the spread (printed per preset)."""
    compile: bool = False
    """Fuse the loss code with torch.compile on CUDA (the fit runtime's `compile`)."""
    set: tuple[str, ...] = ()
    """FitConfig fields to change in every preset, as name=value (e.g. camera_iters=50
    camera_lr=1e-3), to measure a preset change before it is made; the rows record them."""
    warmup: bool = True
    """First fit the clip's first 3 frames once with the first preset (gsplat's kernels load, the
    loss code compiles), so s/frame is what a serving process sees; the seconds are reported."""
    json_out: Path | None = None
    """Also write the rows as JSON here."""
    other_tracks: Path | None = None
    """A tracks.py of another version of services/fit: each row also scores its tracks on the same
    fit (other_aj, other_occ_acc), as bench/suite_bench.py --other-tracks."""


def make_clip(cfg: BenchConfig) -> SyntheticScene:
    """The synthetic clip that `cfg` describes (bench/compare_original.py fits the same one)."""
    return make_scene(
        SceneConfig(
            height=cfg.height,
            width=cfg.width,
            n_frames=cfg.frames,
            seed=cfg.seed,
            camera=cfg.camera,
            n_objects=cfg.objects,
            n_tracks=cfg.tracks,
        )
    )


def measure(cfg: BenchConfig) -> tuple[list[dict], float]:
    """One row per preset, and the seconds the clip took to render."""
    started = time.perf_counter()
    scene = make_clip(cfg)
    synth_seconds = time.perf_counter() - started
    return measure_presets(cfg, scene), synth_seconds


def measure_presets(cfg: BenchConfig, scene: SyntheticScene) -> list[dict]:
    """One row per preset of `cfg`: a fit of the scene's exact priors, scored against it."""
    priors = exact_priors(scene)
    queries = metrics.sample_queries(scene.tracks_nt2, scene.occluded_nt, "first")
    query_rows = np.stack(
        [queries.query_t_q, queries.query_xy_q2[:, 1], queries.query_xy_q2[:, 0]], axis=1
    )
    device = resolve_device(cfg.device)
    runtime = FitRuntime(device=cfg.device, compile=cfg.compile)
    other_readout = None if cfg.other_tracks is None else load_readout(cfg.other_tracks)
    warmup_seconds = 0.0
    if cfg.warmup:
        started = time.perf_counter()
        fit(priors.first_frames(3), preset_with(cfg.presets[0], cfg.set, cfg.seed), runtime)
        warmup_seconds = time.perf_counter() - started
    rows = []
    first = cfg.seed if cfg.fit_seed is None else cfg.fit_seed
    for name, fit_seed in itertools.product(cfg.presets, range(first, first + cfg.repeats)):
        fit_cfg = preset_with(name, cfg.set, fit_seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = one_time_costs(device)
        frame_ends = [time.perf_counter()]
        result = fit(priors, fit_cfg, runtime, functools.partial(stamp_frame, frame_ends))
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        costs = {name: count - before[name] for name, count in one_time_costs(device).items()}
        image_hw = (cfg.height, cfg.width)
        tracks = configured_tracks(result, query_rows, fit_cfg, priors)
        tapvid = tapvid_row(queries, tracks.points_qt2, tracks.occluded_qt, image_hw)
        other = {}
        if other_readout is not None:
            other_qt2, other_qt = other_readout(result, query_rows, fit_cfg, priors)
            other_tapvid = tapvid_row(queries, other_qt2, other_qt, image_hw)
            other = dict(other_aj=other_tapvid["aj"], other_occ_acc=other_tapvid["oa"])
        iou = [
            metrics.mask_j(p, g)
            for p, g in zip(result.moving_mask_thw, scene.moving_thw, strict=True)
        ]
        rows.append(
            dict(
                preset=name,
                device=str(device),
                compile=runtime.compiles_on(device.type),
                settings=list(cfg.set),
                seed=cfg.seed,
                fit_seed=fit_seed,
                warmup_s=warmup_seconds,
                size=f"{cfg.width}x{cfg.height}x{cfg.frames}",
                s_per_frame=result.seconds / cfg.frames,
                peak_gpu_mib=peak,
                psnr=float(result.psnr_t.mean()),
                aj=tapvid["aj"],
                occ_acc=tapvid["oa"],
                **other,
                ate=metrics.ate_rpe(result.c2w_t44, scene.c2w_t44)["ate"],
                mask_iou=float(np.mean(iou)),
                gaussians=len(result.frames[-1]),
                phase_s_per_frame={
                    phase: round(seconds / cfg.frames, 4)
                    for phase, seconds in sorted(result.phase_seconds.items())
                },
                one_time_costs=costs,
                loss_terms=loss_means(result.loss_terms),
                loss_weights=term_weights(fit_cfg),
                # per frame, to see where a run goes wrong (a drifting depth scale, a depth or
                # flow term that jumps)
                series=dict(
                    psnr_db=result.psnr_t.round(3).tolist(),
                    depth_prior_scale=result.depth_scale_t.round(5).tolist(),
                    depth_term=result.loss_terms["depth"].round(5).tolist(),
                    flow_term=result.loss_terms["flow"].round(5).tolist(),
                    # wall seconds per frame, from the fit's progress calls (whether a slow fit is
                    # slow throughout or at a few frames)
                    frame_s=np.diff(frame_ends).round(4).tolist(),
                ),
            )
        )
    return rows


def stamp_frame(frame_ends: list[float], *_progress) -> None:
    """The fit's progress call at the end of each frame: note the time."""
    frame_ends.append(time.perf_counter())


def one_time_costs(device: torch.device) -> dict[str, int]:
    """Counters of what a process pays once and then reuses: the CUDA allocator's calls to
    cudaMalloc (it caches freed blocks) and the process's minor page faults (first touches of
    host memory). Their growth over a fit shows whether the first fit of a process paid them."""
    counts = {"page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}
    if device.type == "cuda":
        counts["cuda_mallocs"] = torch.cuda.memory_stats(device).get("num_device_alloc", 0)
    return counts


def loss_means(loss_terms: dict[str, np.ndarray]) -> dict[str, float]:
    """Each term's mean over the frames whose loss had it (NaN when none did)."""
    return {
        name: float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() else np.nan
        for name, values in loss_terms.items()
    }


def table(rows: list[dict]) -> str:
    """A Markdown table of the rows."""
    header = (
        "preset",
        "fit seed",
        "device",
        "compiled",
        "size",
        "s/frame",
        "peak GPU MiB",
        "PSNR dB",
        "AJ",
        "occ. acc.",
        "ATE m",
        "mask IoU",
        "Gaussians",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = (
            r["preset"],
            str(r["fit_seed"]),
            r["device"],
            "yes" if r["compile"] else "no",
            r["size"],
            f"{r['s_per_frame']:.3f}",
            f"{r['peak_gpu_mib']:.0f}",
            f"{r['psnr']:.2f}",
            f"{r['aj']:.3f}" + (f" (other {r['other_aj']:.3f})" if "other_aj" in r else ""),
            f"{r['occ_acc']:.3f}",
            f"{r['ate']:.4f}",
            f"{r['mask_iou']:.3f}",
            str(r["gaussians"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(row: dict) -> str:
    """A row's column label in the per-row tables: its preset and fit seed."""
    return f"{row['preset']} (seed {row['fit_seed']})"


SPREAD_FIGURES = ("s_per_frame", "psnr", "aj", "occ_acc", "ate")


def spread_table(rows: list[dict]) -> str:
    """Mean and sample standard deviation of the main figures per preset, over its fits."""
    lines = ["| preset | fits | " + " | ".join(SPREAD_FIGURES) + " |"]
    lines.append("|" + "---|" * (len(SPREAD_FIGURES) + 2))
    for name in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == name]
        cells = []
        for figure in SPREAD_FIGURES:
            values = np.array([r[figure] for r in mine], np.float64)
            cells.append(f"{values.mean():.4g} ± {values.std(ddof=1):.2g}")
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def phase_table(rows: list[dict]) -> str:
    """Seconds per frame spent in each phase of the fit, then the one-time-cost counters, one
    column per preset."""
    phases = sorted({phase for r in rows for phase in r["phase_s_per_frame"]})
    lines = [
        "| phase | " + " | ".join(_label(r) for r in rows) + " |",
        "|" + "---|" * (len(rows) + 1),
    ]
    for phase in phases:
        cells = [f"{r['phase_s_per_frame'].get(phase, 0.0):.3f}" for r in rows]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    for counter in sorted({name for r in rows for name in r["one_time_costs"]}):
        cells = [str(r["one_time_costs"].get(counter, "")) for r in rows]
        lines.append(f"| {counter} (count over the fit) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_table(rows: list[dict]) -> str:
    """Each loss term, raw and weighted, one pair of columns per preset."""
    terms = list(rows[0]["loss_terms"]) if rows else []
    header = "| term | " + " | ".join(f"{_label(r)} | x weight" for r in rows) + " |"
    lines = [header, "|" + "---|" * (2 * len(rows) + 1)]
    for term in terms:
        cells = []
        for r in rows:
            value = r["loss_terms"][term]
            cells += [f"{value:.4g}", f"{value * r['loss_weights'][term]:.4g}"]
        lines.append(f"| {term} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    if cfg.repeats < 1:
        raise SystemExit(f"--repeats {cfg.repeats}: give at least 1")
    rows, synth_seconds = measure(cfg)
    print(f"synthetic clip {cfg.width}x{cfg.height}x{cfg.frames} rendered in {synth_seconds:.1f} s")
    if cfg.set:
        print(f"every preset with {' '.join(cfg.set)}")
    if cfg.warmup:
        print(f"warm-up fit (3 frames, kernels loaded and compiled): {rows[0]['warmup_s']:.1f} s")
    print(table(rows))
    if cfg.repeats > 1:
        print("\nmean ± standard deviation over each preset's fits")
        print(spread_table(rows))
    print("\nseconds per frame by phase (checkpoint time is not part of s/frame), one-time costs")
    print(phase_table(rows))
    print("\nloss terms at the last step of a frame, mean over frames (raw, and x its weight)")
    print(loss_table(rows))
    if cfg.json_out is not None:
        cfg.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
