"""The flow stage's result as the offline depth backend takes it: frame pairs and their flows.

Depth never computes flow: it triangulates from the flow the pipeline's flow stage computed once
for the whole video (consecutive pairs, plus the pairs `flow_stride` apart that give a wider
baseline), so depth, segment and fit see the same motion. This module turns that result into
`PairFlows`, checks it covers the pairs depth needs, brings it to depth's working size and cuts
it into the windows depth works on.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.common.errors import InvalidArgumentError
from services.flow.engine import FlowResult, frame_pairs

PairFlows = dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
"""(t0, t1) with t1 > t0 -> (flow t0 -> t1, flow t1 -> t0): float32 [H, W, 2] in pixels (dx, dy)."""


def from_flow_result(result: FlowResult) -> PairFlows:
    """Every pair of a flow engine result."""
    return {(p.t0, p.t1): (p.flow_fwd_hw2, p.flow_bwd_hw2) for p in result.pairs}


def from_arrays(flow_fwd_phw2: np.ndarray, flow_bwd_phw2: np.ndarray, stride: int) -> PairFlows:
    """The pairs (t, t + stride), t = 0, 1, ..., of one stride's stacked flows, as the flow stage
    stores them (`flow_forward`, `flow_backward`, and `_stride<k>` for the stride pairs)."""
    return {
        (t, t + stride): (fwd_hw2, bwd_hw2)
        for t, (fwd_hw2, bwd_hw2) in enumerate(zip(flow_fwd_phw2, flow_bwd_phw2, strict=True))
    }


def check_pair_flows(flows: PairFlows, n_frames: int, hw: tuple[int, int], stride: int) -> None:
    """InvalidArgumentError naming `flow` unless `flows` holds every pair the offline backend
    triangulates from (consecutive, and `stride` apart), each [H, W, 2] at the frames' size."""
    for t0, t1 in frame_pairs(n_frames, stride):
        if (t0, t1) not in flows:
            fix = (
                f"compute the flow with extra_stride={stride} (depth's flow_stride)"
                if t1 - t0 > 1
                else "pass the flow stage's result for this video"
            )
            raise InvalidArgumentError("flow", f"lacks the flow of frames ({t0}, {t1}): {fix}")
        for flow_hw2 in flows[(t0, t1)]:
            if flow_hw2.shape != (*hw, 2):
                raise InvalidArgumentError(
                    "flow",
                    f"flow of frames ({t0}, {t1}) has shape {flow_hw2.shape}; the frames need "
                    f"{(*hw, 2)}: compute the flow on the same frames",
                )


def resize_flow(flow_hw2: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A flow field at another size, its vectors scaled with the image (pixel centres at
    integers, so a displacement scales by the size ratio)."""
    height, width = flow_hw2.shape[:2]
    if (height, width) == hw:
        return flow_hw2
    mode = cv2.INTER_AREA if hw[0] < height else cv2.INTER_LINEAR
    resized_hw2 = cv2.resize(flow_hw2, (hw[1], hw[0]), interpolation=mode)
    return (resized_hw2 * np.array([hw[1] / width, hw[0] / height], np.float32)).astype(np.float32)


def resize_pair_flows(flows: PairFlows, hw: tuple[int, int]) -> PairFlows:
    """Every pair's flows at size `hw` (depth's working size)."""
    return {
        pair: (resize_flow(fwd_hw2, hw), resize_flow(bwd_hw2, hw))
        for pair, (fwd_hw2, bwd_hw2) in flows.items()
    }


def window_pair_flows(
    flows: PairFlows, pairs: list[tuple[int, int]], start: int, stop: int
) -> PairFlows:
    """The `pairs` of `flows` that lie inside frames start..stop-1, renumbered from the window's
    first frame."""
    return {
        (t0 - start, t1 - start): flows[(t0, t1)] for t0, t1 in pairs if start <= t0 and t1 < stop
    }
