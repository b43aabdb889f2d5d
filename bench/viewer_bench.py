"""`gflow view` load time and memory on a 50-frame 854x480 run; prints a table.

Run after `make setup` (needs Chromium):
    .venv/bin/python bench/viewer_bench.py [--frames 50] [--step-px 2] [--out bench/out/viewer]

The run is made from a synthetic scene's truth (tests/integration/synthetic_run.py) rendered at a
quarter of the size and upscaled, so it takes seconds instead of a fit; Gaussians sit on every
`step_px`-th pixel (2: about 100 000 per frame, like a default fit). The viewer is started as a
process (`gflow view RUN`), timed to its "viewer ready" log line, opened in headless Chromium
(software WebGL) until its GUI arrives over the websocket, stepped through every frame with the
slider, and its peak resident memory read from /proc (VmHWM).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is no installed package

from services.common.artifacts import Artifacts  # noqa: E402
from services.common.store import StoreConfig, open_store  # noqa: E402
from services.pipeline.export import export_run  # noqa: E402
from services.pipeline.report import write_report  # noqa: E402
from services.synthetic.scene import SceneConfig, SyntheticScene, make_scene  # noqa: E402
from tests.integration.synthetic_run import synthetic_run  # noqa: E402


@dataclass
class BenchConfig:
    """What to measure."""

    frames: int = 50
    height: int = 480
    width: int = 854
    step_px: int = 2
    """Gaussians on every step_px-th pixel of each frame."""
    port: int = 8790
    out: Path = Path("bench/out/viewer")
    """The run folder is written here (replaced)."""


def upscaled_scene(config: BenchConfig) -> SyntheticScene:
    """The scene rendered at a quarter size, frames, depth, masks and intrinsics scaled up."""
    small = make_scene(
        SceneConfig(height=config.height // 4, width=config.width // 4, n_frames=config.frames)
    )
    sy, sx = config.height / small.depth_thw.shape[1], config.width / small.depth_thw.shape[2]

    def up(stack_thw: np.ndarray, interpolation: int) -> np.ndarray:
        size = (config.width, config.height)
        return np.stack([cv2.resize(f, size, interpolation=interpolation) for f in stack_thw])

    K_33 = small.K_33 * np.array([[sx], [sy], [1.0]])
    return dataclasses.replace(
        small,
        frames_thw3=up(small.frames_thw3, cv2.INTER_LINEAR),
        depth_thw=up(small.depth_thw, cv2.INTER_NEAREST),
        moving_thw=up(small.moving_thw.astype(np.uint8), cv2.INTER_NEAREST).astype(bool),
        K_33=K_33,
        tracks_nt2=small.tracks_nt2 * np.array([sx, sy], np.float32),
    )


def make_run(config: BenchConfig) -> None:
    shutil.rmtree(config.out, ignore_errors=True)
    store_config = StoreConfig(url=(config.out / "store").resolve().as_uri())
    artifacts = Artifacts(open_store(store_config))
    result = synthetic_run(artifacts, upscaled_scene(config), config.step_px, videos=False)
    result.report.CopyFrom(write_report(artifacts, result))
    export_run(artifacts, result, config.out, store_config)


def measure(config: BenchConfig) -> list[tuple[str, str]]:
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    gflow = Path(sys.executable).with_name("gflow")
    command = [str(gflow), "view", str(config.out), "--port", str(config.port)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    rows = []
    try:
        for line in process.stderr:
            if "viewer ready" in line:
                rows.append(("viewer's own load (log)", re.search(r"ready in (\S+ s)", line)[1]))
                rows.append(("process start to ready", f"{time.monotonic() - started:.1f} s"))
                break
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
            )
            page = browser.new_page(viewport={"width": 1000, "height": 650})
            opened = time.monotonic()
            page.goto(f"http://127.0.0.1:{config.port}")
            page.get_by_text("frames per second").wait_for(timeout=120_000)
            rows.append(
                ("browser open to GUI over websocket", f"{time.monotonic() - opened:.1f} s")
            )
            page.get_by_role("slider").first.focus()
            stepping = time.monotonic()
            for _ in range(config.frames - 1):
                page.keyboard.press("ArrowRight")
                page.wait_for_timeout(50)
            rows.append(
                (f"{config.frames - 1} slider steps", f"{time.monotonic() - stepping:.1f} s")
            )
            browser.close()
        status = Path(f"/proc/{process.pid}/status").read_text()
        peak_kib = int(re.search(r"VmHWM:\s+(\d+)", status)[1])
        rows.append(("viewer peak resident memory", f"{peak_kib / 1024:.0f} MiB"))
    finally:
        process.terminate()
        process.wait(timeout=30)
    return rows


def main() -> None:
    config = tyro.cli(BenchConfig)
    started = time.monotonic()
    make_run(config)
    rows = [("making the run folder", f"{time.monotonic() - started:.1f} s"), *measure(config)]
    print(
        f"gflow view, {config.frames} frames {config.width}x{config.height}, step {config.step_px}"
    )
    print("| what | value |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
