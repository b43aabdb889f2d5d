"""torchvision's RAFT (small or large) from a user-given weights file; GPU when present.

PyPI's torchvision is a CUDA build. Beside the project's CPU build of torch its C++ operator
library cannot load, and its import then fails ("operator torchvision::nms does not exist")
because it registers fake kernels for two operators that were never declared. RAFT is pure
PyTorch and needs none of those operators, so `import_optical_flow` declares the two schemas
(without kernels: calling them still fails loudly) and imports again. Where torchvision's
operators do load (a matching CUDA torch), the first import succeeds and nothing is declared.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import torch

from services.common.errors import FailedPreconditionError
from services.flow.backends.base import load_state, load_weights_file
from services.flow.backends.torch_model import PaddedTorchBackend

log = logging.getLogger(__name__)

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
_OP_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_undeclared_ops_stub = None  # keeps the stub library (and so its schemas) alive


def _declare_missing_torchvision_ops() -> None:
    global _undeclared_ops_stub
    if _undeclared_ops_stub is None:
        _undeclared_ops_stub = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _undeclared_ops_stub.define(op + _OP_SCHEMA)
        log.info("torchvision's C++ ops did not load; declared nms/qnms so RAFT can import")


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
        return importlib.import_module(_MODULE)
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise _broken(exc) from exc
    except (ImportError, OSError) as exc:
        raise _broken(exc) from exc
    _declare_missing_torchvision_ops()
    try:
        return importlib.import_module(_MODULE)
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
