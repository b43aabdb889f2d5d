"""torchvision's RAFT (small or large) from a user-given weights file; GPU when present.

PyPI's torchvision is a CUDA build; beside the project's CPU torch it is imported through
`services.common.torchvision_ops` (RAFT is pure PyTorch and needs none of its C++ operators).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import torch

from services.common.errors import FailedPreconditionError
from services.common.torchvision_ops import import_beside_cpu_torch
from services.flow.backends.base import load_state, load_weights_file
from services.flow.backends.torch_model import PaddedTorchBackend

INSTALL_HINT = "pip install torchvision==0.28.0 (the release made for torch 2.13.0)"
WEIGHTS_HINT = (
    "download torchvision's RAFT weights ({}) and pass the file's path as raft_weights; "
    "nothing is downloaded at run time"
)
WEIGHTS_FILES = {
    "small": "https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",
    "large": "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
}
# Working memory besides the correlation pyramid, bytes per input pixel and direction; measured
# on the CPU at 480x856 (tests/gpu checks the estimate against CUDA) and rounded up.
_ACTIVATION_BYTES_PER_PIXEL = {"small": 512, "large": 1024}
_PYRAMID_FACTOR = 1.5  # all-pairs volume at 1/8 plus its pooled levels (1 + 1/4 + 1/16 + ...)

_MODULE = "torchvision.models.optical_flow"


def _broken(exc: Exception) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"torchvision is installed but its optical-flow models fail to import "
        f"({type(exc).__name__}: {exc}); {INSTALL_HINT}",
        reason="PACKAGE_BROKEN",
    )


def import_optical_flow() -> ModuleType:
    """torchvision.models.optical_flow, or FailedPreconditionError saying what to install."""
    if importlib.util.find_spec("torchvision") is None:
        raise FailedPreconditionError(
            f"backend raft needs torchvision: {INSTALL_HINT}", reason="PACKAGE_MISSING"
        )
    try:
        return import_beside_cpu_torch(_MODULE)
    except (ImportError, OSError, RuntimeError) as exc:
        raise _broken(exc) from exc


def availability() -> tuple[bool, str]:
    try:
        import_optical_flow()
    except FailedPreconditionError as exc:
        return False, str(exc)
    version = importlib.import_module("torchvision").__version__
    return True, f"torchvision {version} RAFT small/large; needs a weights file (raft_weights)"


class RaftBackend(PaddedTorchBackend):
    """RAFT on batches of directed pairs; `iterations` recurrent updates per pair."""

    name = "raft"
    size_multiple = 8  # RAFT works on 1/8-resolution features
    min_side = 128  # its correlation pyramid pools 1/8-resolution features three times

    def __init__(self, model: str, weights: Path | None, iterations: int, device: str):
        hint = WEIGHTS_HINT.format(WEIGHTS_FILES[model])
        state = load_weights_file(weights, "raft_weights", hint)
        net = getattr(import_optical_flow(), f"raft_{model}")(weights=None)
        load_state(net, state, Path(weights), "raft_weights", f"torchvision raft_{model}")
        super().__init__(net, device)
        self._model = model
        self._iterations = iterations

    def item_bytes(self, height: int, width: int) -> int:
        padded_h, padded_w = self.padded_size(height, width)
        cells = (padded_h // 8) * (padded_w // 8)
        pyramid = _PYRAMID_FACTOR * 4 * cells**2
        return int(pyramid + _ACTIVATION_BYTES_PER_PIXEL[self._model] * padded_h * padded_w)

    def predict(self, src_b3hw: torch.Tensor, dst_b3hw: torch.Tensor) -> torch.Tensor:
        # RAFT was trained on RGB scaled to [-1, 1]; it returns one flow per update, best last.
        flows = self.net(src_b3hw / 127.5 - 1.0, dst_b3hw / 127.5 - 1.0, self._iterations)
        return flows[-1]
