"""`gflow view` for real: start it on a run folder, open it in headless Chromium, wait for the
scene to arrive over the websocket, and check the canvas is drawn and changes with the slider."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.common.artifacts import Artifacts
from services.common.errors import NotFoundError
from services.common.store import StoreConfig, open_store
from services.ops.seaweedfs import free_port
from services.pipeline.export import export_run
from services.pipeline.report import write_report
from services.pipeline.viewer import (
    frame_points,
    open_run,
    stored_pipeline_result,
    track_segments,
)
from services.synthetic.scene import SceneConfig, make_scene
from tests.integration.synthetic_run import synthetic_run

CHROMIUM = shutil.which("chromium")
N_FRAMES, HEIGHT, WIDTH, STEP_PX = 6, 48, 64, 2


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder (as `gflow run --out` writes it) whose outputs are a synthetic scene's truth."""
    out = tmp_path / "run"
    store_config = StoreConfig(url=(out / "store").resolve().as_uri())
    artifacts = Artifacts(open_store(store_config))
    scene = make_scene(SceneConfig(height=HEIGHT, width=WIDTH, n_frames=N_FRAMES))
    result = synthetic_run(artifacts, scene, step_px=STEP_PX, videos=False)
    result.report.CopyFrom(write_report(artifacts, result))
    export_run(artifacts, result, out, store_config)
    return out


def test_frames_are_read_with_truth_colours_and_motion(local_store):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig(height=HEIGHT, width=WIDTH, n_frames=N_FRAMES))
    run = open_run(artifacts, synthetic_run(artifacts, scene, step_px=STEP_PX, videos=False))
    grid = (slice(0, HEIGHT, STEP_PX), slice(0, WIDTH, STEP_PX))
    for t in (0, N_FRAMES - 1):
        points_n3, rgb_n3, moving_n = frame_points(run, artifacts, t, max_points=10**6)
        # uint8 colours went through the PLY's SH coefficients in float32: exact after rounding
        np.testing.assert_array_equal(rgb_n3, scene.frames_thw3[t][grid].reshape(-1, 3))
        np.testing.assert_array_equal(moving_n, scene.moving_thw[t][grid].ravel())
        assert moving_n.any() and not moving_n.all()
        assert points_n3.shape == ((HEIGHT // STEP_PX) * (WIDTH // STEP_PX), 3)
    thinned = frame_points(run, artifacts, 0, max_points=100)[0]
    assert thinned.shape == (100, 3)
    segments_m23 = track_segments(run.tracks_nt3, run.alive_nt, 2)
    visible_both = ~scene.occluded_nt[:, :2] & ~scene.occluded_nt[:, 1:3]
    assert len(segments_m23) == visible_both.sum()
    assert len(track_segments(run.tracks_nt3, run.alive_nt, 0)) == 0


def _wait_http(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"viewer did not answer at {url} in {timeout_s} s")


def _canvas_rgb(page) -> np.ndarray:
    png = page.locator("canvas").first.screenshot()
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR).astype(np.int16)


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)"
)
def test_viewer_draws_the_run_and_follows_the_slider(run_dir):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    port = free_port()
    gflow = Path(sys.executable).with_name("gflow")
    process = subprocess.Popen(
        [str(gflow), "view", str(run_dir), "--port", str(port), "--seconds", "300"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url, process, timeout_s=120)
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
            )
            page = browser.new_page(viewport={"width": 900, "height": 600})
            page.goto(url)
            page.get_by_text("Connected").wait_for(timeout=60000)  # the websocket is up
            page.get_by_text("frames per second").wait_for(timeout=60000)  # GUI arrived
            page.wait_for_timeout(3000)  # scene messages applied and drawn
            before = _canvas_rgb(page)
            page.wait_for_timeout(1000)
            still = _canvas_rgb(page)
            page.get_by_role("slider").first.focus()
            page.keyboard.press("End")  # the frame slider to the last frame
            page.wait_for_timeout(3000)
            after = _canvas_rgb(page)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    distinct = len(np.unique(before.reshape(-1, 3), axis=0))
    assert before.std() > 10 and distinct > 50, "canvas is blank"
    idle_share = _changed_share(before, still)
    moved_share = _changed_share(before, after)
    assert idle_share < 0.001, f"{idle_share:.2%} of the canvas changed with nothing moved"
    assert moved_share > 0.01, f"only {moved_share:.2%} of the canvas changed with the slider"


def _changed_share(a_hw3: np.ndarray, b_hw3: np.ndarray) -> float:
    """Share of pixels where some channel differs by more than 30 of 255."""
    return float((np.abs(a_hw3 - b_hw3).max(axis=2) > 30).mean())


def test_a_run_opens_from_the_store_by_its_report_key(local_store):
    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig(height=HEIGHT, width=WIDTH, n_frames=N_FRAMES))
    result = synthetic_run(artifacts, scene, step_px=8, videos=False)
    report = write_report(artifacts, result)
    folder = report.key.removesuffix("/report.html")
    for key in (report.key, folder, folder + "/"):
        assert stored_pipeline_result(artifacts, key) == result
    with pytest.raises(NotFoundError, match="report key"):
        stored_pipeline_result(artifacts, "report/nothing-here")


def test_slider_play_and_colour_drive_what_is_sent(local_store):
    import viser

    from services.pipeline.viewer import MOVING_RGB, STILL_RGB, Viewer

    artifacts = Artifacts(local_store)
    scene = make_scene(SceneConfig(height=HEIGHT, width=WIDTH, n_frames=N_FRAMES))
    run = open_run(artifacts, synthetic_run(artifacts, scene, step_px=STEP_PX, videos=False))
    server = viser.ViserServer(host="127.0.0.1", port=free_port(), verbose=False)
    try:
        viewer = Viewer(server, run, artifacts, max_points=10**6)
        viewer.show(0)
        viewer.step()  # play is off: stays
        assert viewer.shown == 0
        viewer.play.value = True
        viewer.step()
        assert (viewer.slider.value, viewer.shown) == (1, 1)
        points_n3, rgb_n3, moving_n = frame_points(run, artifacts, 1, 10**6)
        np.testing.assert_allclose(viewer.cloud.points, points_n3, rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(viewer.cloud.colors, rgb_n3)
        viewer.colour.value = "still / moving"
        expected = np.where(moving_n[:, None], MOVING_RGB, STILL_RGB)
        np.testing.assert_array_equal(viewer.cloud.colors, expected)
        for _ in range(N_FRAMES - 1):
            viewer.step()
        assert viewer.shown == 0  # play wraps around
    finally:
        server.stop()
