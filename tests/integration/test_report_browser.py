"""The HTML report of a run made from a synthetic scene's truth: verdicts, the frame strip and the
camera views are there, and in headless Chromium it loads without console errors, every image
and video loads, and the slider shows the frame it points at."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from services.common.artifacts import Artifacts
from services.common.store import StoreConfig
from services.pipeline.export import export_run
from services.pipeline.report import (
    STRIP_WIDTH_PX,
    line_plot_svg,
    path_plot_svg,
    render_report_html,
    strip_panels,
    write_report,
)
from services.synthetic.scene import SceneConfig, make_scene
from tests.integration.synthetic_run import FPS, synthetic_run

CHROMIUM = shutil.which("chromium")
N_FRAMES, HEIGHT, WIDTH = 6, 48, 64
PSNR_T = [40.0, 38.0, 22.0, 39.0, 40.0, 41.0]


@pytest.fixture
def run(local_store):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig(height=HEIGHT, width=WIDTH, n_frames=N_FRAMES))
    return artifacts, scene, synthetic_run(artifacts, scene, psnr_t=PSNR_T)


@pytest.fixture
def report_html(run) -> str:
    artifacts, _, result = run
    return render_report_html(artifacts, result)


def test_plots_handle_empty_and_nan_series():
    assert "no values" in line_plot_svg([], "psnr")
    assert "no values" in line_plot_svg([float("nan")], "psnr")
    assert line_plot_svg([1.0, float("nan"), 3.0], "psnr").count("<circle") == 2
    assert "no cameras" in path_plot_svg([], "path", "x right, z forward")


def test_strip_panels_are_the_run_outputs(run):
    artifacts, scene, result = run
    names, panels = strip_panels(artifacts, result)
    assert names == ["input", "reconstruction", "depth", "moving mask", "tracks"]
    assert all(p.shape == (N_FRAMES, HEIGHT, WIDTH, 3) for p in panels)
    np.testing.assert_array_equal(panels[0], scene.frames_thw3)
    # The reconstruction went through H.264: close to the input it was made of, not equal.
    assert np.abs(panels[1].astype(int) - scene.frames_thw3).mean() < 6
    moved = np.any(panels[3] != scene.frames_thw3, axis=-1)
    np.testing.assert_array_equal(moved, scene.moving_thw)


def test_report_is_self_contained_with_verdicts_and_pictures(report_html):
    assert 'src="http' not in report_html and 'href="http' not in report_html
    assert 'class="headline warn"' in report_html
    assert "Usable with care: 1 warning(s) (fit psnr_min)" in report_html
    assert "worst frame PSNR 22.0 dB (frame 2)" in report_html
    assert report_html.count('data-frame="') == N_FRAMES
    assert report_html.count("<video") == 2  # reconstruction and trajectories
    assert "camera path, top view" in report_html and "camera path, side view" in report_html


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)"
)
def test_report_loads_in_chromium_without_errors(report_html, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    page_path = tmp_path / "report.html"
    page_path.write_text(report_html)
    problems: list[str] = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_function(
            "Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 1)"
            " && Array.from(document.images).every(i => i.complete)",
            timeout=15000,
        )
        durations = page.eval_on_selector_all("video", "vs => vs.map(v => v.duration)")
        widths = page.eval_on_selector_all("img", "is => is.map(i => i.naturalWidth)")
        visible_before = page.eval_on_selector_all(
            "#frame-images img", "is => is.filter(i => !i.hidden).map(i => i.dataset.frame)"
        )
        page.fill("#frame-slider", "3")
        page.dispatch_event("#frame-slider", "input")
        visible_after = page.eval_on_selector_all(
            "#frame-images img", "is => is.filter(i => i.offsetWidth > 0).map(i => i.dataset.frame)"
        )
        label = page.inner_text("#frame-label")
        browser.close()
    assert problems == []
    assert durations == [pytest.approx(N_FRAMES / FPS, abs=0.25)] * 2
    strip_width = min(STRIP_WIDTH_PX, 5 * WIDTH)
    assert widths == [strip_width] * N_FRAMES + [32] * 3  # the strip, then 3 stage previews
    assert visible_before == ["0"] and visible_after == ["3"]
    assert label == "frame 3 of 5, PSNR 39.0 dB"


def test_summary_json_carries_the_verdicts(run, tmp_path, local_store):
    artifacts, _, result = run
    result.report.CopyFrom(write_report(artifacts, result))
    export_run(artifacts, result, tmp_path / "out", StoreConfig(url=local_store.root.as_uri()))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["verdict"]["level"] == "warn"
    assert summary["verdict"]["headline"] == "Usable with care: 1 warning(s) (fit psnr_min)"
    [worst] = [v for v in summary["verdict"]["verdicts"] if v["level"] != "pass"]
    assert (worst["figure"], worst["value"]) == ("psnr_min", 22.0)
    assert summary["fit"]["psnr_min"] == 22.0  # the stages' figures as before
