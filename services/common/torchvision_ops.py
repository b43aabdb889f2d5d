"""Importing torchvision (or code that imports it) beside the project's CPU build of torch.

PyPI's torchvision is a CUDA build. Beside a CPU torch its C++ operator library cannot load, and
its import then fails ("operator torchvision::nms does not exist") because it registers fake
kernels for two operators that were never declared. RAFT and DUSt3R/MASt3R use only torchvision's
pure-PyTorch parts, so `import_beside_cpu_torch` declares the two schemas (without kernels:
calling them still fails loudly) and imports again. Where torchvision's operators do load (a
matching CUDA torch), the first import succeeds and nothing is declared.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

import torch

log = logging.getLogger(__name__)

_OP_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_MISSING_OP = "torchvision::nms"
_undeclared_ops_stub = None  # keeps the stub library (and so its schemas) alive


def _declare_missing_torchvision_ops() -> None:
    global _undeclared_ops_stub
    if _undeclared_ops_stub is None:
        _undeclared_ops_stub = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _undeclared_ops_stub.define(op + _OP_SCHEMA)
        log.info("torchvision's C++ ops did not load; declared nms/qnms so it can import")


def import_beside_cpu_torch(module: str) -> ModuleType:
    """`importlib.import_module(module)`, declaring torchvision's missing operators when its
    import stops on them. Other errors propagate unchanged."""
    try:
        return importlib.import_module(module)
    except RuntimeError as exc:
        if _MISSING_OP not in str(exc):
            raise
    # The failed import left half-initialised torchvision modules behind: drop them.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _declare_missing_torchvision_ops()
    return importlib.import_module(module)
