"""UniMatch's flow model (GMFlow, `gmflow-scale2-regrefine6`) from a user-given checkpoint.

The `unimatch` package has no PyPI release: clone autonomousvision/unimatch and put its root on
PYTHONPATH. It is imported only when this backend loads. The arguments below are those of the
repository's `gmflow-scale2-regrefine6` demo and evaluation scripts (two feature scales, 1/8 and
1/4, swin attention, global then radius-4 local matching, six regression refinement steps).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common.errors import FailedPreconditionError
from services.flow.backends.base import load_state, load_weights_file
from services.flow.backends.torch_model import PaddedTorchBackend

INSTALL_HINT = (
    "backend unimatch needs the unimatch package: git clone "
    "https://github.com/autonomousvision/unimatch and add the clone's root folder to PYTHONPATH"
)
WEIGHTS_HINT = (
    "download gmflow-scale2-regrefine6-mixdata-train320x576-4e7b215d.pth (UniMatch MODEL_ZOO.md) "
    "and pass its path as unimatch_checkpoint; nothing is downloaded at run time"
)
# Measured on an H200 at 854x480 (padded 864x480, docs/flow.md): 2.36 GiB more per directed
# pair in a batch, 4.5 KiB per padded pixel beside the 1/8 matching matrices; taken 1.45 times
# (6.5 KiB) because the caching allocator kept up to 2 GiB reserved but unused: a batch of 2 under
# a 6 GiB cap ran out of memory with 4.5 GiB allocated.
_ACTIVATION_BYTES_PER_PIXEL = 6656
# cuDNN's grid sampler indexes with 32 bits: the radius-4 local matching samples a tensor of
# batch x 128 channels x (1/4-scale cells) x 81 offsets, which must stay below 2**31 elements
# (a batch of 8 at 864x480 fails with CUDNN_STATUS_NOT_SUPPORTED).
_LOCAL_MATCH_ELEMENTS_PER_CELL = 128 * 81
_CUDNN_MAX_ELEMENTS = 2**31 - 1


def model_kwargs() -> dict[str, Any]:
    """Constructor arguments of `UniMatch` for the gmflow-scale2-regrefine6 flow model."""
    return {
        "feature_channels": 128,
        "num_scales": 2,
        "upsample_factor": 4,
        "num_head": 1,
        "ffn_dim_expansion": 4,
        "num_transformer_layers": 6,
        "reg_refine": True,
        "task": "flow",
    }


def forward_kwargs() -> dict[str, Any]:
    """Keyword arguments of `UniMatch.forward` for one-directional flow with that model."""
    return {
        "attn_type": "swin",
        "attn_splits_list": [2, 8],
        "corr_radius_list": [-1, 4],
        "prop_radius_list": [-1, 1],
        "num_reg_refine": 6,
        "task": "flow",
        "pred_bidir_flow": False,
    }


def state_dict_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model tensors of a checkpoint: UniMatch saves {"model": state_dict, ...}."""
    model_state = checkpoint.get("model")
    return model_state if isinstance(model_state, dict) else checkpoint


def availability() -> tuple[bool, str]:
    if importlib.util.find_spec("unimatch") is None:
        return False, INSTALL_HINT
    return True, "UniMatch gmflow-scale2-regrefine6; needs a checkpoint (unimatch_checkpoint)"


def import_unimatch_class() -> type:
    available, detail = availability()
    if not available:
        raise FailedPreconditionError(detail, reason="PACKAGE_MISSING")
    try:
        return importlib.import_module("unimatch.unimatch").UniMatch
    except (ImportError, AttributeError) as exc:
        raise FailedPreconditionError(
            f"the installed unimatch package has no unimatch.unimatch.UniMatch ({exc}); "
            + INSTALL_HINT,
            reason="PACKAGE_MISSING",
        ) from exc


class UniMatchBackend(PaddedTorchBackend):
    """GMFlow on batches of directed pairs."""

    name = "unimatch"
    size_multiple = 32  # 1/4-scale features split into 8 x 8 attention windows
    min_side = 32

    def __init__(self, checkpoint: Path | None, device: str):
        unimatch_class = import_unimatch_class()
        state = state_dict_of(load_weights_file(checkpoint, "unimatch_checkpoint", WEIGHTS_HINT))
        net = unimatch_class(**model_kwargs())
        # Like the repository's own loader, tolerate extra tensors; missing ones are an error.
        load_state(
            net,
            state,
            Path(checkpoint),
            "unimatch_checkpoint",
            "gmflow-scale2-regrefine6",
            strict=False,
        )
        super().__init__(net, device)

    def item_bytes(self, height: int, width: int) -> int:
        """Global matching and global propagation at 1/8 each hold a (cells x cells) matrix and
        its softmax; the rest scales with the pixels."""
        padded_h, padded_w = self.padded_size(height, width)
        cells = (padded_h // 8) * (padded_w // 8)
        return int(4 * 4 * cells**2 + _ACTIVATION_BYTES_PER_PIXEL * padded_h * padded_w)

    def max_items(self, height: int, width: int) -> int:
        """Directed pairs one forward pass can hold under cuDNN's 32-bit limit (see above)."""
        padded_h, padded_w = self.padded_size(height, width)
        cells = (padded_h // 4) * (padded_w // 4)
        return max(1, _CUDNN_MAX_ELEMENTS // (_LOCAL_MATCH_ELEMENTS_PER_CELL * cells))

    def flow(self, src_bhw3: np.ndarray, dst_bhw3: np.ndarray) -> np.ndarray:
        """The batch in chunks of at most `max_items` pairs."""
        step = self.max_items(src_bhw3.shape[1], src_bhw3.shape[2])
        chunks = []
        for start in range(0, len(src_bhw3), step):
            chunk = slice(start, start + step)
            chunks.append(super().flow(src_bhw3[chunk], dst_bhw3[chunk]))
        return np.concatenate(chunks)

    def predict(self, src_b3hw: torch.Tensor, dst_b3hw: torch.Tensor) -> torch.Tensor:
        # The model takes RGB in [0, 255] and normalises it itself; the last prediction is final.
        return self.net(src_b3hw, dst_b3hw, **forward_kwargs())["flow_preds"][-1]
