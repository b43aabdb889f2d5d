"""Renderer speed: one forward + backward pass per backend, device and scene size; prints a table.

Run from the project root (after `make setup`, or with PYTHONPATH=.):
    .venv/bin/python bench/render_bench.py [--sizes 2000x64x48 8000x128x96] [--repeats 7]

The scene is what the fit engine works on: N Gaussians spread over the image at 2-6 m, each
covering about one pixel's share of the image (standard deviation sqrt(H*W/N) px, a factor of
1.35 either way, random rotations), opacity 0.5-0.95. The loss is a fixed random weighting of
RGB, depth and alpha, so the backward pass reaches every input and the camera pose.

Rows: `torch` (the sparse rasteriser) on CPU, `torch dense reference` on CPU where N*H*W is
small enough, and on CUDA (when present) `torch` and `gsplat` (when it imports). Times are the
median and the best of `repeats` after one warm-up call; `pairs` counts the (Gaussian, pixel)
pairs the sparse rasteriser composited.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import tyro

from services.fit.projection import project_gaussians
from services.fit.rasterizer_gsplat import gsplat_available
from services.fit.rasterizer_torch import box_pixel_pairs, render_torch
from services.fit.render import render


@dataclass
class BenchConfig:
    """What to measure."""

    sizes: tuple[str, ...] = ("2000x64x48", "8000x128x96")
    """Scenes as NxWIDTHxHEIGHT."""
    repeats: int = 7
    """Timed calls per row (after one warm-up)."""
    dense_limit: int = 30_000_000
    """Run the dense reference only where N * H * W is at most this (it needs that much memory
    several times over)."""
    seed: int = 0
    """Seed of the random scene."""


def engine_like_scene(n: int, width: int, height: int, seed: int, device: str) -> list:
    """render() arguments for N Gaussians that together cover the image about once."""
    gen = torch.Generator().manual_seed(seed)
    f = 0.9 * width
    K_33 = torch.tensor([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])
    z_n = 2.0 + 4.0 * torch.rand(n, generator=gen)
    x_n = (torch.rand(n, generator=gen) * width - K_33[0, 2]) * z_n / f
    y_n = (torch.rand(n, generator=gen) * height - K_33[1, 2]) * z_n / f
    sigma_px_n3 = math.sqrt(width * height / n) * torch.exp(0.3 * torch.randn(n, 3, generator=gen))
    tensors = [
        torch.stack([x_n, y_n, z_n], dim=1),
        torch.randn(n, 4, generator=gen),
        sigma_px_n3 * z_n[:, None] / f,
        0.5 + 0.45 * torch.rand(n, generator=gen),
        torch.rand(n, 3, generator=gen),
        torch.eye(4),
        K_33,
    ]
    return [t.to(device).requires_grad_(i < 6) for i, t in enumerate(tensors)]


def time_call(step, device: str, repeats: int) -> tuple[float, float]:
    """(median, best) wall time in ms of `step()` after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), min(times)


def measure(cfg: BenchConfig) -> list[dict]:
    """One row per (scene, backend, device)."""
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for size in cfg.sizes:
        n, width, height = (int(v) for v in size.split("x"))
        for device in devices:
            args = engine_like_scene(n, width, height, cfg.seed, device)
            gen = torch.Generator().manual_seed(cfg.seed + 1)
            weights_hw5 = torch.rand(height, width, 5, generator=gen).to(device)
            pairs = _count_pairs(args, width, height)
            for backend, forward in _forward_calls(cfg, args, width, height, device).items():
                rows.append(
                    dict(
                        backend=backend,
                        device=device,
                        n=n,
                        size=f"{width}x{height}",
                        pairs=pairs,
                        fwd=time_call(forward, device, cfg.repeats),
                        both=time_call(_with_backward(forward, weights_hw5), device, cfg.repeats),
                    )
                )
    return rows


def _forward_calls(cfg: BenchConfig, args: list, width: int, height: int, device: str) -> dict:
    """The renderers to time on this scene and device, by row name."""
    calls = {"torch": lambda: render(*args, width, height, backend="torch")}
    if device == "cuda" and gsplat_available():
        calls["gsplat"] = lambda: render(*args, width, height, backend="gsplat")
    if device == "cpu" and len(args[0]) * width * height <= cfg.dense_limit:
        calls["torch dense reference"] = lambda: _dense_render(args, width, height)
    return calls


def _with_backward(forward, weights_hw5: torch.Tensor):
    """forward() followed by the backward pass of a fixed weighting of its pixels."""

    def step() -> None:
        out = forward()
        stacked_hw5 = torch.cat([out.rgb_hw3, out.depth_hw[..., None], out.alpha_hw[..., None]], -1)
        (stacked_hw5 * weights_hw5).sum().backward()

    return step


def _dense_render(args: list, width: int, height: int):
    """render()'s output shape from the dense reference (no pixel-convention shift needed)."""
    rgbd_hw4, alpha_hw, _, _ = render_torch(
        *args, width, height, None, 0.01, 1e4, dense_reference=True
    )
    return _Rendered(rgbd_hw4[..., :3], rgbd_hw4[..., 3], alpha_hw)


@dataclass
class _Rendered:
    rgb_hw3: torch.Tensor
    depth_hw: torch.Tensor
    alpha_hw: torch.Tensor


@torch.no_grad()
def _count_pairs(args: list, width: int, height: int) -> int:
    """(Gaussian, pixel) pairs inside the bounding boxes (before the alpha threshold)."""
    K_gsplat_33 = args[6].clone()
    K_gsplat_33[:2, 2] += 0.5  # render()'s shift to gsplat's pixel centres
    projection = project_gaussians(*args[:4], args[5], K_gsplat_33, width, height, 0.01, 1e4)
    visible_n = (projection.radii_n2 > 0).all(dim=-1)
    gauss_k, _, _ = box_pixel_pairs(
        projection.means2d_n2[visible_n], projection.radii_n2[visible_n], width, height
    )
    return len(gauss_k)


def main() -> None:
    cfg = tyro.cli(BenchConfig)
    rows = measure(cfg)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    header = (
        f"{'backend':<22} {'device':<6} {'N':>7} {'image':>9} {'box pairs':>10} "
        f"{'fwd ms (med/best)':>18} {'fwd+bwd ms (med/best)':>22}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['backend']:<22} {r['device']:<6} {r['n']:>7} {r['size']:>9} {r['pairs']:>10} "
            f"{r['fwd'][0]:>9.1f}/{r['fwd'][1]:<8.1f} {r['both'][0]:>11.1f}/{r['both'][1]:<10.1f}"
        )


if __name__ == "__main__":
    main()
