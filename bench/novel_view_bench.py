"""Views away from the fitted cameras (services/evaluation/novel_view.py): clips of the accuracy
suite fitted with their exact priors, each frame's Gaussians drawn from its camera moved sideways,
scored against the scene drawn from the same camera. One row per clip and variant, beside the
PSNR on the fitted frames, so a change that sharpens the fitted frames can be checked for shapes
that only look right from where they were fitted.

Run from the project root (after `make setup`):
    .venv/bin/python bench/novel_view_bench.py --variants "" lambda_isotropic=0.1 --jobs 2
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, no install

from bench.suite_bench import map_jobs  # noqa: E402
from services.common.describe import package_versions  # noqa: E402
from services.evaluation.fit_suite import exact_priors, suite_clip  # noqa: E402
from services.evaluation.novel_view import score_side_views  # noqa: E402
from services.fit.config import FitRuntime, preset_with  # noqa: E402
from services.fit.engine import fit  # noqa: E402
from services.synthetic.scene import make_scene  # noqa: E402


@dataclass
class NovelViewBench:
    """What to run."""

    width: int = 160
    height: int = 120
    frames: int = 12
    clips: tuple[str, ...] = ("orbit", "orbit-nonrigid")
    """Clips of the suite (names from services/evaluation/fit_suite.py)."""
    preset: str = "fast"
    variants: tuple[str, ...] = ("",)
    """FitConfig changes to fit each clip with, one variant per entry: comma-separated
    name=value pairs ("" = the preset as it is)."""
    shifts: tuple[float, ...] = (0.05, 0.1)
    """Sideways camera moves, as shares of frame 0's median depth (the camera turned back towards
    that depth)."""
    seed: int = 0
    """The fit's seed."""
    device: str = "cpu"
    jobs: int = 1
    """Fits in parallel processes (each single-threaded on the CPU)."""
    json_out: Path | None = None


def variant_settings(variant: str) -> tuple[str, ...]:
    """A variant's name=value pairs ("" = none)."""
    return tuple(pair.strip() for pair in variant.split(",") if pair.strip())


def _row(job: tuple[NovelViewBench, str, str]) -> dict:
    bench, clip_name, variant = job
    if bench.device == "cpu":
        import torch

        torch.set_num_threads(1)
    clip = suite_clip(clip_name)
    scene = make_scene(clip.scene_config(bench.width, bench.height, bench.frames, n_tracks=16))
    cfg = preset_with(bench.preset, variant_settings(variant), bench.seed)
    result = fit(exact_priors(scene), cfg, FitRuntime(device=bench.device))
    return {
        "clip": clip_name,
        "size": f"{bench.width}x{bench.height}x{bench.frames}",
        "preset": bench.preset,
        "settings": list(variant_settings(variant)),
        "seed": bench.seed,
        "psnr_fitted": float(result.psnr_t.mean()),
        "side_views": [asdict(score_side_views(result, scene, s)) for s in bench.shifts],
        "versions": package_versions(),
    }


def table(rows: list[dict]) -> str:
    """Markdown: a row per fit, the fitted frames' PSNR, then each side view's (all / co-visible
    pixels)."""
    shifts = [v["shift_share"] for v in rows[0]["side_views"]]
    header = ["clip", "settings", "PSNR fitted dB"]
    header += [f"side {100 * s:g} %: all / co-visible dB (share)" for s in shifts]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["clip"], " ".join(r["settings"]) or "(preset)", f"{r['psnr_fitted']:.2f}"]
        cells += [
            f"{v['psnr_db']:.2f} / {v['covisible_psnr_db']:.2f} ({v['covisible_share']:.2f})"
            for v in r["side_views"]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    bench = tyro.cli(NovelViewBench)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for clip in bench.clips:  # a wrong clip or setting fails here, before any fit
        suite_clip(clip)
    for variant in bench.variants:
        preset_with(bench.preset, variant_settings(variant), bench.seed)
    jobs = [(bench, clip, variant) for clip in bench.clips for variant in bench.variants]
    rows = map_jobs(_row, jobs, bench.jobs)
    size = f"{bench.width}x{bench.height}x{bench.frames}"
    print(f"side views at {size}, {bench.preset} preset, exact priors")
    print(table(rows))
    if bench.json_out is not None:
        bench.json_out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
