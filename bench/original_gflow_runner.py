"""Runs the original GFlow's `gflow/fit_video.py` in this process and reports what only this
process can see: its peak GPU memory (torch.cuda.max_memory_allocated is per process, and unlike
polling nvidia-smi it counts exactly what our own fits are charged with: tensors held by PyTorch's
allocator, not the CUDA context or the allocator's cached blocks).

bench/compare_original.py starts it as a child, with the original's repository root as the
working directory (as its scripts/fit_video.sh runs it):
    python bench/original_gflow_runner.py REPORT_JSON PATH/TO/gflow/fit_video.py [its flags...]

Nothing of the original is edited. One shim: matplotlib 3.9 removed `matplotlib.cm.get_cmap`,
which the original calls on every render (gflow/utils/color.py, gflow/utils/traj_visualizer.py;
its requirements pin matplotlib 3.8.4). Where it is missing it is set to
`matplotlib.colormaps.get_cmap`, which returns the same colormap objects.
"""

from __future__ import annotations

import json
import logging
import math
import runpy
import sys
import time
from pathlib import Path

log = logging.getLogger("original_gflow_runner")


def restore_cm_get_cmap() -> None:
    """Gives matplotlib >= 3.9 back the `cm.get_cmap(name)` the original calls."""
    import matplotlib
    import matplotlib.cm

    if not hasattr(matplotlib.cm, "get_cmap"):
        matplotlib.cm.get_cmap = matplotlib.colormaps.get_cmap
        log.info("matplotlib %s: set cm.get_cmap = colormaps.get_cmap", matplotlib.__version__)


def run_fit_video(fit_video: Path, flags: list[str]) -> None:
    """`python gflow/fit_video.py FLAGS...`, in this process: its folder first on sys.path (its
    imports are `import utils`, `from trainer import ...`), its own argv for its tyro CLI."""
    sys.path.insert(0, str(fit_video.parent))
    sys.argv = [str(fit_video), *flags]
    runpy.run_path(str(fit_video), run_name="__main__")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if len(sys.argv) < 3:
        raise SystemExit("usage: original_gflow_runner.py REPORT_JSON FIT_VIDEO_PY [flags...]")
    report_path, fit_video, flags = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    restore_cm_get_cmap()
    import torch

    started = time.perf_counter()
    finished = False
    try:
        run_fit_video(fit_video, flags)
        finished = True
    finally:
        cuda = torch.cuda.is_available()
        report = dict(
            finished=finished,
            wall_seconds=time.perf_counter() - started,
            peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if cuda else math.nan,
        )
        report_path.write_text(json.dumps(report))
        log.info("report: %s", report)


if __name__ == "__main__":
    main()
