"""The CUDA renderer: a thin wrapper over gsplat 1.5.x `rasterization`.

gsplat is optional (it JIT-compiles its CUDA kernels on first use); `render` picks it for CUDA
tensors when it imports. The call mirrors `rasterizer_torch.render_torch` exactly: pinhole
camera, classic (not antialiased) mode, eps2d 0.3, RGB plus accumulated camera z ("RGB+D"), and
gsplat's pixel convention for `K_33` (pixel centres at +0.5).
"""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType

import torch
from torch import Tensor

from services.common.errors import FailedPreconditionError
from services.fit.projection import EPS2D

logger = logging.getLogger(__name__)

GSPLAT_REQUIREMENT = "gsplat==1.5.3"
"""The version the parity test holds the PyTorch renderer to."""


@functools.cache
def _gsplat_module() -> ModuleType | None:
    """The gsplat package, or None when it does not import."""
    try:
        module = importlib.import_module("gsplat")
    except ImportError as exc:
        logger.debug("gsplat unavailable: %s", exc)
        return None
    version = getattr(module, "__version__", "unknown")
    if not version.startswith("1.5."):
        logger.warning(
            "gsplat %s found; this renderer is tested with %s", version, GSPLAT_REQUIREMENT
        )
    return module


def gsplat_available() -> bool:
    """Whether gsplat imports (its CUDA kernels are compiled later, on first use)."""
    return _gsplat_module() is not None


def require_gsplat() -> ModuleType:
    """The gsplat package; FailedPreconditionError saying how to install it when it is absent."""
    gsplat = _gsplat_module()
    if gsplat is None:
        raise FailedPreconditionError(
            f"the gsplat renderer is not installed: pip install {GSPLAT_REQUIREMENT} "
            "(needs a CUDA toolkit to compile on first use), or render with backend='torch'"
        )
    return gsplat


def render_gsplat(
    means_n3: Tensor,
    quats_n4: Tensor,
    scales_n3: Tensor,
    opacities_n: Tensor,
    colors_n3: Tensor,
    w2c_44: Tensor,
    K_33: Tensor,
    width: int,
    height: int,
    background_3: Tensor | None,
    near: float,
    far: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """gsplat's (rgbd [H, W, 4], alpha [H, W], means2d [N, 2], radii [N, 2]) for one camera.

    means2d rows of culled Gaussians (radii 0) are whatever gsplat left there.
    """
    rgbd_1hw4, alpha_1hw1, meta = require_gsplat().rasterization(
        means=means_n3,
        quats=quats_n4,
        scales=scales_n3,
        opacities=opacities_n,
        colors=colors_n3,
        viewmats=w2c_44[None],
        Ks=K_33[None],
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        radius_clip=0.0,
        eps2d=EPS2D,
        packed=False,
        tile_size=16,
        backgrounds=None if background_3 is None else background_3[None],
        render_mode="RGB+D",
        rasterize_mode="classic",
        camera_model="pinhole",
    )
    radii_n2 = meta["radii"][0].to(torch.int32)
    return rgbd_1hw4[0], alpha_1hw1[0, :, :, 0], meta["means2d"][0], radii_n2
