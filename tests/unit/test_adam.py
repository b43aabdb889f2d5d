"""fused_adam_step: bit for bit torch.optim.Adam(fused=True).step(), with less host time."""

from __future__ import annotations

import pytest
import torch

from services.fit.adam import fused_adam_step


def _model(seed: int = 0) -> tuple[list[torch.Tensor], torch.optim.Adam]:
    """Five parameters of the Gaussians' shapes, one group each at its own rate (as
    `Gaussians.optimiser`), plus a group whose parameter never gets a gradient."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(64, 3), (64, 3), (64, 4), (64,), (64, 3), (5,)]
    params = [torch.randn(shape, generator=generator).requires_grad_() for shape in shapes]
    groups = [{"params": [p], "lr": 1e-3 * (i + 1)} for i, p in enumerate(params)]
    return params, torch.optim.Adam(groups, eps=1e-15, fused=True)


def _train(step, steps: int, preload: bool = False) -> tuple[list[torch.Tensor], torch.optim.Adam]:
    params, optimiser = _model()
    if preload:  # moments carried in (`AdamMoments.load_into`): the steps continue from them
        for i, p in enumerate(params[:5]):
            optimiser.state[p] = {
                "step": torch.tensor(7.0),
                "exp_avg": torch.full_like(p, 0.01 * (i + 1)),
                "exp_avg_sq": torch.full_like(p, 1e-4),
            }
    for i in range(steps):
        optimiser.zero_grad(set_to_none=True)
        loss = sum((torch.sin(p * (i + 1)) ** 2).sum() for p in params[:5])
        loss.backward()
        step(optimiser)
    return params, optimiser


@pytest.mark.parametrize("preload", [False, True])
def test_fused_adam_step_is_bitwise_optimiser_step(preload: bool) -> None:
    reference, ref_optimiser = _train(lambda o: o.step(), steps=12, preload=preload)
    ours, our_optimiser = _train(fused_adam_step, steps=12, preload=preload)
    for ref, mine in zip(reference, ours, strict=True):
        assert torch.equal(ref, mine)
    assert not reference[5].grad and reference[5] not in ref_optimiser.state
    assert ours[5] not in our_optimiser.state  # no gradient: untouched, no state made
    for ref, mine in zip(reference[:5], ours[:5], strict=True):
        ref_state, our_state = ref_optimiser.state[ref], our_optimiser.state[mine]
        assert float(our_state["step"]) == float(ref_state["step"]) == 12 + (7 if preload else 0)
        assert our_state["step"].dtype == ref_state["step"].dtype
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(our_state[key], ref_state[key])


def test_fused_adam_step_refuses_what_it_does_not_implement() -> None:
    param = torch.zeros(3, requires_grad=True)
    param.grad = torch.ones(3)
    for options in ({"fused": False}, {"fused": True, "weight_decay": 0.1}):
        with pytest.raises(ValueError, match="fused Adam"):
            fused_adam_step(torch.optim.Adam([param], **options))
