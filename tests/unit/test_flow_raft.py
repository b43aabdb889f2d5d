"""RAFT backend end to end on the CPU, from a weights file made here and loaded by the real code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.errors import FailedPreconditionError
from services.flow.backends import raft
from services.flow.engine import FlowConfig, FlowRuntime, compute_flow
from services.synthetic.scene import SceneConfig, make_scene

RAFT_READY, RAFT_DETAIL = raft.availability()
pytestmark = pytest.mark.skipif(not RAFT_READY, reason=f"raft backend unavailable: {RAFT_DETAIL}")

ITERATIONS = 2  # speed: the flow of random weights means nothing, the plumbing does


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small_random.pth"
    torch.save(raft.import_optical_flow().raft_small(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def frames_thw3():
    # 60 x 90: not multiples of 8 and below RAFT's 128 px minimum, so padding is exercised.
    return make_scene(SceneConfig(height=60, width=90, n_frames=2)).frames_thw3


@pytest.fixture(scope="module")
def cfg(weights_path):
    return FlowConfig(backend="raft", raft_weights=weights_path, raft_iterations=ITERATIONS)


@pytest.fixture(scope="module")
def result(frames_thw3, cfg):
    return compute_flow(frames_thw3, cfg)


def _direct_raft_flow(weights_path, src_hw3: np.ndarray, dst_hw3: np.ndarray) -> np.ndarray:
    """The same model called by hand: edge-pad to 128 x 128 centred, scale to [-1, 1], crop."""
    net = raft.import_optical_flow().raft_small(weights=None)
    net.load_state_dict(torch.load(weights_path, weights_only=True))
    net.eval()

    def prepare(image_hw3: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image_hw3).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        return torch.nn.functional.pad(x, (19, 19, 34, 34), mode="replicate")

    with torch.inference_mode():
        flow_12hw = net(prepare(src_hw3), prepare(dst_hw3), num_flow_updates=ITERATIONS)[-1]
    return flow_12hw[0, :, 34:94, 19:109].permute(1, 2, 0).numpy()


def test_raft_runs_end_to_end_from_a_weights_file(weights_path, frames_thw3, result):
    assert (result.backend, result.device) == ("raft", "cpu")
    assert [(p.t0, p.t1) for p in result.pairs] == [(0, 1)]
    first = result.pairs[0]
    assert first.flow_fwd_hw2.shape == (60, 90, 2) and first.flow_fwd_hw2.dtype == np.float32
    assert np.isfinite(first.flow_fwd_hw2).all() and np.isfinite(first.flow_bwd_hw2).all()
    expected_fwd = _direct_raft_flow(weights_path, frames_thw3[0], frames_thw3[1])
    expected_bwd = _direct_raft_flow(weights_path, frames_thw3[1], frames_thw3[0])
    np.testing.assert_allclose(first.flow_fwd_hw2, expected_fwd, atol=1e-3)
    np.testing.assert_allclose(first.flow_bwd_hw2, expected_bwd, atol=1e-3)


def test_a_small_budget_means_smaller_batches_and_the_same_flow(
    weights_path, frames_thw3, cfg, result
):
    backend = raft.RaftBackend("small", weights_path, ITERATIONS, "cpu")
    one_item_gb = (backend.model_bytes + 1.5 * backend.item_bytes(60, 90)) / 2**30
    calls = []
    single = compute_flow(
        frames_thw3,
        cfg,
        FlowRuntime(memory_budget_gb=one_item_gb),
        lambda done, total, message: calls.append(done),
    )
    assert calls == [1, 2]  # one direction per batch
    np.testing.assert_allclose(
        single.pairs[0].flow_fwd_hw2, result.pairs[0].flow_fwd_hw2, atol=1e-3
    )
    np.testing.assert_allclose(
        single.pairs[0].flow_bwd_hw2, result.pairs[0].flow_bwd_hw2, atol=1e-3
    )


def test_memory_estimate_grows_with_the_square_of_the_feature_cells(weights_path):
    backend = raft.RaftBackend("small", weights_path, ITERATIONS, "cpu")
    # 480 x 856 (854 padded): 60 x 107 cells at 1/8, a 1.5 x pyramid of float32 all-pairs.
    cells = 60 * 107
    assert backend.item_bytes(480, 854) == int(1.5 * 4 * cells**2 + 512 * 480 * 856)
    # Measured on this CPU (RSS growth): 365 MiB for one direction, 773 MiB for two.
    assert backend.item_bytes(480, 854) > 400 * 2**20


def test_weights_for_the_other_model_are_refused(tmp_path, frames_thw3):
    path = tmp_path / "raft_large.pth"
    torch.save(raft.import_optical_flow().raft_large(weights=None).state_dict(), path)
    with pytest.raises(FailedPreconditionError, match="raft_weights: .* does not fit .*raft_small"):
        compute_flow(frames_thw3, FlowConfig(backend="raft", raft_weights=path))


def test_unreadable_and_unsafe_weights_files_are_refused(tmp_path, frames_thw3):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FailedPreconditionError, match="not a loadable torch checkpoint"):
        compute_flow(frames_thw3, FlowConfig(backend="raft", raft_weights=garbage))
    pickled_module = tmp_path / "whole_model.pth"  # needs full unpickling: weights_only refuses
    torch.save(raft.import_optical_flow().raft_small(weights=None), pickled_module)
    with pytest.raises(FailedPreconditionError, match="not a loadable torch checkpoint"):
        compute_flow(frames_thw3, FlowConfig(backend="raft", raft_weights=pickled_module))
