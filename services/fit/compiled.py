"""The fit's per-step loss code fused by torch.compile when it runs on CUDA.

A fit step on the GPU is bound by the host, not the chip: eager PyTorch launches about 260 small
kernels per step (the loss terms, SSIM's blurs, their backward passes), the GPU busy 1.5 ms of
about 8 ms (fast preset, 854x480, H200; docs/fit.md "Compiling the loss code"). Inductor fuses a
whole loss unit (`losses.gaussians_loss`, `losses.camera_loss`, `camera.posed_w2c_44`) into a few
kernels. The renderer stays eager between the units.

Inductor writes each unit's wrapper (the code that allocates buffers and launches its kernels) in
C++ (`cpp_wrapper`) rather than Python: a compiled call costs less host time (with
`adam.fused_adam_step`, 20 % less time per fast frame on the H200; docs/fit.md), for about 65 s
more compiling once per process (115 s instead of 47 s with inductor's disk cache empty).

Without CUDA graphs: their state belongs to the thread that captured them, and the fit server
runs every fit in a worker thread. On the CPU the units run eagerly (no compiler needed, and the
CPU results stay bit-identical to the eager code the tests and the accuracy suite check).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch._dynamo.exc import BackendCompilerFailed
from torch._functorch import config as functorch_config
from torch._inductor import config as inductor_config
from torch._inductor.exc import InductorError

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)


def fuse(fn: F, enabled: bool, backend: str | Callable = "inductor") -> F:
    """`fn` compiled by torch.compile (`backend`, dynamic shapes after the first change, no
    CUDA graphs; inductor with its C++ wrapper) when `enabled`, else `fn` itself. Compiled once
    per (function, backend) per process: every fit after the first reuses the kernels. Where the
    compiler cannot work (no usable Triton or C compiler on the machine) the unit logs a warning
    and runs eagerly: the fit is slower, never lost."""
    return _compiled(fn, backend) if enabled else fn


@functools.cache
def _compiled(fn: Callable, backend: str | Callable) -> Callable:
    compiled = torch.compile(fn, backend=_compile_unit(backend), dynamic=None)
    failed = False

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except (BackendCompilerFailed, InductorError) as exc:
                failed = True
                logger.warning(
                    "torch.compile cannot compile %s here (%s); it runs eagerly from now on",
                    fn.__qualname__,
                    str(exc).splitlines()[0],
                )
        return fn(*args, **kwargs)

    return run


def _compile_unit(backend: str | Callable) -> Callable:
    """The compiler dynamo calls at each (re)compile of a unit: `backend` with inductor's C++
    wrapper, and the unit's backward pass compiled with its forward pass. Lazily, at the first
    loss.backward(), these settings would be gone (the C++ wrapper build then failed on the H200)
    and a failure would end the fit inside loss.backward() instead of falling back in `run`."""
    compiler = torch._dynamo.lookup_backend(backend) if isinstance(backend, str) else backend

    def compile_unit(graph_module: torch.fx.GraphModule, example_inputs: list) -> Callable:
        with (
            functorch_config.patch(force_non_lazy_backward_lowering=True),
            inductor_config.patch(cpp_wrapper=True),
        ):
            return compiler(graph_module, example_inputs)

    return compile_unit
