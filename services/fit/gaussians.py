"""The scene model: the Gaussians alive now as optimisable tensors, and per-frame snapshots.

Parameters are stored unconstrained (log scales, raw quaternions, opacity and colour logits) so the
optimiser can move them freely; the activated values are what the renderer and the outputs see.
Every Gaussian carries a persistent id (the same Gaussian keeps its id in every frame it lives in,
which is what 2D/3D tracks follow) and a still/moving flag.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from services.fit.render import RenderOutput, render

_EPS = 1e-6
PARAMETER_NAMES = ("means", "scales", "quats", "opacities", "colors")
"""The optimisable tensors' names (`Gaussians.parameters`), one optimiser group each."""
# Learning rate of each parameter group relative to the configured one. Means move in units of
# the scene depth (median depth of frame 0), so one setting suits scenes of any size.
_LR_SCALE = {"means": 0.1, "scales": 1.0, "quats": 1.0, "opacities": 5.0, "colors": 2.0}


@dataclass
class FrameGaussians:
    """One frame's Gaussians in world coordinates (float32 unless noted)."""

    means_n3: np.ndarray  # [N, 3] centres, world units
    quats_n4: np.ndarray  # [N, 4] unit quaternions (w, x, y, z)
    scales_n3: np.ndarray  # [N, 3] standard deviations along the local axes (linear)
    opacities_n: np.ndarray  # [N] in [0, 1]
    colors_n3: np.ndarray  # [N, 3] RGB in [0, 1]
    moving_n: np.ndarray  # bool [N] in the moving set at this frame
    ids_n: np.ndarray  # int64 [N] persistent identity

    def __len__(self) -> int:
        return len(self.ids_n)

    def subset(self, keep_n: np.ndarray) -> FrameGaussians:
        """The Gaussians selected by a bool mask or index array."""
        return FrameGaussians(
            **{f.name: getattr(self, f.name)[keep_n] for f in dataclasses.fields(self)}
        )


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(0.01, 0.99)
    return torch.log(p / (1.0 - p))


@dataclass
class Gaussians:
    """The Gaussians alive now: leaf tensors the optimiser updates, plus ids and moving flags."""

    means_n3: torch.Tensor
    log_scales_n3: torch.Tensor
    quats_n4: torch.Tensor  # raw; normalised on use
    opacity_logits_n: torch.Tensor
    color_logits_n3: torch.Tensor
    moving_n: torch.Tensor  # bool
    ids_n: torch.Tensor  # int64

    @classmethod
    def create(
        cls,
        means_n3: torch.Tensor,
        scales_n3: torch.Tensor,
        colors_n3: torch.Tensor,
        opacity: float,
        moving_n: torch.Tensor,
        ids_n: torch.Tensor,
    ) -> Gaussians:
        """New isotropic, axis-aligned Gaussians."""
        n = len(means_n3)
        quats_n4 = torch.zeros(n, 4, dtype=means_n3.dtype, device=means_n3.device)
        quats_n4[:, 0] = 1.0
        return cls(
            means_n3=means_n3.detach().clone(),
            log_scales_n3=torch.log(scales_n3.clamp_min(_EPS)),
            quats_n4=quats_n4,
            opacity_logits_n=_logit(torch.full_like(means_n3[:, 0], opacity)),
            color_logits_n3=_logit(colors_n3),
            moving_n=moving_n.clone(),
            ids_n=ids_n.clone(),
        )

    def __len__(self) -> int:
        return len(self.ids_n)

    def parameters(self) -> dict[str, torch.Tensor]:
        """The optimisable tensors by name (`PARAMETER_NAMES`, the optimiser groups' names)."""
        tensors = (
            self.means_n3,
            self.log_scales_n3,
            self.quats_n4,
            self.opacity_logits_n,
            self.color_logits_n3,
        )
        return dict(zip(PARAMETER_NAMES, tensors, strict=True))

    def optimiser(self, lr: float, scene_scale: float) -> torch.optim.Adam:
        """A fresh Adam over the parameters (gradients on): one group each, at `lr` times the
        group's `_LR_SCALE`, the means' also times `scene_scale`."""
        self.requires_grad_(True)
        groups = []
        for name, tensor in self.parameters().items():
            scale = _LR_SCALE[name] * (scene_scale if name == "means" else 1.0)
            groups.append({"params": [tensor], "lr": lr * scale, "name": name})
        return torch.optim.Adam(groups, eps=1e-15, fused=True)  # one kernel per group

    def requires_grad_(self, flag: bool = True) -> Gaussians:
        for tensor in self.parameters().values():
            tensor.requires_grad_(flag)
        return self

    @property
    def scales_n3(self) -> torch.Tensor:
        return torch.exp(self.log_scales_n3)

    @property
    def unit_quats_n4(self) -> torch.Tensor:
        return self.quats_n4 / self.quats_n4.norm(dim=-1, keepdim=True).clamp_min(_EPS)

    @property
    def opacities_n(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits_n)

    @property
    def colors_n3(self) -> torch.Tensor:
        return torch.sigmoid(self.color_logits_n3)

    def subset(self, keep_n: torch.Tensor) -> Gaussians:
        """The Gaussians selected by a bool mask or index tensor, as new detached leaves."""
        return Gaussians(*(getattr(self, f)[keep_n].detach().clone() for f in _FIELDS))

    def concat(self, other: Gaussians) -> Gaussians:
        return Gaussians(
            *(torch.cat([getattr(self, f).detach(), getattr(other, f).detach()]) for f in _FIELDS)
        )

    def to_frame(self) -> FrameGaussians:
        def n(x: torch.Tensor) -> np.ndarray:
            return x.detach().cpu().numpy()

        return FrameGaussians(
            means_n3=n(self.means_n3).astype(np.float32),
            quats_n4=n(self.unit_quats_n4).astype(np.float32),
            scales_n3=n(self.scales_n3).astype(np.float32),
            opacities_n=n(self.opacities_n).astype(np.float32),
            colors_n3=n(self.colors_n3).astype(np.float32),
            moving_n=n(self.moving_n).astype(bool),
            ids_n=n(self.ids_n).astype(np.int64),
        )

    def render(
        self,
        w2c_44: torch.Tensor,
        K_33: torch.Tensor,
        width: int,
        height: int,
        *,
        select_n: torch.Tensor | None = None,
        colors_n3: torch.Tensor | None = None,
        backend: str = "auto",
    ) -> RenderOutput:
        """Renders all Gaussians (or the selected ones) through one camera, differentiably."""
        means, quats, scales = self.means_n3, self.unit_quats_n4, self.scales_n3
        opacities = self.opacities_n
        colors = self.colors_n3 if colors_n3 is None else colors_n3
        if select_n is not None:
            means, quats, scales = means[select_n], quats[select_n], scales[select_n]
            opacities, colors = opacities[select_n], colors[select_n]
        return render(
            means, quats, scales, opacities, colors, w2c_44, K_33, width, height, backend=backend
        )


_FIELDS = (
    "means_n3",
    "log_scales_n3",
    "quats_n4",
    "opacity_logits_n",
    "color_logits_n3",
    "moving_n",
    "ids_n",
)


def mean_depth_hw(out: RenderOutput) -> torch.Tensor:
    """Rendered depth as the opacity-weighted mean camera z (0 where nothing is rendered)."""
    return out.depth_hw / out.alpha_hw.clamp_min(_EPS)


def render_frame(
    frame: FrameGaussians,
    c2w_44: np.ndarray,
    K_33: np.ndarray,
    width: int,
    height: int,
    *,
    colors_n3: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    backend: str = "auto",
) -> RenderOutput:
    """Renders a frame snapshot (optionally with other colours per Gaussian), without gradients."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, np.float32), device=device)

    w2c_44 = np.linalg.inv(np.asarray(c2w_44, np.float64))
    colors = frame.colors_n3 if colors_n3 is None else colors_n3
    with torch.no_grad():
        return render(
            t(frame.means_n3),
            t(frame.quats_n4),
            t(frame.scales_n3),
            t(frame.opacities_n),
            t(colors),
            t(w2c_44),
            t(K_33),
            width,
            height,
            backend=backend,
        )
