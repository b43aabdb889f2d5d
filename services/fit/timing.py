"""Where a fit's time goes: wall seconds per phase, so a user (and the benchmark) can see it.

CUDA kernels run asynchronously, so the timer synchronises the device at each phase edge and
charges the kernels to the phase that launched them. A nested phase's time is not counted again
in the phase around it, so the phases add up to the total.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class _Open:
    name: str
    started: float
    nested_seconds: float = 0.0


@dataclass
class PhaseTimer:
    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)
    _open: list[_Open] = field(default_factory=list)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        entry = _Open(name, time.perf_counter())
        self._open.append(entry)
        try:
            yield
        finally:
            self._sync()
            self._open.pop()
            elapsed = time.perf_counter() - entry.started
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - entry.nested_seconds
            if self._open:
                self._open[-1].nested_seconds += elapsed
