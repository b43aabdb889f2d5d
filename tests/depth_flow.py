"""The flow the depth engine takes, computed for test frames as the pipeline's flow stage does."""

from __future__ import annotations

import numpy as np

from services.depth.config import needed_stride
from services.depth.engine import DepthConfig
from services.depth.flows import PairFlows, from_flow_result
from services.flow.engine import FlowConfig, compute_flow


def flow_for_depth(frames_thw3: np.ndarray, cfg: DepthConfig | None = None) -> PairFlows:
    """Default DIS flow of every consecutive pair and of the pairs `cfg.flow_stride` apart."""
    stride = needed_stride((cfg or DepthConfig()).flow_stride, len(frames_thw3))
    return from_flow_result(compute_flow(frames_thw3, FlowConfig(extra_stride=stride)))
