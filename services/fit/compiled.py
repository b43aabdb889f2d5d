"""The fit's per-step loss code fused by torch.compile when it runs on CUDA.

A fit step on the GPU is bound by the host, not the chip: eager PyTorch launches about 260 small
kernels per step (the loss terms, SSIM's blurs, their backward passes), the GPU busy 1.5 ms of
about 8 ms (fast preset, 854x480, H200; docs/fit.md "Compiling the loss code"). Inductor fuses a
whole loss unit (`losses.gaussians_loss`, `losses.camera_loss`, `camera.posed_w2c_44`) into a few
kernels. The renderer stays eager between the units.

Without CUDA graphs: their state belongs to the thread that captured them, and the fit server
runs every fit in a worker thread. On the CPU the units run eagerly (no compiler needed, and the
CPU results stay bit-identical to the eager code the tests and the accuracy suite check).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


def fuse(fn: F, enabled: bool, backend: str = "inductor") -> F:
    """`fn` compiled by torch.compile (`backend`, dynamic shapes after the first change, no
    CUDA graphs) when `enabled`, else `fn` itself. Compiled once per (function, backend) per
    process: every fit after the first reuses the kernels."""
    return _compiled(fn, backend) if enabled else fn


@functools.cache
def _compiled(fn: Callable, backend: str) -> Callable:
    return torch.compile(fn, backend=backend, dynamic=None)
