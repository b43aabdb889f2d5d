"""Memory plan for MASt3R depth: window length and working resolution that fit a GPU budget.

The original pipeline ran MASt3R on every frame at once and died out of memory on 6 GB cards
(failure case 2). Here the video is cut into overlapping windows, and the window length and
resolution come from an estimate of the peak memory against the budget (the free GPU memory when
none is given), before any work starts: a small budget gets shorter windows or a lower resolution
(slower, more overlap to recompute), and a budget too small for anything is refused up front with
the figure it would need, instead of dying mid-video.

The cost model's constants are fitted to peaks measured on a GPU with the real architecture
(bench/depth_memory.py, docs/depth.md); tests/gpu/test_depth_gpu.py checks them against a
measured peak when a GPU and a checkpoint are present.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import InvalidArgumentError, ResourceExhaustedError

PATCH_PX = 16  # MASt3R's ViT patch: working sides are multiples of it
LONG_SIDES = (512, 448, 384, 320, 256)  # working resolutions tried, best first (trained at 512)
PREFERRED_MIN_WINDOW = 8  # below this, a lower resolution is tried before a shorter window
MIN_WINDOW = 3  # the fewest frames a window can align (two overlap with the next one at most)


@dataclass(frozen=True)
class CostModel:
    """Peak bytes of one MASt3R window on the GPU, fitted to torch.cuda.max_memory_allocated
    on an H200 (real ViT-L/512 architecture, 512x288 working size, windows of 3, 8 and 16
    frames with 6 to 82 directed pairs: 3.26-3.29 GiB; bench/depth_memory.py, docs/depth.md).
    Per-pixel terms are the fit times 1.25 (bench/depth_memory.py's `margin`)."""

    model_bytes: int = 2_764_912_640
    """ViT-L encoder + ViT-B decoder + two heads, float32, as allocated on the device."""
    runtime_bytes: int = 512 * 2**20
    """CUDA context, cuBLAS workspace and allocator slack outside the tensors (not measured by
    max_memory_allocated, so kept as an allowance)."""
    pair_bytes_per_px: int = 6270
    """The transient of inference or of making one frame canonical, per pixel of one image:
    the fit's intercept (0.74 GB above the weights at 512x288)."""
    canonical_bytes_per_px: int = 1045
    """Per pair of the frame being made canonical (one sixth of the above: never the larger
    term for the pair graphs the engine builds)."""
    frame_bytes_per_px: int = 20
    """Per frame of the window, kept for the whole alignment: the fit's slope (16 frames held
    33 MB more than 3)."""
    pair_cache_bytes_per_px: int = 0
    """Per directed pair of the window: not separable from the per-frame slope in the
    measurements (82 pairs vs 6 added nothing beyond it)."""
    usable_fraction: float = 0.85
    """Share of the budget the plan fills (fragmentation and small temporaries)."""


@dataclass
class MemoryPlan:
    """What the planner chose, and why it fits."""

    budget_bytes: int  # the budget planned against
    budget_source: str  # "config" or "free GPU memory" or "system memory"
    long_side: int  # working resolution's long side (px)
    work_hw: tuple[int, int]  # working (height, width), multiples of 16, never square
    window: int  # frames per window
    overlap: int  # frames shared by consecutive windows
    subsample: int  # anchor spacing of the sparse alignment (px at the working resolution)
    pairs_per_frame: int  # neighbours of a frame in the pair graph
    estimated_peak_bytes: int
    n_windows: int  # windows the video needs with this plan


def working_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) with the long side `long_side`, both multiples of 16, the aspect kept as closely as
    that allows. A square frame becomes 4:3 landscape (MASt3R's 512 model was not trained on
    squares); the intrinsics record the anisotropic scale, so nothing is lost."""
    scale = long_side / max(height, width)
    h = max(PATCH_PX, int(round(height * scale / PATCH_PX)) * PATCH_PX)
    w = max(PATCH_PX, int(round(width * scale / PATCH_PX)) * PATCH_PX)
    if h == w:
        h = max(PATCH_PX, int(round(0.75 * w / PATCH_PX)) * PATCH_PX)
    return h, w


def pairs_per_frame(scene_graph: str, winsize: int) -> int:
    """Neighbours of an inner frame: `swin` pairs it with the next and previous `winsize`
    frames, `logwin` with those at offsets 1, 2, 4, ... (winsize of them) on each side."""
    if scene_graph not in ("swin", "logwin"):
        raise InvalidArgumentError("mast3r_scene_graph", f"{scene_graph!r}: use swin or logwin")
    return 2 * winsize


def estimate_peak_bytes(
    work_hw: tuple[int, int], window: int, neighbours: int, cost: CostModel
) -> int:
    """Model and runtime + one pair's inference or one frame's canonical map (whichever is
    larger; they never overlap) + what the alignment keeps for all frames and pairs."""
    pixels = work_hw[0] * work_hw[1]
    per_frame_pairs = min(neighbours, window - 1)
    transient = max(cost.pair_bytes_per_px, cost.canonical_bytes_per_px * per_frame_pairs)
    return int(
        cost.model_bytes
        + cost.runtime_bytes
        + transient * pixels
        + cost.frame_bytes_per_px * pixels * window
        + cost.pair_cache_bytes_per_px * pixels * window * per_frame_pairs
    )


def window_spans(n_frames: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """(start, stop) of overlapping windows covering all frames; consecutive ones share at least
    `overlap` frames, and the last one ends at the last frame (it may overlap more)."""
    if n_frames <= window:
        return [(0, n_frames)]
    if not 1 <= overlap < window:
        raise InvalidArgumentError("overlap", f"{overlap}: needs 1 <= overlap < window ({window})")
    step = window - overlap
    starts = list(range(0, n_frames - window, step)) + [n_frames - window]
    return [(s, s + window) for s in dict.fromkeys(starts)]


def long_sides(max_long_side: int) -> list[int]:
    """Working long sides to try, best first: `max_long_side` (a multiple of 16), then the
    standard ones below it."""
    if max_long_side < PATCH_PX or max_long_side % PATCH_PX:
        raise InvalidArgumentError(
            "mast3r_long_side", f"{max_long_side} must be a positive multiple of {PATCH_PX}"
        )
    return [max_long_side] + [side for side in LONG_SIDES if side < max_long_side]


def plan_memory(
    height: int,
    width: int,
    n_frames: int,
    budget_bytes: int,
    *,
    budget_source: str = "config",
    max_long_side: int = LONG_SIDES[0],
    max_window: int = 16,
    overlap: int = 4,
    subsample: int = 8,
    scene_graph: str = "logwin",
    winsize: int = 3,
    cost: CostModel = CostModel(),
) -> MemoryPlan:
    """The best (resolution, window) whose estimated peak fits `budget_bytes`.

    Resolutions are tried from `max_long_side` down. Prefers the highest resolution with a
    window of at least 8 frames (or all of them), then any resolution with a window of at least
    3. Raises ResourceExhaustedError when nothing fits, naming the budget the smallest plan
    would need.
    """
    neighbours = pairs_per_frame(scene_graph, winsize)
    sides = long_sides(max_long_side)
    usable = cost.usable_fraction * budget_bytes
    longest = min(max_window, n_frames)
    for floor in (min(PREFERRED_MIN_WINDOW, longest), min(MIN_WINDOW, longest)):
        for long_side in sides:
            work_hw = working_size(height, width, long_side)
            for window in range(longest, floor - 1, -1):
                peak = estimate_peak_bytes(work_hw, window, neighbours, cost)
                if peak <= usable:
                    ov = min(overlap, window - 1) if window < n_frames else 0
                    return MemoryPlan(
                        budget_bytes=int(budget_bytes),
                        budget_source=budget_source,
                        long_side=long_side,
                        work_hw=work_hw,
                        window=window,
                        overlap=ov,
                        subsample=subsample,
                        pairs_per_frame=neighbours,
                        estimated_peak_bytes=peak,
                        n_windows=len(window_spans(n_frames, window, max(ov, 1))),
                    )
    smallest = estimate_peak_bytes(
        working_size(height, width, sides[-1]), min(MIN_WINDOW, longest), neighbours, cost
    )
    raise ResourceExhaustedError(
        f"memory_budget_gb: MASt3R needs about {smallest / cost.usable_fraction / 2**30:.1f} GiB "
        f"even with {min(MIN_WINDOW, longest)}-frame windows at {sides[-1]} px, but the "
        f"budget ({budget_source}) is {budget_bytes / 2**30:.1f} GiB; free GPU memory, use a "
        "larger card, or use backend='offline'",
        reason="DEPTH_MEMORY_BUDGET",
    )


def free_gpu_bytes() -> int | None:
    """Free memory on the current CUDA device, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)
