"""Verdicts: whether each quality figure of a run can be trusted, and a headline for the run.

A report full of numbers does not tell a user that depth fell back to a flat prior on every
frame, or that a fifth of the picture flickers as "moving". Every figure the stages write gets a
pass / warn / fail rule here, with a one-line reason and the fix; docs/verdicts.md lists the
rules and where their bounds come from. Verdicts judge the output, never the run's exit status:
a run that finished is a run, whatever its verdicts say.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.spatial.transform import Rotation

from services.depth.quality import ARTEFACT_LIMIT

Level = Literal["pass", "warn", "fail"]

# Figures that say how long or how big, not how right: shown, never judged.
INFORMATIONAL = {
    ("flow", "seconds"),
    ("flow", "peak_memory"),
    ("fit", "gaussians_last_frame"),
    ("fit", "seconds_per_frame"),
    ("fit", "psnr_worst_frame"),
}
# Below this mean mask share the masks are small, and their frame-to-frame IoU is mostly their
# edges (a 3 % object at 48x64 px gives 0.2-0.35 with exact motion): stability is not judged.
MIN_MOVING_SHARE_FOR_STABILITY = 0.05
# Camera steps below these are noise, not motion: floors of the median step in the jump ratios.
MIN_STEP_SHARE_OF_DEPTH = 0.005
MIN_STEP_DEG = 0.2


@dataclass(frozen=True)
class Rule:
    """Bounds of one figure: `worse` says which direction is bad; warn/fail are inclusive-bad."""

    stage: str
    figure: str
    worse: Literal["higher", "lower"]
    warn: float
    fail: float
    good: str  # one line for a pass; {value} is the figure
    bad: str  # one line for a warn or fail; {value} is the figure
    fix: str  # what to do about a warn or fail


RULES = (
    Rule(
        stage="flow",
        figure="fb_consistent_share",
        worse="lower",
        warn=0.8,
        fail=0.6,
        good="{value:.0%} of pixels have forward and backward flow that agree",
        bad="only {value:.0%} of pixels have forward and backward flow that agree "
        "(occlusion, blur, textureless areas or motion too large for the flow)",
        fix="use a higher frame rate or smaller steps between frames, or a learned flow backend "
        "(--pipeline.flow.backend raft)",
    ),
    Rule(
        stage="flow",
        figure="fb_error_mean",
        worse="higher",
        warn=1.0,
        fail=3.0,
        good="forward-backward flow error {value:.2f} px on average",
        bad="forward-backward flow error {value:.2f} px on average: the flow is unreliable",
        fix="use a learned flow backend (--pipeline.flow.backend raft) or a higher frame rate",
    ),
    Rule(
        stage="depth",
        figure="nonpositive_share",
        worse="higher",
        warn=0.001,
        fail=0.05,
        good="the depth backend gave finite positive depth almost everywhere",
        bad="{value:.1%} of raw depths were zero, negative or not finite and had to be repaired",
        fix="check the repairs listed under depth; try the other depth backend "
        "(--pipeline.depth.backend)",
    ),
    Rule(
        stage="depth",
        figure="prior_share",
        worse="higher",
        warn=0.1,
        fail=0.5,
        good="depth measured from parallax (smooth prior on {value:.0%} of frames)",
        bad="depth is the smooth prior, not measured, on {value:.0%} of frames: the camera "
        "does not translate there (it rotates or stands still), so there is no parallax",
        fix="use a clip where the camera moves sideways, or the mast3r backend on a GPU "
        "(--pipeline.depth.backend mast3r)",
    ),
    Rule(
        stage="depth",
        figure="scale_drift",
        worse="higher",
        warn=0.1,
        fail=0.3,
        good="depth scale steady: consecutive frames differ by at most {value:.0%}",
        bad="depth scale drifts by up to {value:.0%} between consecutive frames on still pixels",
        fix="use overlapping windows (--pipeline.depth.overlap) or a longer window "
        "(--pipeline.depth.window)",
    ),
    Rule(
        stage="depth",
        figure="periodic_artefact",
        worse="higher",
        warn=ARTEFACT_LIMIT,
        fail=5.0,
        good="no block or stripe pattern in the depth (score {value:.2f})",
        bad="depth shows a block or stripe pattern at the subsample period (score {value:.2f})",
        fix="lower --pipeline.depth.subsample, or check the depth preview for tiling",
    ),
    Rule(
        stage="segment",
        figure="moving_share_mean",
        worse="higher",
        warn=0.35,
        fail=0.5,
        good="{value:.0%} of the picture marked moving on average",
        bad="{value:.0%} of the picture marked moving on average: more than moving things usually "
        "cover; the camera motion model may have failed",
        fix="check the moving video; raise --pipeline.segment.threshold, or send your own masks "
        "(user_masks of SegmentService)",
    ),
    Rule(
        stage="segment",
        figure="temporal_iou_mean",
        worse="lower",
        warn=0.7,
        fail=0.5,
        good="moving masks are stable from frame to frame (IoU {value:.2f})",
        bad="moving masks change a lot from frame to frame (IoU {value:.2f}): flow noise is being "
        "marked as motion",
        fix="raise --pipeline.segment.threshold, or send your own masks "
        "(user_masks of SegmentService)",
    ),
    Rule(
        stage="segment",
        figure="degenerate_frames",
        worse="higher",
        warn=1,
        fail=math.inf,
        good="every frame had a usable camera motion model",
        bad="{value:.0f} frame(s) had no usable camera motion model; "
        "their masks came from neighbours",
        fix="check those frames in the moving video; the flow there may be unreliable",
    ),
    Rule(
        stage="fit",
        figure="psnr_mean",
        worse="lower",
        warn=30.0,
        fail=25.0,
        good="reconstruction matches the input: mean PSNR {value:.1f} dB",
        bad="reconstruction is far from the input: mean PSNR {value:.1f} dB",
        fix="use the default fit preset (more steps), or check the depth and mask verdicts",
    ),
    Rule(
        stage="fit",
        figure="psnr_min",
        worse="lower",
        warn=25.0,
        fail=20.0,
        good="worst frame PSNR {value:.1f} dB",
        bad="worst frame PSNR {value:.1f} dB (frame {worst})",
        fix="look at that frame in the reconstruction strip; fast motion or a cut often causes it",
    ),
    Rule(
        stage="fit",
        figure="frames_short_of_gaussians",
        worse="higher",
        warn=1,
        fail=math.inf,
        good="every frame got the Gaussians its new content needed",
        bad="{value:.0f} frame(s) reached the Gaussian cap: new content there stayed uncovered",
        fix="raise --pipeline.fit.max-points (host memory: 65 bytes per Gaussian per frame)",
    ),
    Rule(
        stage="fit",
        figure="depth_prior_scale_clipped_frames",
        worse="higher",
        warn=1,
        fail=math.inf,
        good="the depth prior's scale stayed within 0.5-2x of the model's on every frame",
        bad="{value:.0f} frame(s): the depth prior drifted beyond 0.5-2x of the model's scale "
        "and was clipped there; its depth and the Gaussians it seeds sit at the wrong distance",
        fix="check the depth verdicts (scale_drift); a depth backend with one scale over the "
        "clip (--pipeline.depth.backend mast3r) avoids it",
    ),
    Rule(
        stage="fit",
        figure="moving_share_mean",
        worse="higher",
        warn=0.5,
        fail=0.8,
        good="{value:.0%} of Gaussians are in the moving set",
        bad="{value:.0%} of Gaussians are in the moving set: "
        "the still background is not held still",
        fix="check the segment verdicts; masks that cover the background cause this",
    ),
    Rule(
        stage="fit",
        figure="camera_jump_translation",
        worse="higher",
        warn=4.0,
        fail=8.0,
        good="camera path is smooth: largest step {value:.1f}x the median step",
        bad="camera path jumps: one step is {value:.1f}x the median step",
        fix="look at the camera path; a cut in the clip or a failed frame causes jumps",
    ),
    Rule(
        stage="fit",
        figure="camera_jump_rotation",
        worse="higher",
        warn=4.0,
        fail=8.0,
        good="camera turns smoothly: largest turn {value:.1f}x the median turn",
        bad="camera rotation jumps: one turn is {value:.1f}x the median turn",
        fix="look at the camera path; a cut in the clip or a failed frame causes jumps",
    ),
)
RULES_BY_FIGURE = {(r.stage, r.figure): r for r in RULES}


@dataclass(frozen=True)
class Verdict:
    stage: str
    figure: str
    value: float
    level: Level
    reason: str
    fix: str  # empty for a pass


@dataclass(frozen=True)
class RunVerdict:
    """Every figure's verdict and the run's headline (the worst level, said in words)."""

    level: Level
    headline: str
    verdicts: list[Verdict]

    def lines(self) -> list[str]:
        """The headline, then one line per failure, then per warning, with its fix (for a
        terminal)."""
        return [self.headline] + [
            f"  {v.level} {v.stage}.{v.figure} = {v.value:.4g}: {v.reason}. Fix: {v.fix}"
            for level in ("fail", "warn")
            for v in self.verdicts
            if v.level == level
        ]

    def to_json(self) -> dict:
        return {
            "level": self.level,
            "headline": self.headline,
            "verdicts": [asdict(v) for v in self.verdicts],
        }


def path_figures(c2w_t44: np.ndarray, scene_depth: float) -> dict[str, float]:
    """Largest camera step (translation, rotation) over the median step, per consecutive frames.

    The median is floored (MIN_STEP_SHARE_OF_DEPTH of the scene depth, MIN_STEP_DEG) so a still
    or slow camera does not turn sensor noise into a jump. Fewer than 3 frames: 1.0 (no jump).
    """
    if len(c2w_t44) < 3:
        return {"camera_jump_translation": 1.0, "camera_jump_rotation": 1.0}
    step_t = np.linalg.norm(np.diff(c2w_t44[:, :3, 3], axis=0), axis=1)
    relative_t33 = np.einsum("tji,tjk->tik", c2w_t44[:-1, :3, :3], c2w_t44[1:, :3, :3])
    turn_deg_t = np.degrees(Rotation.from_matrix(relative_t33).magnitude())
    floor_m = MIN_STEP_SHARE_OF_DEPTH * scene_depth
    return {
        "camera_jump_translation": float(step_t.max() / max(np.median(step_t), floor_m, 1e-12)),
        "camera_jump_rotation": float(turn_deg_t.max() / max(np.median(turn_deg_t), MIN_STEP_DEG)),
    }


def _level(rule: Rule, value: float) -> Level:
    if rule.worse == "higher":
        return "fail" if value > rule.fail else "warn" if value >= rule.warn else "pass"
    return "fail" if value < rule.fail else "warn" if value <= rule.warn else "pass"


def judge_figure(rule: Rule, value: float, figures: dict[str, dict[str, float]]) -> Verdict:
    """One figure's verdict; NaN (not measured) warns, since nothing vouches for that output."""
    stage = figures.get(rule.stage, {})
    if not math.isfinite(value) and not (value == math.inf and rule.worse == "lower"):
        return Verdict(
            rule.stage,
            rule.figure,
            value,
            "warn",
            f"{rule.figure} could not be measured",
            "check this stage's report and repairs",
        )
    if (
        rule.figure == "temporal_iou_mean"
        and stage.get("moving_share_mean", 1.0) < MIN_MOVING_SHARE_FOR_STABILITY
    ):
        return Verdict(
            rule.stage,
            rule.figure,
            value,
            "pass",
            f"moving masks are small (under {MIN_MOVING_SHARE_FOR_STABILITY:.0%} of the picture); "
            "their stability is not judged",
            "",
        )
    level = _level(rule, value)
    text = (rule.good if level == "pass" else rule.bad).format(
        value=value, worst=int(stage.get("psnr_worst_frame", -1))
    )
    return Verdict(rule.stage, rule.figure, value, level, text, "" if level == "pass" else rule.fix)


def judge_run(figures: dict[str, dict[str, float]]) -> RunVerdict:
    """Verdicts for every figure with a rule, in the rules' order; figures with neither a rule
    nor an INFORMATIONAL entry warn, so a new figure cannot slip into reports unjudged."""
    verdicts = [
        judge_figure(rule, figures[rule.stage][rule.figure], figures)
        for rule in RULES
        if rule.figure in figures.get(rule.stage, {})
    ]
    for stage, named in figures.items():
        for name, value in named.items():
            if (stage, name) not in RULES_BY_FIGURE and (stage, name) not in INFORMATIONAL:
                verdicts.append(
                    Verdict(
                        stage,
                        name,
                        value,
                        "warn",
                        f"{stage}.{name} has no verdict rule",
                        "add a rule in services/pipeline/verdicts.py and docs/verdicts.md",
                    )
                )
    return RunVerdict(*_headline(verdicts), verdicts)


def _headline(verdicts: list[Verdict]) -> tuple[Level, str]:
    fails = [v for v in verdicts if v.level == "fail"]
    warns = [v for v in verdicts if v.level == "warn"]

    def names(items: list[Verdict]) -> str:
        return ", ".join(f"{v.stage} {v.figure}" for v in items)

    if fails:
        return "fail", f"Do not trust this run: {len(fails)} failed ({names(fails)})" + (
            f", {len(warns)} warning(s)" if warns else ""
        )
    if warns:
        return "warn", f"Usable with care: {len(warns)} warning(s) ({names(warns)})"
    return "pass", f"Trustworthy: all {len(verdicts)} checks passed"
