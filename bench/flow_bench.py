"""Flow engine speed and peak memory: pairs per second (both directions and the consistency
check) for DIS on the CPU and RAFT on CUDA (or on the CPU when asked), printed as a table.

    .venv/bin/python bench/flow_bench.py                               # DIS presets, 854 x 480
    .venv/bin/python bench/flow_bench.py --raft-weights raft_small_C_T_V2-01064c6d.pth
    .venv/bin/python bench/flow_bench.py --raft-random-weights         # speed only: random init

Frames are the real DAVIS frames in ../shared/data (cycled 0 1 2 1 0 ...) resized to the asked
size, or a synthetic scene when those are absent. Each case runs in a fresh process, so the CPU
figure (growth of the resident set at its peak) is not hidden by memory an earlier case freed.
On CUDA a warm-up run on one pair comes first and is not timed; on the CPU nothing is warmed up.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from services.flow.engine import FlowConfig, FlowRuntime, compute_flow  # noqa: E402

DAVIS_FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis-frames"


@dataclass
class BenchConfig:
    height: int = 480
    width: int = 854
    n_frames: int = 9
    """Frames per run (n_frames - 1 consecutive pairs)."""
    dis_presets: tuple[str, ...] = ("ultrafast", "fast", "medium", "fine")
    polished_presets: tuple[str, ...] = ("medium",)
    """DIS presets also timed with `dis_polish` (services/flow/polish.py), once per polish_rounds
    (the other rows run DIS alone)."""
    polish_rounds: tuple[int, ...] = (1, 3)
    """`dis_polish_rounds` of the polished rows."""
    raft_weights: Path | None = None
    """A torchvision RAFT state dict; with neither this nor --raft-random-weights, no RAFT."""
    raft_random_weights: bool = False
    """Save a randomly initialised RAFT to a temporary file and load that (speed is the same)."""
    raft_models: tuple[str, ...] = ("small", "large")
    raft_on_cpu: bool = False
    """Also time RAFT on the CPU (slow: tens of seconds per pair at 854 x 480)."""


def _frames(cfg: BenchConfig) -> tuple[np.ndarray, str]:
    paths = sorted(DAVIS_FRAMES.glob("*.jpg"))
    if not paths:
        from services.synthetic.scene import SceneConfig, make_scene

        scene = make_scene(SceneConfig(height=cfg.height, width=cfg.width, n_frames=cfg.n_frames))
        return scene.frames_thw3, "synthetic"
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    images = [
        cv2.resize(im, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA) for im in images
    ]
    cycle = list(range(len(images))) + list(range(len(images) - 2, 0, -1))
    return np.stack([images[cycle[t % len(cycle)]] for t in range(cfg.n_frames)]), "DAVIS"


def _run_case(frames_thw3: np.ndarray, flow_cfg: FlowConfig, runtime: FlowRuntime) -> dict:
    if runtime.device.startswith("cuda"):
        compute_flow(frames_thw3[:2], flow_cfg, runtime)
    result = compute_flow(frames_thw3, flow_cfg, runtime)
    return {
        "device": result.device,
        "seconds": result.seconds,
        "pairs": len(result.pairs),
        "peak_mib": result.peak_memory_bytes / 2**20,
        "memory_kind": result.memory_kind,
        "consistent": float(np.mean([p.consistent_share for p in result.pairs])),
    }


def _random_raft_weights(model: str, folder: Path) -> Path:
    import torch

    from services.flow.backends.raft import import_optical_flow

    path = folder / f"raft_{model}_random.pth"
    torch.save(getattr(import_optical_flow(), f"raft_{model}")(weights=None).state_dict(), path)
    return path


def _cases(cfg: BenchConfig, folder: Path) -> list[tuple[str, FlowConfig, FlowRuntime]]:
    cases = [
        (f"dis {preset}", FlowConfig(dis_preset=preset, dis_polish=False), FlowRuntime())
        for preset in cfg.dis_presets
    ] + [
        (
            f"dis {preset} + polish x{rounds}",
            FlowConfig(dis_preset=preset, dis_polish=True, dis_polish_rounds=rounds),
            FlowRuntime(),
        )
        for preset in cfg.polished_presets
        for rounds in cfg.polish_rounds
    ]
    if cfg.raft_weights is None and not cfg.raft_random_weights:
        return cases
    import torch

    devices = (["cuda"] if torch.cuda.is_available() else []) + (["cpu"] if cfg.raft_on_cpu else [])
    for model in cfg.raft_models:
        weights = cfg.raft_weights or _random_raft_weights(model, folder)
        for device in devices:
            flow_cfg = FlowConfig(backend="raft", raft_model=model, raft_weights=weights)
            cases.append((f"raft {model}", flow_cfg, FlowRuntime(device=device)))
    return cases


def main(cfg: BenchConfig) -> None:
    frames_thw3, source = _frames(cfg)
    rows = []
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        for name, flow_cfg, runtime in _cases(cfg, Path(folder)):
            with spawn.Pool(1) as pool:
                rows.append((name, pool.apply(_run_case, (frames_thw3, flow_cfg, runtime))))
    t, h, w = frames_thw3.shape[:3]
    print(f"flow engine, {t} {source} frames of {w}x{h} ({t - 1} pairs, both directions each)")
    header = (
        f"{'case':<24}{'device':<8}{'pairs/s':>9}{'s/pair':>9}{'peak MiB':>10}{'FB share':>10}"
        "  memory kind"
    )
    print(header)
    print("-" * (len(header) + 10))
    for name, row in rows:
        rate = row["pairs"] / row["seconds"]
        print(
            f"{name:<24}{row['device']:<8}{rate:>9.2f}{1 / rate:>9.3f}{row['peak_mib']:>10.0f}"
            f"{row['consistent']:>10.3f}  {row['memory_kind']}"
        )


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
