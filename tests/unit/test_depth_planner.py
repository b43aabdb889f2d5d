"""Memory planner of the MASt3R depth backend: working sizes, windows, budgets."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgumentError, ResourceExhaustedError
from services.depth.planner import (
    CostModel,
    estimate_peak_bytes,
    pairs_per_frame,
    plan_memory,
    window_spans,
    working_size,
)

GiB = 2**30


@pytest.mark.parametrize(
    ("height", "width", "long_side", "expected"),
    [
        (480, 854, 512, (288, 512)),  # DAVIS 480p: 854x480 -> 512x288, no crop needed
        (480, 640, 512, (384, 512)),  # 4:3
        (854, 480, 512, (512, 288)),  # portrait keeps rows = height
        (480, 480, 512, (384, 512)),  # square -> 4:3 (the 512 model was not trained on squares)
        (480, 854, 256, (144, 256)),
    ],
)
def test_working_size(height, width, long_side, expected):
    h, w = working_size(height, width, long_side)
    assert (h, w) == expected
    assert h % 16 == 0 and w % 16 == 0


def test_window_spans_cover_and_overlap():
    assert window_spans(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert window_spans(11, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10), (7, 11)]
    assert window_spans(5, 8, 3) == [(0, 5)]
    for n, window, overlap in [(100, 16, 4), (37, 6, 1), (9, 8, 7)]:
        spans = window_spans(n, window, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(stop - start == window for start, stop in spans)
        for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
            assert stop - start >= overlap  # consecutive windows share enough frames
    with pytest.raises(InvalidArgumentError, match="overlap"):
        window_spans(20, 4, 4)


def test_estimate_grows_with_window_and_resolution():
    cost = CostModel()
    small = estimate_peak_bytes((288, 512), 8, 6, cost)
    assert estimate_peak_bytes((288, 512), 16, 6, cost) > small
    assert estimate_peak_bytes((384, 512), 8, 6, cost) > small
    pixels = 288 * 512
    assert small == (
        cost.model_bytes
        + cost.runtime_bytes
        + cost.pair_bytes_per_px * pixels  # larger than 6 canonical pairs
        + cost.frame_bytes_per_px * pixels * 8
        + cost.pair_cache_bytes_per_px * pixels * 8 * 6
    )


def test_plans_fit_their_budget_and_shrink_with_it():
    plans = {gb: plan_memory(480, 854, 300, gb * GiB) for gb in (6, 8, 12, 24)}
    for gb, plan in plans.items():
        assert plan.estimated_peak_bytes <= CostModel().usable_fraction * gb * GiB
        assert plan.window >= 3 and 1 <= plan.overlap < plan.window
        assert plan.n_windows == len(window_spans(300, plan.window, plan.overlap))
    # Less memory never gets a larger resolution or, at the same resolution, a longer window.
    for small, large in [(6, 8), (8, 12), (12, 24)]:
        a, b = plans[small], plans[large]
        assert (a.long_side, a.window) <= (b.long_side, b.window)
    assert plans[24].long_side == 512 and plans[24].window == 16


def test_plan_never_exceeds_the_video_or_the_asked_window():
    plan = plan_memory(480, 854, 5, 80 * GiB)
    assert plan.window == 5 and plan.n_windows == 1 and plan.overlap == 0
    plan = plan_memory(480, 854, 100, 80 * GiB, max_window=10, overlap=3)
    assert plan.window == 10 and plan.overlap == 3


def test_too_small_budget_is_refused_up_front():
    with pytest.raises(ResourceExhaustedError, match="offline") as err:
        plan_memory(480, 854, 100, 2 * GiB)
    assert err.value.reason == "DEPTH_MEMORY_BUDGET"


def test_pair_graphs():
    assert pairs_per_frame("swin", 1) == 2
    assert pairs_per_frame("logwin", 3) == 6
    with pytest.raises(InvalidArgumentError, match="mast3r_scene_graph"):
        pairs_per_frame("complete", 3)
