"""The fit's named loss terms, densify schedule and typed checkpoint state, against exact values.

A two-frame fit checks that each frame's loss terms come back in the result; the rest builds the
inputs by hand so every expectation is exact.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch

from services.common.errors import IntegrityError
from services.common.geometry import intrinsics_33
from services.evaluation.fit_suite import exact_priors
from services.fit.checkpoint import (
    FORMAT,
    FitCheckpoint,
    FolderCheckpoints,
    inputs_fingerprint,
    pack,
    resumable_state,
    unpack,
)
from services.fit.config import FitConfig, preset
from services.fit.densify import DensifyStrategy
from services.fit.engine import fit
from services.fit.gaussians import Gaussians, mean_depth_hw
from services.fit.losses import (
    TERMS,
    FlowTargets,
    fit_terms,
    photometric_target,
    project_n2,
    term_weights,
    weighted_sum,
)
from services.fit.moments import AdamMoments
from services.fit.result import FitOutputs
from services.synthetic.scene import SceneConfig, make_scene

H, W = 24, 32
K_33 = intrinsics_33(H, W, 60.0)


def _gaussians(n: int = 40) -> Gaussians:
    """n isotropic Gaussians 3-4 units in front of an identity camera, every other one moving."""
    rng = np.random.default_rng(3)
    means_n3 = np.stack(
        [rng.uniform(-1, 1, n), rng.uniform(-0.7, 0.7, n), rng.uniform(3, 4, n)], axis=1
    )
    return Gaussians.create(
        means_n3=torch.tensor(means_n3, dtype=torch.float32),
        scales_n3=torch.full((n, 3), 0.15),
        colors_n3=torch.tensor(rng.uniform(0.1, 0.9, (n, 3)), dtype=torch.float32),
        opacity=0.8,
        moving_n=torch.arange(n) % 2 == 1,
        ids_n=torch.arange(n),
    )


# -- loss terms ---------------------------------------------------------------------------------


def test_loss_terms_are_named_and_exact():
    g = _gaussians()
    w2c_44, K_t = torch.eye(4), torch.tensor(K_33, dtype=torch.float32)
    out = g.render(w2c_44, K_t, W, H, backend="torch")
    prior_hw = mean_depth_hw(out).detach()
    valid_hw = torch.ones(H, W, dtype=torch.bool)
    footprint = 0.01
    anchor_n3 = g.means_n3 + torch.tensor([footprint, 0.0, 0.0])  # one footprint off, in x
    moving_m = torch.nonzero(g.moving_n)[:, 0]
    projected_m2 = project_n2(g.means_n3[moving_m], w2c_44, K_t)[0]
    target_m2 = projected_m2 + torch.tensor([3.0, 4.0])  # 5 px away
    terms = fit_terms(
        out,
        photometric_target(out.rgb_hw3.detach()),
        prior_hw,
        valid_hw,
        g,
        ssim_share=0.2,
        anchor_n3=anchor_n3,
        footprint=footprint,
        flow=FlowTargets(moving_m, target_m2, w2c_44, K_t),
    )
    assert tuple(terms) == TERMS
    assert terms["photometric"].item() == pytest.approx(0.0, abs=1e-6)  # render == target
    assert terms["depth"].item() == 0.0  # rendered depth == prior
    assert terms["isotropic"].item() == 0.0  # spheres
    assert terms["still"].item() == pytest.approx(1.0, rel=1e-4)  # one footprint, squared
    assert terms["flow"].item() == pytest.approx(5.0, rel=1e-5)

    weights = term_weights(preset("default"))
    assert set(weights) == set(TERMS)
    expected = sum(weights[name] * terms[name].item() for name in TERMS)
    assert weighted_sum(terms, weights).item() == pytest.approx(expected, rel=1e-6)

    first_frame = fit_terms(
        out,
        photometric_target(out.rgb_hw3.detach()),
        prior_hw,
        valid_hw,
        g,
        ssim_share=0.2,
        anchor_n3=None,
        footprint=footprint,
        flow=None,
    )
    assert tuple(first_frame) == ("photometric", "depth", "isotropic")


@pytest.fixture
def one_torch_thread():
    """A clip this small fits several times faster on one thread when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_each_frame_reports_its_loss_terms(caplog, one_torch_thread):
    scene = make_scene(SceneConfig(n_frames=2, seed=7))
    with caplog.at_level(logging.INFO, logger="services.fit.engine"):
        result = fit(exact_priors(scene), preset("test"))
    assert list(result.loss_terms) == list(TERMS)
    assert all(v.shape == (2,) for v in result.loss_terms.values())
    # Frame 0 has no still or flow term; frame 1 has all of them.
    assert math.isnan(result.loss_terms["still"][0]) and math.isnan(result.loss_terms["flow"][0])
    assert all(np.isfinite(v[1]) and v[1] >= 0 for v in result.loss_terms.values())
    # Exact priors: the still Gaussians stay within a pixel's footprint, the moving ones project
    # within half a pixel of their flow targets.
    assert result.loss_terms["still"][1] < 0.01 and result.loss_terms["flow"][1] < 0.5
    # The exact prior needs no rescaling: frame 0 defines the scale, frame 1 meets it within 2 %.
    assert result.depth_scale_t.shape == (2,) and result.depth_scale_t[0] == 1.0
    assert abs(result.depth_scale_t[1] - 1.0) < 0.02
    summaries = [r.getMessage() for r in caplog.records if "loss terms" in r.getMessage()]
    assert len(summaries) == 2 and all(name in summaries[1] for name in TERMS)


def test_the_depth_prior_scale_is_re_estimated_or_held(one_torch_thread):
    """A prior 30 % deeper from frame 1 on: re-estimated, its scale meets the model (1 / 1.3);
    held, it stays frame 0's, 1, whatever the prior does."""
    priors = exact_priors(make_scene(SceneConfig(n_frames=3, seed=7)))
    deeper_thw = priors.depth_thw.copy()
    deeper_thw[1:] *= 1.3
    priors = dataclasses.replace(priors, depth_thw=deeper_thw)
    rescaled = fit(priors, preset("test")).depth_scale_t
    held = fit(priors, dataclasses.replace(preset("test"), rescale_depth_prior=False)).depth_scale_t
    assert rescaled[0] == 1.0 and np.allclose(rescaled[1:], 1 / 1.3, atol=0.02)
    assert np.array_equal(held, np.ones(3))


# -- densification schedule ---------------------------------------------------------------------


def test_densify_schedule():
    every_40 = DensifyStrategy(dataclasses.replace(FitConfig(), densify_every=40))
    due = [it for it in range(130) if every_40.is_due(it, first_pass=True)]
    assert due == [0, 40, 80, 120]
    assert [it for it in range(130) if every_40.is_due(it, first_pass=False)] == [40, 80, 120]
    only_first = DensifyStrategy(dataclasses.replace(FitConfig(), densify_every=0))
    assert [it for it in range(50) if only_first.is_due(it, first_pass=True)] == [0]
    assert not any(only_first.is_due(it, first_pass=False) for it in range(50))


def test_densify_picks_uncovered_pixels_and_prunes_faint_gaussians():
    cfg = FitConfig(init_points=10_000, max_points=10_000, densify_max=10_000)
    g = _gaussians()
    out = g.render(torch.eye(4), torch.tensor(K_33, dtype=torch.float32), W, H, backend="torch")
    strategy = DensifyStrategy(cfg)
    rows, cols, others_xy_m2, _ = strategy.pick_pixels(
        out, out.rgb_hw3, np.ones((H, W), bool), len(g), np.random.default_rng(0)
    )
    # A perfect render: only the uncovered pixels are candidates, and all of them are drawn.
    uncovered_hw = out.alpha_hw.numpy() < cfg.densify_alpha
    assert np.array_equal(np.sort(np.flatnonzero(uncovered_hw)), np.sort(rows * W + cols))
    assert len(others_xy_m2) == int((out.radii_n > 0).sum())
    g.opacity_logits_n[:5] = -10.0  # opacity 4.5e-5, below prune_opacity
    assert np.array_equal(strategy.prune(g).ids_n.numpy(), np.arange(5, len(g)))


def test_densify_stops_at_max_points_and_counts_what_it_held_back():
    g = _gaussians()
    out = g.render(torch.eye(4), torch.tensor(K_33, dtype=torch.float32), W, H, backend="torch")
    n_uncovered = int((out.alpha_hw.numpy() < FitConfig().densify_alpha).sum())
    assert n_uncovered > 10
    room = 7  # the cap leaves room for 7 of the uncovered pixels
    cfg = FitConfig(init_points=len(g), max_points=len(g) + room, densify_max=10_000)
    valid_hw = np.ones((H, W), bool)
    rng = np.random.default_rng(0)
    rows, _, _, held_back = DensifyStrategy(cfg).pick_pixels(
        out, out.rgb_hw3, valid_hw, len(g), rng
    )
    assert (len(rows), held_back) == (room, n_uncovered - room)
    # densify_max, not the cap, limits a pass: nothing held back.
    by_pass = dataclasses.replace(cfg, max_points=10_000, densify_max=room)
    rows, _, _, held_back = DensifyStrategy(by_pass).pick_pixels(
        out, out.rgb_hw3, valid_hw, len(g), rng
    )
    assert (len(rows), held_back) == (room, 0)


def test_fit_records_and_warns_where_the_cap_held_densification_back(caplog, one_torch_thread):
    priors = exact_priors(make_scene(SceneConfig(n_frames=3, seed=7)))
    capped = dataclasses.replace(preset("test"), max_points=preset("test").init_points + 50)
    with caplog.at_level(logging.WARNING, logger="services.fit.engine"):
        result = fit(priors, capped)
    capped_t = np.flatnonzero(result.held_back_t)
    assert len(capped_t) > 0 and all(len(f) <= capped.max_points for f in result.frames)
    warnings = [r.getMessage() for r in caplog.records if "max_points" in r.getMessage()]
    assert warnings == [
        f"frame {capped_t[0]}: max_points = {capped.max_points} Gaussians reached; from here on "
        "uncovered and badly fitted pixels get no new Gaussians and the renders degrade (raise "
        "max_points: --pipeline.fit.max-points for gflow run)"
    ]
    # The test preset's own cap leaves room on this clip: nothing held back.
    assert np.array_equal(fit(priors, preset("test")).held_back_t, np.zeros(3))


# -- checkpoint state ---------------------------------------------------------------------------


def _state(fingerprint: str = "abc", n_frames: int = 2) -> FitCheckpoint:
    g = _gaussians(6)
    outputs = FitOutputs()
    for t in range(n_frames):
        outputs.add_frame(
            np.eye(4) * (t + 1),
            g.to_frame(),
            0.5,
            np.full((H, W, 3), 0.5),
            np.full((H, W, 3), 128, np.uint8),
            np.full((H, W), float(t), np.float32),
            np.eye(H, W, dtype=bool),
            held_back=40 * t,
        )
        outputs.depth_scale.append(1.0 + t)
        outputs.add_loss_terms({"photometric": 0.1, "depth": 0.2, "isotropic": 0.3})
    return FitCheckpoint(fingerprint, g, None, outputs, 17, 12.5, {"optimise": 10.0})


def _assert_same(a: FitCheckpoint, b: FitCheckpoint) -> None:
    assert (a.fingerprint, a.next_id, a.seconds, a.phase_seconds) == (
        b.fingerprint,
        b.next_id,
        b.seconds,
        b.phase_seconds,
    )
    for f in dataclasses.fields(Gaussians):
        assert torch.equal(getattr(a.gaussians, f.name), getattr(b.gaussians, f.name))
    for f in dataclasses.fields(FitOutputs):
        if f.name not in ("frames", "loss_terms"):
            assert np.array_equal(getattr(a.outputs, f.name), getattr(b.outputs, f.name)), f.name
    for x, y in zip(a.outputs.frames, b.outputs.frames, strict=True):
        for f in dataclasses.fields(x):
            assert np.array_equal(getattr(x, f.name), getattr(y, f.name))


def test_checkpoint_state_round_trips():
    state = _state()
    loaded = FitCheckpoint.from_bytes(state.to_bytes(), torch.device("cpu"))
    _assert_same(loaded, state)
    assert loaded.outputs.loss_terms["photometric"] == [0.1, 0.1]
    assert all(math.isnan(v) for v in loaded.outputs.loss_terms["flow"])
    assert unpack(state.to_bytes())[1]["format"] == FORMAT == 3


def _stepped_moments(ids: list[int]) -> tuple[Gaussians, AdamMoments]:
    """Gaussians with these ids after two Adam steps, and the optimiser's moments."""
    g = _gaussians(len(ids))
    g.ids_n = torch.tensor(ids)
    optimiser = g.optimiser(1e-2, 1.0)
    for _ in range(2):
        optimiser.zero_grad()
        loss = sum(
            (p * torch.arange(1.0, p.numel() + 1).view_as(p)).sum() for p in g.parameters().values()
        )
        loss.backward()
        optimiser.step()
    return g, AdamMoments.of(optimiser, g)


def test_adam_moments_follow_each_gaussian_by_id():
    old, moments = _stepped_moments([5, 7, 9])
    assert AdamMoments.of(old.optimiser(1e-2, 1.0), old) is None  # no step yet: nothing to keep
    new = _gaussians(3)
    new.ids_n = torch.tensor([9, 11, 5])  # 9 and 5 kept (reordered), 11 is new
    optimiser = new.optimiser(1e-2, 1.0)
    moments.load_into(optimiser, new)
    for group in optimiser.param_groups:
        name, state = group["name"], optimiser.state[group["params"][0]]
        assert float(state["step"]) == 2.0
        for kind in ("exp_avg", "exp_avg_sq"):
            kept = getattr(moments, kind)[name]
            assert torch.equal(state[kind][0], kept[2]) and torch.equal(state[kind][2], kept[0])
            assert not state[kind][1].any() and kept[0].any()


def test_checkpoint_keeps_adam_moments():
    _, moments = _stepped_moments([3, 4, 8, 1])
    state = dataclasses.replace(_state(), moments=moments)
    loaded = FitCheckpoint.from_bytes(state.to_bytes(), torch.device("cpu"))
    _assert_same(loaded, state)
    assert torch.equal(loaded.moments.ids_n, moments.ids_n)
    for kind in ("step", "exp_avg", "exp_avg_sq"):
        for name, tensor in getattr(moments, kind).items():
            assert torch.equal(getattr(loaded.moments, kind)[name], tensor)
    assert FitCheckpoint.from_bytes(_state().to_bytes(), torch.device("cpu")).moments is None


def test_format_1_checkpoint_still_loads():
    """Format 1 (before the loss terms) is format 2 without the loss arrays and the version."""
    state = _state()
    arrays, meta = unpack(state.to_bytes())
    arrays = {k: v for k, v in arrays.items() if not k.startswith("loss_")}
    del meta["format"]
    loaded = FitCheckpoint.from_bytes(pack(arrays, meta), torch.device("cpu"))
    _assert_same(loaded, state)
    assert list(loaded.outputs.loss_terms) == list(TERMS)
    assert all(math.isnan(v) for terms in loaded.outputs.loss_terms.values() for v in terms)


def test_newer_or_incomplete_checkpoints_are_refused_clearly():
    arrays, meta = unpack(_state().to_bytes())
    with pytest.raises(IntegrityError, match="format 4 is newer"):
        FitCheckpoint.from_bytes(pack(arrays, {**meta, "format": 4}), torch.device("cpu"))
    del arrays["c2w_t44"]
    with pytest.raises(IntegrityError, match="lacks 'c2w_t44'"):
        FitCheckpoint.from_bytes(pack(arrays, meta), torch.device("cpu"))


def test_only_a_checkpoint_of_the_same_inputs_resumes(tmp_path, caplog):
    scene = make_scene(SceneConfig(n_frames=2))
    priors, cfg, cpu = exact_priors(scene), preset("test"), torch.device("cpu")
    fingerprint = inputs_fingerprint(priors, cfg, cpu, "torch")
    # The checkpoint interval does not change the fit; the seed and the renderer do.
    assert inputs_fingerprint(
        priors, dataclasses.replace(cfg, checkpoint_every=7), cpu, "torch"
    ) == (fingerprint)
    assert inputs_fingerprint(priors, dataclasses.replace(cfg, seed=1), cpu, "torch") != (
        fingerprint
    )
    assert inputs_fingerprint(priors, cfg, cpu, "gsplat") != fingerprint
    sink = FolderCheckpoints(tmp_path)
    assert resumable_state(sink, fingerprint, cpu) is None
    sink.save(1, _state(fingerprint).to_bytes())
    _assert_same(resumable_state(sink, fingerprint, cpu), _state(fingerprint))
    with caplog.at_level(logging.WARNING):
        assert resumable_state(sink, "other", cpu) is None
    assert "starting over" in caplog.text


def _later_part(full: FitCheckpoint, first: int) -> FitCheckpoint:
    """What the engine saves at the end of `full` when its checkpoints hold frames < first."""
    return dataclasses.replace(full, outputs=full.outputs.since(first), first_frame=first)


def test_checkpoints_hold_each_frame_once_and_resume_joined(tmp_path):
    full, cpu = _state(n_frames=5), torch.device("cpu")
    sink = FolderCheckpoints(tmp_path)
    sink.save(1, _state(n_frames=2).to_bytes())  # frames 0-1, as saved after frame 1
    later = _later_part(full, 2)
    sink.save(4, later.to_bytes())
    arrays, meta = unpack(later.to_bytes())
    assert (meta["first_frame"], meta["frames_done"]) == (2, 5)
    assert not any(k.startswith(("frame0_", "frame1_")) for k in arrays)
    assert "frame4_ids_n" in arrays
    assert len(arrays["psnr_t"]) == 3
    joined = resumable_state(sink, "abc", cpu)
    _assert_same(joined, full)
    assert joined.first_frame == 0 and joined.frames_done == 5
    assert joined.outputs.loss_terms["photometric"] == [0.1] * 5
    assert [frame for frame, _ in sink.load_all()] == [1, 4]


def test_a_gap_in_the_checkpoints_starts_over(tmp_path, caplog):
    sink = FolderCheckpoints(tmp_path)
    sink.save(4, _later_part(_state(n_frames=5), 2).to_bytes())  # frames 0-1 missing
    with caplog.at_level(logging.WARNING):
        assert resumable_state(sink, "abc", torch.device("cpu")) is None
    assert "starts at frame 2, not 0" in caplog.text
    sink.clear()
    assert sink.load_all() == []


def test_a_format_2_checkpoint_of_every_frame_starts_a_chain(tmp_path):
    """Format 2 held every frame so far and no first_frame: it is the first of a chain."""
    full = _state(n_frames=4)
    arrays, meta = unpack(_state(n_frames=2).to_bytes())
    del meta["first_frame"]
    sink = FolderCheckpoints(tmp_path)
    sink.save(1, pack(arrays, {**meta, "format": 2}))
    sink.save(3, _later_part(full, 2).to_bytes())
    _assert_same(resumable_state(sink, "abc", torch.device("cpu")), full)


def test_a_fit_clears_the_checkpoints_it_cannot_resume_from(tmp_path):
    sink = FolderCheckpoints(tmp_path)
    sink.save(6, _state("another fit").to_bytes())
    cfg = preset("test")  # a checkpoint after frames 1 and 3 (every 2 frames, and the last)
    fit(exact_priors(make_scene(SceneConfig(n_frames=4))), cfg, checkpoints=sink)
    stored = sink.load_all()
    assert [frame for frame, _ in stored] == [1, 3]
    fingerprints = {unpack(data)[1]["fingerprint"] for _, data in stored}
    assert len(fingerprints) == 1 and "another fit" not in fingerprints
    assert [unpack(data)[1]["first_frame"] for _, data in stored] == [0, 2]
