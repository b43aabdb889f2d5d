"""The MASt3R adapter: its pure parts, then the whole depth stage on the real MASt3R code with a
tiny random-initialised model saved in the released checkpoint format."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from services.common.errors import FailedPreconditionError
from services.depth.backends.mast3r import (
    INSTALL_HINT,
    Mast3rBackend,
    Mast3rSettings,
    anchor_grid,
    confidence_from_mast3r,
    load_checkpoint,
    nearest_anchor_mask,
    parse_model_spec,
    scene_graph_name,
    settings_ladder,
)
from services.depth.engine import DepthConfig, DepthRuntime, estimate_depth
from services.depth.quality import ARTEFACT_LIMIT, periodic_artefact_score
from services.synthetic.scene import SceneConfig, make_scene
from tests.depth_flow import flow_for_depth
from tests.third_party import needs_package

needs_mast3r = needs_package("mast3r")  # puts the real sources on sys.path where present

# The model description MASt3R's released checkpoint stores in args.model (train.py's format).
SPEC = (
    "AsymmetricMASt3R(enc_depth=24, dec_depth=12, enc_embed_dim=1024, dec_embed_dim=768, "
    "enc_num_heads=16, dec_num_heads=12, pos_embed='RoPE100', "
    "patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), head_type='catmlp+dpt', "
    "output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "two_confs=True, desc_conf_mode=('exp', 0, inf))"
)


def test_model_spec_is_parsed_not_evaluated():
    kwargs = parse_model_spec(SPEC)
    assert kwargs["depth_mode"] == ("exp", -float("inf"), float("inf"))
    assert kwargs["img_size"] == (512, 512) and kwargs["two_confs"] is True
    assert kwargs["patch_embed_cls"] == "PatchEmbedDust3R"  # inference embedding, as upstream
    assert kwargs["landscape_only"] is False
    for bad in ("__import__('os').system('true')", "AsymmetricMASt3R(x=open('f'))", "1 + 2"):
        with pytest.raises(FailedPreconditionError, match="not a plain"):
            parse_model_spec(bad)


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(FailedPreconditionError, match="mast3r_checkpoint is not set") as err:
        load_checkpoint(None)
    assert err.value.reason == "WEIGHTS_MISSING"
    with pytest.raises(FailedPreconditionError, match="MASt3R_ViTLarge_BaseDecoder_512") as err:
        load_checkpoint(tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in str(err.value)


class _Opaque:  # an object weights_only loading refuses to rebuild
    pass


def test_checkpoint_loads_with_weights_only(tmp_path: Path):
    path = tmp_path / "tiny.pth"
    state = {"model": {"w": torch.ones(2)}}
    torch.save({"args": argparse.Namespace(model=SPEC), **state}, path)
    loaded = load_checkpoint(path)
    assert loaded["args"].model == SPEC and torch.equal(loaded["model"]["w"], torch.ones(2))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"args": _Opaque(), **state}, unsafe)
    with pytest.raises(FailedPreconditionError, match="mast3r_trust_checkpoint"):
        load_checkpoint(unsafe)
    assert isinstance(load_checkpoint(unsafe, trust=True)["args"], _Opaque)


def test_anchor_grid_keeps_rows_and_columns():
    height, width, s = 48, 80, 8  # 6 rows x 10 columns of anchors
    grid = np.arange(60, dtype=np.float32).reshape(6, 10)
    np.testing.assert_array_equal(anchor_grid(grid.ravel(), height, width, s), grid)
    with pytest.raises(ValueError, match="6x10"):
        anchor_grid(np.zeros(61), height, width, s)
    # A transposed (W, H) reading of the same values has the wrong count for a non-square grid.
    with pytest.raises(ValueError):
        anchor_grid(grid.ravel(), width, height + 16, s)


def test_nearest_anchor_mask_marks_the_block_of_a_bad_anchor():
    bad = np.zeros((6, 10), bool)
    bad[2, 3] = True
    mask = nearest_anchor_mask(bad, 48, 80, 8)
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (16, 23, 24, 31)


def test_settings_ladder_gets_safer():
    first = Mast3rSettings()
    ladder = settings_ladder(first)
    assert ladder[0] == first and scene_graph_name(first) == "logwin-3-noncyclic"
    assert scene_graph_name(ladder[1]) == "swin-1-noncyclic"
    assert ladder[2].subsample == 16 and ladder[2].opt_depth is False
    assert len(settings_ladder(ladder[1])) == 2  # no repeated step


def test_confidence_mapping():
    np.testing.assert_allclose(
        confidence_from_mast3r(np.array([1.0, 2.0, 10.0, np.nan])), [0.0, 0.5, 0.9, 0.0]
    )


@pytest.mark.skipif(
    importlib.util.find_spec("mast3r") is not None, reason="the mast3r package is installed"
)
def test_engine_without_the_package_says_what_to_install():
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(FailedPreconditionError) as err:
        estimate_depth(frames, DepthConfig(backend="mast3r"))
    assert str(err.value) == INSTALL_HINT and err.value.reason == "PACKAGE_MISSING"


# --- Against the real MASt3R code (../shared/third_party/mast3r), on the CPU --------------------

# The real class with a tiny encoder and decoder (the head needs a decoder deeper than 9 blocks).
TINY_SPEC = (
    "AsymmetricMASt3R(enc_depth=1, dec_depth=10, enc_embed_dim=32, dec_embed_dim=32, "
    "enc_num_heads=2, dec_num_heads=2, pos_embed='RoPE100', "
    "patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), head_type='catmlp+dpt', "
    "output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), "
    "two_confs=True, desc_conf_mode=('exp', 0, inf))"
)
FAST = dict(mast3r_long_side=96, mast3r_niter=15, mast3r_scene_graph="swin", mast3r_winsize=1)


def _tiny_mast3r(seed: int):
    from services.common.torchvision_ops import import_beside_cpu_torch

    model_class = import_beside_cpu_torch("mast3r.model").AsymmetricMASt3R
    torch.manual_seed(seed)
    return model_class(**parse_model_spec(TINY_SPEC)).eval()


def _save_like_train_py(net, path: Path, spec: str = TINY_SPEC) -> Path:
    """MASt3R's train.py format: the argparse namespace (model constructor string) + tensors."""
    args = argparse.Namespace(model=spec, lr=1e-4, epochs=2, output_dir="/tmp/out")
    torch.save({"args": args, "model": net.state_dict(), "epoch": 1, "best_so_far": 0.5}, path)
    return path


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return _save_like_train_py(_tiny_mast3r(0), tmp_path_factory.mktemp("mast3r") / "tiny.pth")


@needs_mast3r
def test_real_checkpoint_loads_safely_and_whole(tiny_checkpoint, tmp_path):
    backend = Mast3rBackend(tiny_checkpoint, "cpu")
    saved = load_checkpoint(tiny_checkpoint)["model"]
    loaded = backend.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # The constructor string is parsed, never run: a hostile one is refused and has no effect.
    marker = tmp_path / "ran"
    hostile = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    path = _save_like_train_py(backend.model, tmp_path / "hostile.pth", spec=hostile)
    with pytest.raises(FailedPreconditionError, match="not a plain AsymmetricMASt3R"):
        Mast3rBackend(path, "cpu")
    assert not marker.exists()


@needs_mast3r
@pytest.mark.parametrize(
    "height, width, subsample", [(60, 90, 8), (90, 60, 4), (60, 90, 2)], ids=str
)
def test_whole_depth_stage_on_real_mast3r_keeps_orientation(
    tiny_checkpoint, height, width, subsample
):
    scene = make_scene(SceneConfig(height=height, width=width, n_frames=3))
    cfg = DepthConfig(
        backend="mast3r",
        mast3r_checkpoint=tiny_checkpoint,
        subsample=subsample,
        window=3,
        overlap=1,
        **FAST,
    )
    result = estimate_depth(scene.frames_thw3, cfg, DepthRuntime(device="cpu"))
    assert result.depth_thw.shape == result.confidence_thw.shape == (3, height, width)
    work_h, work_w = result.work_hw
    assert (work_h > work_w) == (height > width) and max(result.work_hw) == 96
    assert np.all(np.isfinite(result.depth_thw)) and np.all(result.depth_thw > 0)
    # MASt3R puts the principal point at the image centre: swapped sides would show here.
    _fx, _fy, cx, cy = result.intrinsics
    assert cx == pytest.approx((width - 1) / 2, abs=1.0)
    assert cy == pytest.approx((height - 1) / 2, abs=1.0)
    assert result.c2w_t44 is not None and result.c2w_t44.shape == (3, 4, 4)
    assert result.quality.artefact_period_px == pytest.approx(subsample * width / work_w)
    # A random ViT's own dense depth repeats with its 16-px patches (a harmonic at period 8);
    # the stage may keep that, but must add no block pattern of its own (nearest-anchor blocks
    # score 30-100 here).
    frames_work = [cv2.resize(f, (work_w, work_h)) for f in scene.frames_thw3]
    backend = Mast3rBackend(tiny_checkpoint, "cpu")
    network = max(periodic_artefact_score(backend.dense_depth(f), subsample) for f in frames_work)
    assert result.quality.periodic_artefact < max(ARTEFACT_LIMIT, 1.25 * network)


@needs_mast3r
def test_non_positive_depths_are_re_run_not_raised(tmp_path):
    """A model that puts every point at depth 0: the real sparse_ga stops on its
    `core_depth > 0` assertion in every attempt; the stage re-runs, then falls back, never
    raises."""
    net = _tiny_mast3r(1)
    for head in (net.downstream_head1, net.downstream_head2):
        last = head.dpt.head[-1]  # 1x1 conv to (x, y, z, confidence)
        with torch.no_grad():
            last.weight[2].zero_()
            last.bias[2] = 0.0
    path = _save_like_train_py(net, tmp_path / "behind.pth")
    scene = make_scene(SceneConfig(height=60, width=90, n_frames=3))
    cfg = DepthConfig(backend="mast3r", mast3r_checkpoint=path, window=3, overlap=1, **FAST)
    result = estimate_depth(
        scene.frames_thw3,
        cfg,
        DepthRuntime(device="cpu"),
        flow=flow_for_depth(scene.frames_thw3, cfg),
    )
    assert result.depth_thw.shape == (3, 60, 90) and np.all(result.depth_thw > 0)
    assertions = [r for r in result.repairs if "stopped on an assertion" in r]
    assert len(assertions) == len(settings_ladder(Mast3rSettings(scene_graph="swin", winsize=1)))
    assert any("every MASt3R attempt failed; used the offline backend" in r for r in result.repairs)
