"""The MASt3R adapter's pure parts (the package and its weights are not installed here)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.errors import FailedPreconditionError
from services.depth.backends.mast3r import (
    INSTALL_HINT,
    Mast3rSettings,
    anchor_grid,
    confidence_from_mast3r,
    load_checkpoint,
    nearest_anchor_mask,
    parse_model_spec,
    scene_graph_name,
    settings_ladder,
)
from services.depth.engine import DepthConfig, estimate_depth

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
