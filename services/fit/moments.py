"""Adam's moments that follow each Gaussian by its id (`FitConfig.keep_adam_state`).

The engine makes a new Adam for every densification pass and every frame (the set of Gaussians
changes). A fresh Adam's moments are zero, so its first steps move every parameter by about its
learning rate whatever the gradient: each pass shakes all Gaussians, and the loss of a step jumps
to two or three times its value before it settles (docs/fit.md, "Adam's state across
densification and frames"). Kept moments let the new optimiser continue where the last one
stopped; only new Gaussians start from zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from services.fit.gaussians import PARAMETER_NAMES, Gaussians

_MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class AdamMoments:
    """Adam's state per parameter group (the names of `Gaussians.parameters`) for the Gaussians
    `ids_n`: the step count [] and both moments, one row per id."""

    ids_n: torch.Tensor
    step: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]

    @classmethod
    def of(cls, optimiser: torch.optim.Adam, gaussians: Gaussians) -> AdamMoments | None:
        """The state of `optimiser` (made by `gaussians.optimiser`); None before its first step."""
        state = {}
        for group in optimiser.param_groups:
            state[group["name"]] = optimiser.state.get(group["params"][0])
        if not all(state.values()):
            return None
        return cls(
            ids_n=gaussians.ids_n.clone(),
            step={name: s["step"].detach().clone() for name, s in state.items()},
            exp_avg={name: s["exp_avg"].detach().clone() for name, s in state.items()},
            exp_avg_sq={name: s["exp_avg_sq"].detach().clone() for name, s in state.items()},
        )

    def load_into(self, optimiser: torch.optim.Adam, gaussians: Gaussians) -> None:
        """Gives a fresh `optimiser` of `gaussians` these moments for the Gaussians it has ids of
        (zeros for the others) and the step counts."""
        order = torch.argsort(self.ids_n)
        sorted_ids = self.ids_n[order]
        at = torch.searchsorted(sorted_ids, gaussians.ids_n).clamp_max(len(sorted_ids) - 1)
        kept_n = sorted_ids[at] == gaussians.ids_n
        source_k = order[at[kept_n]]
        for group in optimiser.param_groups:
            name, param = group["name"], group["params"][0]
            state = {"step": self.step[name].clone()}
            for moment in _MOMENTS:
                values = torch.zeros_like(param)
                values[kept_n] = getattr(self, moment)[name][source_k]
                state[moment] = values
            optimiser.state[param] = state

    def to_arrays(self) -> dict[str, np.ndarray]:
        """For a checkpoint: `adam_ids_n`, and `adam_<name>_<step|exp_avg|exp_avg_sq>`."""
        arrays = {"adam_ids_n": self.ids_n.cpu().numpy()}
        for part in ("step", *_MOMENTS):
            for name, tensor in getattr(self, part).items():
                arrays[f"adam_{name}_{part}"] = tensor.cpu().numpy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], device: torch.device) -> AdamMoments | None:
        """Inverse of `to_arrays`; None when the checkpoint holds no moments."""
        if "adam_ids_n" not in arrays:
            return None

        def part(kind: str) -> dict[str, torch.Tensor]:
            return {
                name: torch.as_tensor(arrays[f"adam_{name}_{kind}"], device=device)
                for name in PARAMETER_NAMES
            }

        return cls(
            ids_n=torch.as_tensor(arrays["adam_ids_n"], device=device),
            step=part("step"),
            exp_avg=part("exp_avg"),
            exp_avg_sq=part("exp_avg_sq"),
        )
