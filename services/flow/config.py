"""How the flow stage computes: its configuration, apart from the engine and its backends so a
caller that only names a flow run (the pipeline, a remote-only `gflow run`) loads neither."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class FlowConfig:
    """How to compute flow. Every field has a default; `dis` needs no weights."""

    backend: Literal["dis", "raft", "unimatch"] = "dis"
    """dis: OpenCV DIS on the CPU; raft: torchvision RAFT; unimatch: UniMatch GMFlow."""
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    """DIS quality preset (slower is better)."""
    variational_refinement: bool = True
    """DIS: 5 variational refinement iterations after the patch search (False: none)."""
    raft_model: Literal["small", "large"] = "small"
    """Which torchvision RAFT; the weights file must be for this one."""
    raft_weights: Path | None = None
    """RAFT state dict (.pth) from torchvision's model zoo, e.g. raft_small_C_T_V2-01064c6d.pth."""
    raft_iterations: int = 12
    """RAFT recurrent refinement updates per pair."""
    unimatch_checkpoint: Path | None = None
    """UniMatch checkpoint, e.g. gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth."""
    extra_stride: int = 0
    """Also compute pairs (t, t + k) for this k >= 2; 0 = consecutive pairs only. A pipeline run
    sets it to depth.flow_stride (the offline depth triangulates from those pairs)."""
    fb_threshold_px: float = 1.0
    """A pixel is consistent when its forward-backward round trip misses by less than this."""
    memory_budget_gb: float = 6.0
    """Memory one batch may use on the device (GiB); the default fits a 6 GB card."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda or cuda:N; dis always runs on the CPU."""


# Request fields that only the server's operator may set, and the variables that set them.
SERVER_FIELDS = {
    "raft_weights": "GFLOW_RAFT_WEIGHTS",
    "unimatch_checkpoint": "GFLOW_UNIMATCH_CHECKPOINT",
}
