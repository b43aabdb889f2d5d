"""UniMatch adapter: its pure parts always; the model itself against the real unimatch sources in
../shared/third_party (it has no PyPI release: users clone autonomousvision/unimatch and put the
clone on PYTHONPATH)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.artifacts import Artifacts
from services.common.errors import FailedPreconditionError
from services.common.video import store_frames
from services.flow.backends import unimatch
from services.flow.backends.base import Pads, crop_flow, pad_frames, pads_for
from services.flow.engine import FlowConfig, compute_flow
from services.flow.stage import run_flow
from tests.third_party import needs_package

needs_unimatch = needs_package("unimatch")
UNIMATCH_READY, UNIMATCH_DETAIL = unimatch.availability()
FRAMES_THW3 = np.random.default_rng(0).integers(0, 256, (2, 50, 70, 3)).astype(np.uint8)


def test_pads_reach_the_size_multiple_centred_and_crop_back():
    assert pads_for(480, 854, 32) == Pads(0, 0, 5, 5)  # 480 x 864
    assert pads_for(50, 70, 32) == Pads(7, 7, 13, 13)  # 64 x 96
    assert pads_for(64, 96, 32) == Pads(0, 0, 0, 0)
    assert pads_for(60, 90, 8, min_side=128) == Pads(34, 34, 19, 19)
    padded = pad_frames(FRAMES_THW3, pads_for(50, 70, 32))
    assert padded.shape == (2, 64, 96, 3)
    np.testing.assert_array_equal(padded[:, 7:57, 13:83], FRAMES_THW3)
    np.testing.assert_array_equal(padded[:, :7, 13:83], np.repeat(FRAMES_THW3[:, :1], 7, axis=1))
    flow_bhw2 = np.arange(2 * 64 * 96 * 2, dtype=np.float32).reshape(2, 64, 96, 2)
    np.testing.assert_array_equal(
        crop_flow(flow_bhw2, pads_for(50, 70, 32)), flow_bhw2[:, 7:57, 13:83]
    )


def test_arguments_are_those_of_gmflow_scale2_regrefine6():
    # scripts/gmflow_demo.sh: --num_scales 2 --upsample_factor 4 --reg_refine; main_flow.py
    # defaults for the rest (128 channels, 1 head, ffn x4, 6 transformer layers).
    assert unimatch.model_kwargs() == {
        "feature_channels": 128,
        "num_scales": 2,
        "upsample_factor": 4,
        "num_head": 1,
        "ffn_dim_expansion": 4,
        "num_transformer_layers": 6,
        "reg_refine": True,
        "task": "flow",
    }
    # --attn_splits_list 2 8 --corr_radius_list -1 4 --prop_radius_list -1 1 --num_reg_refine 6
    assert unimatch.forward_kwargs() == {
        "attn_type": "swin",
        "attn_splits_list": [2, 8],
        "corr_radius_list": [-1, 4],
        "prop_radius_list": [-1, 1],
        "num_reg_refine": 6,
        "task": "flow",
        "pred_bidir_flow": False,
    }


def test_checkpoint_tensors_are_found_under_model_or_at_the_top():
    tensors = {"backbone.conv1.weight": torch.zeros(1)}
    assert unimatch.state_dict_of({"model": tensors, "step": 5}) is tensors
    assert unimatch.state_dict_of(tensors) is tensors


@pytest.mark.skipif(UNIMATCH_READY, reason="the unimatch package is importable here")
def test_missing_package_is_a_precondition_saying_how_to_install():
    with pytest.raises(FailedPreconditionError, match="unimatch package: git clone .*PYTHONPATH"):
        compute_flow(FRAMES_THW3, FlowConfig(backend="unimatch", unimatch_checkpoint=None))


@needs_unimatch
def test_missing_checkpoint_is_a_precondition_naming_the_file(tmp_path):
    missing = tmp_path / "gmflow.pth"
    cfg = FlowConfig(backend="unimatch", unimatch_checkpoint=missing)
    with pytest.raises(
        FailedPreconditionError, match=f"unimatch_checkpoint: no weights .*{missing}"
    ):
        compute_flow(FRAMES_THW3, cfg)


@needs_unimatch
@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
def test_unimatch_runs_from_a_checkpoint_and_matches_a_direct_call(tmp_path, portrait):
    from unimatch.unimatch import UniMatch

    frames_thw3 = FRAMES_THW3.transpose(0, 2, 1, 3).copy() if portrait else FRAMES_THW3
    height, width = frames_thw3.shape[1:3]
    pads = pads_for(height, width, 32)
    torch.manual_seed(0)
    net = UniMatch(**unimatch.model_kwargs()).eval()
    path = tmp_path / "gmflow-random.pth"
    torch.save({"model": net.state_dict(), "step": 0}, path)  # UniMatch's checkpoint format
    result = compute_flow(frames_thw3, FlowConfig(backend="unimatch", unimatch_checkpoint=path))
    pair = result.pairs[0]
    assert pair.flow_fwd_hw2.shape == (height, width, 2) and np.isfinite(pair.flow_fwd_hw2).all()

    def direct(src_hw3: np.ndarray, dst_hw3: np.ndarray) -> np.ndarray:
        def prepare(image_hw3: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(image_hw3).permute(2, 0, 1)[None].float()
            edges = (pads.left, pads.right, pads.top, pads.bottom)
            return torch.nn.functional.pad(x, edges, mode="replicate")

        with torch.inference_mode():
            out = net(prepare(src_hw3), prepare(dst_hw3), **unimatch.forward_kwargs())
        flow_2hw = out["flow_preds"][-1][0, :, pads.top : pads.top + height]
        return flow_2hw[:, :, pads.left : pads.left + width].permute(1, 2, 0).numpy()

    np.testing.assert_allclose(pair.flow_fwd_hw2, direct(*frames_thw3), atol=1e-3)
    np.testing.assert_allclose(pair.flow_bwd_hw2, direct(*frames_thw3[::-1]), atol=1e-3)


@needs_unimatch
def test_a_checkpoint_replaced_at_the_same_path_is_not_answered_from_the_store(
    tmp_path, local_store
):
    """The flow stage's key holds the checkpoint's content, not only its path: the same file
    again is answered from the store, a new file at the same path is computed anew."""
    from unimatch.unimatch import UniMatch

    artifacts = Artifacts(local_store)
    video = store_frames(artifacts, FRAMES_THW3, 10.0)
    path = tmp_path / "gmflow.pth"
    config = FlowConfig(backend="unimatch", unimatch_checkpoint=path)
    results = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        torch.save({"model": UniMatch(**unimatch.model_kwargs()).state_dict()}, path)
        results.append(run_flow(artifacts, video, config))
    first, same, replaced = results
    assert not first.cached and same.cached and same.key == first.key
    assert not replaced.cached and replaced.key != first.key


@needs_unimatch
def test_batches_are_cut_below_cudnns_32_bit_limit(tmp_path):
    """The radius-4 local matching samples batch x 128 x cells/16 x 81 values; cuDNN refused a
    batch of 8 at 854x480 on an H200 (2.15e9 > 2**31 elements), so at most 7 go together."""
    from unimatch.unimatch import UniMatch

    path = tmp_path / "gmflow-random.pth"
    torch.save({"model": UniMatch(**unimatch.model_kwargs()).state_dict()}, path)
    backend = unimatch.UniMatchBackend(path, "cpu")
    assert backend.max_items(480, 854) == 7  # padded 864 x 480: 216 x 120 cells at 1/4
    assert 7 * 128 * 81 * 216 * 120 < 2**31 < 8 * 128 * 81 * 216 * 120
    assert backend.max_items(50, 70) == (2**31 - 1) // (128 * 81 * 16 * 24)


@needs_unimatch
def test_a_checkpoint_lacking_tensors_is_refused(tmp_path):
    path = tmp_path / "partial.pth"
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
    with pytest.raises(FailedPreconditionError, match="does not fit gmflow-scale2-regrefine6"):
        compute_flow(FRAMES_THW3, FlowConfig(backend="unimatch", unimatch_checkpoint=path))
