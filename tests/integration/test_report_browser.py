"""The HTML report in headless Chromium: loads without console errors and its videos play."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from gflow.v1 import common_pb2, pipeline_pb2
from services.common.artifacts import Artifacts
from services.common.media import write_mp4
from services.common.preview import colorize, encode_png
from services.common.stage import StageOutputs
from services.pipeline.report import line_plot_svg, path_plot_svg, render_report_html

CHROMIUM = shutil.which("chromium")


def _stage(artifacts: Artifacts, stage: str, with_video: bool) -> common_pb2.StageResult:
    out = StageOutputs(artifacts, stage, "test-backend", f"{stage}/k")
    rng = np.random.default_rng(0)
    out.file("preview", encode_png(colorize(rng.random((24, 32)))), "image/png", ".png")
    if with_video:
        frames = (rng.random((6, 24, 32, 3)) * 255).astype(np.uint8)
        out.file("render_video", write_mp4(frames, fps=5), "video/mp4", ".mp4")
    out.figure("psnr_mean", 31.5, "dB")
    out.report(
        {
            "series": {"psnr": [30.0, 31.0, float("nan"), 33.0]},
            "camera_path_xz": [[0, 0], [0.1, 0.2], [0.2, 0.5]] if with_video else [],
        }
    )
    return out.result


@pytest.fixture
def report_html(local_store) -> str:
    artifacts = Artifacts(local_store)
    result = pipeline_pb2.PipelineResult(
        video=common_pb2.VideoRef(height=24, width=32, fps=5, frame_count=6, content_hash="ab" * 8),
        flow=_stage(artifacts, "flow", False),
        depth=_stage(artifacts, "depth", False),
        segment=_stage(artifacts, "segment", False),
        fit=_stage(artifacts, "fit", True),
    )
    return render_report_html(artifacts, result)


def test_plots_handle_empty_and_nan_series():
    assert "no values" in line_plot_svg([], "psnr")
    assert "no values" in line_plot_svg([float("nan")], "psnr")
    assert line_plot_svg([1.0, float("nan"), 3.0], "psnr").count("<circle") == 2
    assert "no cameras" in path_plot_svg([], "path")


def test_report_is_self_contained(report_html):
    assert 'src="http' not in report_html and 'href="http' not in report_html
    assert report_html.count("<video") == 1 and report_html.count("<img") == 4
    assert "psnr_mean" in report_html


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
            "Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 1)",
            timeout=15000,
        )
        durations = page.eval_on_selector_all("video", "vs => vs.map(v => v.duration)")
        widths = page.eval_on_selector_all("img", "is => is.map(i => i.naturalWidth)")
        browser.close()
    assert problems == []
    assert len(durations) == 1 and durations[0] == pytest.approx(6 / 5, abs=0.25)
    assert widths == [32] * 4
