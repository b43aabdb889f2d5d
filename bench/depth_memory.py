"""MASt3R depth on a GPU: peak memory per window, the planner fitted to it, and a clip run under
two memory budgets. Writes a JSON file and prints markdown tables (docs/depth.md).

    python bench/depth_memory.py                     # on the GPU: real ViT-L/512, random weights
    python bench/depth_memory.py --model tiny --device cpu --windows 3 --clip-frames 4 \
        --clip-hw 60 90 --budgets-gb 6 --long-side 96 --sweep-niter 3 --clip-niter 3
    python bench/depth_memory.py --mode artefact     # stripes: the stage against the network

`--mode artefact` runs the depth stage on the first `artefact_frames` frames at each subsample
and scores its periodic artefact beside that of the network's own dense depth of the same frames
(`Mast3rBackend.dense_depth`, at the working size): a pattern the network has is not the
upsampling's.

The mast3r package must be importable (PYTHONPATH, see docs/depth.md). The model has the
released checkpoint's architecture with random weights: memory does not depend on the values.
Random weights put points behind the camera, which stops MASt3R's alignment (our engine then
falls back to the offline backend), so for measuring, the heads' depth output is made a positive
constant before saving the checkpoint (the README of ../shared/third_party does the same).
Each budget is enforced with torch.cuda.set_per_process_memory_fraction, so a plan that does
not fit fails with out-of-memory instead of borrowing the rest of the card.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from services.common.torchvision_ops import import_beside_cpu_torch  # noqa: E402
from services.depth import planner  # noqa: E402
from services.depth.backends.mast3r import (  # noqa: E402
    Mast3rBackend,
    Mast3rSettings,
    parse_model_spec,
    scene_graph_name,
)
from services.depth.engine import (  # noqa: E402
    DepthConfig,
    DepthRuntime,
    _resize_frames,
    estimate_depth,
)
from services.depth.quality import ARTEFACT_LIMIT, periodic_artefact_score  # noqa: E402
from services.synthetic.scene import SceneConfig, make_scene  # noqa: E402

log = logging.getLogger("depth_memory")

_COMMON = (
    "pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
    "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), "
    "conf_mode=('exp', 1, inf), two_confs=True, desc_conf_mode=('exp', 0, inf)"
)
SPECS = {
    # MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric's args.model
    "vitl512": "AsymmetricMASt3R(enc_depth=24, dec_depth=12, enc_embed_dim=1024, "
    f"dec_embed_dim=768, enc_num_heads=16, dec_num_heads=12, {_COMMON})",
    "tiny": "AsymmetricMASt3R(enc_depth=1, dec_depth=10, enc_embed_dim=32, dec_embed_dim=32, "
    f"enc_num_heads=2, dec_num_heads=2, {_COMMON})",
}


@dataclass
class BenchConfig:
    mode: Literal["memory", "artefact"] = "memory"
    model: Literal["vitl512", "tiny"] = "vitl512"
    device: str = "cuda"
    long_side: int = 512
    """Working long side of the sweep and the clip runs."""
    windows: tuple[int, ...] = (3, 8, 16)
    """Window lengths of the peak-memory sweep (logwin-3 pair graph, as the engine's default)."""
    sweep_niter: int = 10
    """Alignment iterations per phase in the sweep (memory does not grow with them)."""
    clip_frames: int = 50
    clip_hw: tuple[int, int] = (480, 854)
    budgets_gb: tuple[float, ...] = (6.0, 24.0)
    clip_niter: int = 60
    """Alignment iterations per phase of the clip runs (MASt3R's demo uses 300; time grows
    about linearly with them)."""
    margin: float = 1.25
    """Safety factor on the fitted per-pixel costs."""
    artefact_subsamples: tuple[int, ...] = (8, 4, 2)
    artefact_frames: int = 8
    out: Path = Path("bench/out/depth_memory.json")


def force_positive_depth(net: torch.nn.Module) -> None:
    """Both heads predict z = +1 before the exp depth mapping (x, y, confidence stay random)."""
    for head in (net.downstream_head1, net.downstream_head2):
        last = head.dpt.head[-1]  # 1x1 conv to (x, y, z, confidence)
        with torch.no_grad():
            last.weight[2].zero_()
            last.bias[2] = 1.0


def save_checkpoint(spec: str, path: Path) -> None:
    """A random model saved in MASt3R's train.py format (args namespace + state dict)."""
    model_class = import_beside_cpu_torch("mast3r.model").AsymmetricMASt3R
    torch.manual_seed(0)
    net = model_class(**parse_model_spec(spec))
    force_positive_depth(net)
    torch.save({"args": argparse.Namespace(model=spec), "model": net.state_dict()}, path)


def pair_count(n_frames: int, settings: Mast3rSettings) -> int:
    """Directed pairs MASt3R's make_pairs builds for a window of n frames."""
    make_pairs = import_beside_cpu_torch("mast3r.image_pairs").make_pairs
    return len(make_pairs(list(range(n_frames)), scene_graph=scene_graph_name(settings)))


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: str) -> int:
    if not device.startswith("cuda"):
        return 0
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def sweep(cfg: BenchConfig, checkpoint: Path, frames_thw3: np.ndarray) -> dict:
    """Peak memory of one window per window length, at the working size of the clip."""
    reset_peak(cfg.device)
    backend = Mast3rBackend(checkpoint, cfg.device)
    weights = peak_bytes(cfg.device)
    work_hw = planner.working_size(*frames_thw3.shape[1:3], cfg.long_side)
    frames_work = _resize_frames(frames_thw3, work_hw)
    settings = Mast3rSettings(niter1=cfg.sweep_niter, niter2=cfg.sweep_niter)
    rows = []
    for n in cfg.windows:
        reset_peak(cfg.device)
        started = time.perf_counter()
        backend.run_window(frames_work[:n], settings)
        rows.append(
            {
                "window": n,
                "pairs": pair_count(n, settings),
                "peak_bytes": peak_bytes(cfg.device),
                "seconds": time.perf_counter() - started,
            }
        )
        log.info("sweep %s", rows[-1])
    del backend
    return {"work_hw": list(work_hw), "model_bytes": weights, "rows": rows}


def fit_cost(measured: dict, cfg: BenchConfig) -> planner.CostModel:
    """The planner's cost model with its constants fitted to the sweep: the weights as measured,
    then a least-squares line of (peak - weights) over the window's frames x pixels, the
    intercept read as the per-pixel transient, each per-pixel cost times `margin`."""
    default = planner.CostModel()
    pixels = measured["work_hw"][0] * measured["work_hw"][1]
    windows = np.array([r["window"] for r in measured["rows"]], np.float64)
    extra = np.array([r["peak_bytes"] for r in measured["rows"]], np.float64)
    extra -= measured["model_bytes"]
    if len(windows) >= 2:
        per_frame, intercept = np.polyfit(windows, extra, 1)
    else:
        per_frame, intercept = 0.0, float(extra[0])
    return replace(
        default,
        model_bytes=int(measured["model_bytes"]),
        pair_bytes_per_px=max(1, int(cfg.margin * max(intercept, 0.0) / pixels)),
        canonical_bytes_per_px=max(1, int(cfg.margin * max(intercept, 0.0) / pixels / 6)),
        frame_bytes_per_px=max(1, int(cfg.margin * max(per_frame, 0.0) / pixels)),
        pair_cache_bytes_per_px=0,
    )


def clip_run(cfg: BenchConfig, checkpoint: Path, frames_thw3: np.ndarray, budget_gb: float):
    """The whole depth stage on the clip, the budget enforced on the device."""
    if cfg.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(cfg.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * 2**30 / total))
        torch.cuda.empty_cache()
    reset_peak(cfg.device)
    depth_cfg = DepthConfig(
        backend="mast3r",
        mast3r_checkpoint=checkpoint,
        mast3r_niter=cfg.clip_niter,
        mast3r_long_side=cfg.long_side,
    )
    runtime = DepthRuntime(device=cfg.device, memory_budget_gb=budget_gb)
    started = time.perf_counter()
    result = estimate_depth(frames_thw3, depth_cfg, runtime)
    seconds = time.perf_counter() - started
    return {
        "budget_gb": budget_gb,
        "plan": asdict(result.plan),
        "peak_bytes": peak_bytes(cfg.device),
        "seconds": seconds,
        "s_per_frame": seconds / len(frames_thw3),
        "nonpositive_share": result.quality.nonpositive_share,
        "periodic_artefact": result.quality.periodic_artefact,
        "repairs": result.repairs,
    }


def artefact_runs(cfg: BenchConfig, checkpoint: Path, frames_thw3: np.ndarray) -> list[dict]:
    """Per subsample: the stage's periodic artefact and the network's own (worst frame)."""
    network = Mast3rBackend(checkpoint, cfg.device)
    frames = frames_thw3[: cfg.artefact_frames]
    rows = []
    for subsample in cfg.artefact_subsamples:
        depth_cfg = DepthConfig(
            backend="mast3r",
            mast3r_checkpoint=checkpoint,
            subsample=subsample,
            window=len(frames),
            overlap=1,
            mast3r_niter=cfg.clip_niter,
            mast3r_long_side=cfg.long_side,
        )
        started = time.perf_counter()
        result = estimate_depth(frames, depth_cfg, DepthRuntime(device=cfg.device))
        seconds = time.perf_counter() - started
        frames_work = _resize_frames(frames, result.work_hw)
        own = [periodic_artefact_score(network.dense_depth(f), subsample) for f in frames_work]
        rows.append(
            {
                "subsample": subsample,
                "work_hw": list(result.work_hw),
                "stage": result.quality.periodic_artefact,
                "network": max(own),
                "seconds": seconds,
                "repairs": result.repairs,
            }
        )
        log.info("artefact %s", {k: v for k, v in rows[-1].items() if k != "repairs"})
    return rows


def main(cfg: BenchConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    height, width = cfg.clip_hw
    # Rendered at half size and upsampled: the content does not change memory, and rendering
    # 50 full-size frames would cost more time than the runs measured.
    half = make_scene(SceneConfig(height=height // 2, width=width // 2, n_frames=cfg.clip_frames))
    frames_thw3 = np.stack([cv2.resize(f, (width, height)) for f in half.frames_thw3])
    report: dict = {"config": {k: str(v) for k, v in asdict(cfg).items()}}

    def save() -> None:
        cfg.out.write_text(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory(prefix="mast3r-bench-") as tmp:
        checkpoint = Path(tmp) / f"{cfg.model}.pth"
        save_checkpoint(SPECS[cfg.model], checkpoint)
        if cfg.mode == "artefact":
            report["artefact"] = artefact_runs(cfg, checkpoint, frames_thw3)
            save()
            print("\n| subsample | work hw | stage | network's own | limit |")
            print("|---|---|---|---|---|")
            for row in report["artefact"]:
                print(
                    f"| {row['subsample']} | {row['work_hw'][1]}x{row['work_hw'][0]} "
                    f"| {row['stage']:.2f} | {row['network']:.2f} | {ARTEFACT_LIMIT:g} |"
                )
            return
        report["sweep"] = sweep(cfg, checkpoint, frames_thw3)
        save()
        fitted = fit_cost(report["sweep"], cfg)
        report["fitted_cost"] = asdict(fitted)
        save()
        print("fitted CostModel:", fitted)
        report["clips"] = []
        for budget in cfg.budgets_gb:
            fitted_plan = planner.plan_memory(
                height,
                width,
                cfg.clip_frames,
                int(budget * 2**30),
                max_long_side=cfg.long_side,
                cost=fitted,
            )
            report["clips"].append(clip_run(cfg, checkpoint, frames_thw3, budget))
            report["clips"][-1]["fitted_plan"] = asdict(fitted_plan)
            log.info("clip %s", {k: v for k, v in report["clips"][-1].items() if k != "repairs"})
            save()
    gib = 2**30
    print("\n| window | directed pairs | peak GiB | s |\n|---|---|---|---|")
    for row in report["sweep"]["rows"]:
        print(
            f"| {row['window']} | {row['pairs']} | {row['peak_bytes'] / gib:.2f} "
            f"| {row['seconds']:.1f} |"
        )
    print(
        "\n| budget GiB | work hw | window | windows | peak GiB | s/frame |\n"
        "|---|---|---|---|---|---|"
    )
    for clip in report["clips"]:
        plan = clip["plan"]
        print(
            f"| {clip['budget_gb']:g} | {plan['work_hw'][1]}x{plan['work_hw'][0]} "
            f"| {plan['window']} | {plan['n_windows']} | {clip['peak_bytes'] / gib:.2f} "
            f"| {clip['s_per_frame']:.2f} |"
        )


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
