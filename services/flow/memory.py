"""Peak memory of one engine call, measured the way the device allows (and saying which way).

On CUDA: `torch.cuda.max_memory_allocated` (tensors only, after resetting the peak).
On the CPU: the growth of the process's resident set at its high-water mark (Linux `VmHWM`, reset
through /proc/self/clear_refs), which counts numpy, OpenCV and torch alike; where that reset is
not allowed, the growth of `ru_maxrss`, which misses peaks below an earlier one. Both are
process-wide, so concurrent work in the same process adds to the figure.
"""

from __future__ import annotations

import resource
from pathlib import Path

CUDA_KIND = "cuda_max_memory_allocated"
RSS_PEAK_KIND = "cpu_rss_peak_delta"
MAXRSS_KIND = "cpu_maxrss_delta"

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise OSError(f"{field} missing from {_STATUS}")


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class PeakMemory:
    """Measures peak memory between `start()` and `stop()` on "cpu" or a CUDA device."""

    def __init__(self, device: str):
        self.device = device
        self.kind = ""
        self._baseline = 0

    def start(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = CUDA_KIND
        elif _reset_rss_peak():
            self._baseline = _status_bytes("VmRSS")
            self.kind = RSS_PEAK_KIND
        else:
            self._baseline = _maxrss_bytes()
            self.kind = MAXRSS_KIND

    def stop(self) -> int:
        """Peak bytes since `start()` (above the baseline on the CPU)."""
        if self.kind == CUDA_KIND:
            import torch

            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        peak = _status_bytes("VmHWM") if self.kind == RSS_PEAK_KIND else _maxrss_bytes()
        return max(0, peak - self._baseline)
