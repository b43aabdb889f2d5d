"""UniMatch flow on a GPU: peak memory and time per batch size at 854x480, then a clip through
the flow engine under a memory budget. Writes a JSON file and prints a markdown table
(docs/flow.md).

    python bench/flow_memory.py                                  # on the GPU
    python bench/flow_memory.py --device cpu --batches 1 --clip-frames 3 --hw 50 70  # smoke test

The unimatch package must be importable (PYTHONPATH, see docs/flow.md). The model is the
gmflow-scale2-regrefine6 architecture with random weights (memory does not depend on them),
saved and loaded in UniMatch's checkpoint format. The budget is enforced with
torch.cuda.set_per_process_memory_fraction.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from services.flow.backends import unimatch  # noqa: E402
from services.flow.engine import FlowConfig, FlowRuntime, compute_flow  # noqa: E402
from services.synthetic.scene import SceneConfig, make_scene  # noqa: E402

log = logging.getLogger("flow_memory")


@dataclass
class BenchConfig:
    device: str = "cuda"
    hw: tuple[int, int] = (480, 854)
    batches: tuple[int, ...] = (1, 2, 4, 8)
    """Directed pairs per forward pass."""
    clip_frames: int = 10
    budget_gb: float = 6.0
    out: Path = Path("bench/out/flow_memory.json")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _peak(device: str) -> int:
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device)) if device.startswith("cuda") else 0


def _reset(device: str) -> None:
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def main(cfg: BenchConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    height, width = cfg.hw
    frames_thw3 = make_scene(
        SceneConfig(height=height, width=width, n_frames=cfg.clip_frames)
    ).frames_thw3
    report: dict = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "batches": []}
    with tempfile.TemporaryDirectory(prefix="unimatch-bench-") as tmp:
        checkpoint = Path(tmp) / "gmflow-random.pth"
        torch.manual_seed(0)
        unimatch_class = unimatch.import_unimatch_class()
        torch.save({"model": unimatch_class(**unimatch.model_kwargs()).state_dict()}, checkpoint)
        backend = unimatch.UniMatchBackend(checkpoint, cfg.device)
        backend.flow(frames_thw3[:1], frames_thw3[1:2])  # warm-up (cuDNN, allocator)
        for batch in cfg.batches:
            index = np.arange(batch) % (len(frames_thw3) - 1)
            _reset(cfg.device)
            started = time.perf_counter()
            backend.flow(frames_thw3[index], frames_thw3[index + 1])
            _sync(cfg.device)
            seconds = time.perf_counter() - started
            report["batches"].append(
                {
                    "batch": batch,
                    "peak_bytes": _peak(cfg.device),
                    "estimate_bytes": backend.model_bytes
                    + batch * backend.item_bytes(height, width),
                    "s_per_pair": seconds / batch,
                }
            )
            log.info("batch %s", report["batches"][-1])
            cfg.out.write_text(json.dumps(report, indent=1))  # kept if a later step fails
        del backend
        if cfg.device.startswith("cuda"):
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(cfg.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cfg.budget_gb * 2**30 / total))
        _reset(cfg.device)
        flow_cfg = FlowConfig(backend="unimatch", unimatch_checkpoint=checkpoint)
        runtime = FlowRuntime(device=cfg.device, memory_budget_gb=cfg.budget_gb)
        result = compute_flow(frames_thw3, flow_cfg, runtime)
        report["clip"] = {
            "frames": cfg.clip_frames,
            "budget_gb": cfg.budget_gb,
            "peak_bytes": _peak(cfg.device),
            "engine_peak_bytes": result.peak_memory_bytes,
            "seconds": result.seconds,
            "s_per_frame": result.seconds / cfg.clip_frames,
            "fb_error_mean": float(np.mean([p.fb_error_mean for p in result.pairs])),
            "consistent_share": float(np.mean([p.consistent_share for p in result.pairs])),
        }
        log.info("clip %s", report["clip"])
    cfg.out.write_text(json.dumps(report, indent=1))
    gib = 2**30
    print(f"\n{width}x{height}\n| batch | peak GiB | estimate GiB | s/pair |\n|---|---|---|---|")
    for row in report["batches"]:
        print(
            f"| {row['batch']} | {row['peak_bytes'] / gib:.2f} | "
            f"{row['estimate_bytes'] / gib:.2f} | {row['s_per_pair']:.3f} |"
        )


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
