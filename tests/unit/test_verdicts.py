"""Verdict rules: each fires at its documented bounds, the headline says the worst, and the
camera-jump figures find a jump put into a synthetic camera path (and none in the clean one)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from services.common.geometry import rotation_33
from services.pipeline.verdicts import INFORMATIONAL, RULES, judge_run, path_figures
from services.synthetic.scene import SceneConfig, make_scene
from tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize(
    ("stage", "figure", "value", "level"),
    [
        ("flow", "fb_consistent_share", 0.92, "pass"),
        ("flow", "fb_consistent_share", 0.7, "warn"),
        ("flow", "fb_consistent_share", 0.5, "fail"),
        ("flow", "fb_error_mean", 0.15, "pass"),
        ("flow", "fb_error_mean", 2.0, "warn"),
        ("flow", "fb_error_mean", 5.0, "fail"),
        ("depth", "nonpositive_share", 0.0, "pass"),
        ("depth", "nonpositive_share", 0.01, "warn"),
        ("depth", "nonpositive_share", 0.2, "fail"),
        ("depth", "prior_share", 0.0, "pass"),
        ("depth", "prior_share", 0.25, "warn"),
        ("depth", "prior_share", 1.0, "fail"),
        ("depth", "scale_drift", 0.03, "pass"),
        ("depth", "scale_drift", 0.2, "warn"),
        ("depth", "scale_drift", 0.5, "fail"),
        ("depth", "periodic_artefact", 1.3, "pass"),
        ("depth", "periodic_artefact", 4.0, "warn"),
        ("depth", "periodic_artefact", 12.0, "fail"),
        ("segment", "moving_share_mean", 0.05, "pass"),
        ("segment", "moving_share_mean", 0.4, "warn"),
        ("segment", "moving_share_mean", 0.7, "fail"),
        ("segment", "degenerate_frames", 0, "pass"),
        ("segment", "degenerate_frames", 2, "warn"),
        ("fit", "psnr_mean", 36.0, "pass"),
        ("fit", "psnr_mean", math.inf, "pass"),
        ("fit", "psnr_mean", 27.0, "warn"),
        ("fit", "psnr_mean", 20.0, "fail"),
        ("fit", "psnr_min", 33.0, "pass"),
        ("fit", "psnr_min", 22.0, "warn"),
        ("fit", "psnr_min", 15.0, "fail"),
        ("fit", "frames_short_of_gaussians", 0, "pass"),
        ("fit", "frames_short_of_gaussians", 3, "warn"),
        ("fit", "depth_prior_scale_clipped_frames", 0, "pass"),
        ("fit", "depth_prior_scale_clipped_frames", 2, "warn"),
        ("fit", "moving_share_mean", 0.2, "pass"),
        ("fit", "moving_share_mean", 0.6, "warn"),
        ("fit", "moving_share_mean", 0.9, "fail"),
        ("fit", "camera_jump_translation", 1.5, "pass"),
        ("fit", "camera_jump_translation", 5.0, "warn"),
        ("fit", "camera_jump_translation", 20.0, "fail"),
        ("fit", "camera_jump_rotation", 1.5, "pass"),
        ("fit", "camera_jump_rotation", 5.0, "warn"),
        ("fit", "camera_jump_rotation", 20.0, "fail"),
    ],
)
def test_each_rule_fires_at_its_bounds(stage, figure, value, level):
    [verdict] = judge_run({stage: {figure: value}}).verdicts
    assert (verdict.stage, verdict.figure, verdict.level) == (stage, figure, level)
    assert verdict.reason and "\n" not in verdict.reason
    assert bool(verdict.fix) == (level != "pass")


def test_rotation_only_depth_headline_says_do_not_trust():
    verdict = judge_run(
        {"depth": {"prior_share": 1.0, "scale_drift": 0.01}, "flow": {"fb_error_mean": 2.0}}
    )
    assert verdict.level == "fail"
    assert verdict.headline == ("Do not trust this run: 1 failed (depth prior_share), 1 warning(s)")
    prior = next(v for v in verdict.verdicts if v.figure == "prior_share")
    assert "100% of frames" in prior.reason and "mast3r" in prior.fix
    assert verdict.lines()[1].startswith("  fail depth.prior_share = 1: depth is the smooth prior")


def test_mask_stability_is_judged_only_for_masks_of_some_size():
    # The clip: 21 % marked moving; flickering masks there are noise, not motion.
    flicker = judge_run({"segment": {"moving_share_mean": 0.21, "temporal_iou_mean": 0.3}})
    assert [v.level for v in flicker.verdicts] == ["pass", "fail"]
    small = judge_run({"segment": {"moving_share_mean": 0.03, "temporal_iou_mean": 0.3}})
    assert [v.level for v in small.verdicts] == ["pass", "pass"]


def test_worst_frame_is_named_and_not_measured_warns():
    verdict = judge_run({"fit": {"psnr_min": 18.0, "psnr_worst_frame": 7.0}})
    [worst] = verdict.verdicts
    assert worst.level == "fail" and "(frame 7)" in worst.reason
    [drift] = judge_run({"depth": {"scale_drift": float("nan")}}).verdicts
    assert drift.level == "warn" and drift.reason == "scale_drift could not be measured"


def test_informational_figures_pass_silently_and_new_figures_warn():
    verdict = judge_run({"flow": {"seconds": 3.0, "peak_memory": 10.0}})
    assert verdict.verdicts == [] and verdict.level == "pass"
    assert verdict.headline == "Trustworthy: all 0 checks passed"
    [new] = judge_run({"depth": {"sharpness": 0.5}}).verdicts
    assert (new.level, new.reason) == ("warn", "depth.sharpness has no verdict rule")


def test_every_rule_and_informational_figure_is_documented():
    doc = (PROJECT_ROOT / "docs" / "verdicts.md").read_text()
    documented = set(re.findall(r"`(\w+)\.(\w+)`", doc))
    assert {(r.stage, r.figure) for r in RULES} | INFORMATIONAL <= documented


def test_camera_jumps_found_in_a_synthetic_path():
    scene = make_scene(SceneConfig(height=16, width=24, n_frames=12))
    depth = float(np.median(scene.depth_thw))
    clean = path_figures(scene.c2w_t44, depth)
    assert clean["camera_jump_translation"] < 2 and clean["camera_jump_rotation"] < 2
    jumped = scene.c2w_t44.copy()
    steps = np.linalg.norm(np.diff(jumped[:, :3, 3], axis=0), axis=1)
    jumped[6:, :3, 3] += [10 * np.median(steps), 0, 0]  # one step ten times the median
    assert path_figures(jumped, depth)["camera_jump_translation"] == pytest.approx(10, rel=0.15)
    # A still camera: sub-floor noise is no jump; one 5 degree turn is (floor 0.2 deg).
    still = np.tile(np.eye(4), (12, 1, 1))
    still[:, 0, 3] = np.random.default_rng(0).normal(0, 1e-4 * depth, 12)
    assert path_figures(still, depth)["camera_jump_translation"] < 1
    still[6:, :3, :3] = rotation_33("y", np.radians(5.0))
    assert path_figures(still, depth)["camera_jump_rotation"] == pytest.approx(25)
    [verdict] = [
        v
        for v in judge_run({"fit": path_figures(still, depth)}).verdicts
        if v.figure == "camera_jump_rotation"
    ]
    assert verdict.level == "fail"
