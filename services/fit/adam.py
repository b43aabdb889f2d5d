"""One step of the fit's fused Adam without torch.optim's Python around its kernel.

A fit step on the GPU is bound by the host (docs/fit.md, "Compiling the loss code"), and
`torch.optim.Adam.step` spends about 0.5 ms of it per step on Python (hooks, profiler ranges,
grouping tensors by device, one step-count launch per group) around the one kernel per group
that does the work. `fused_adam_step` launches the same kernels on the same state: one step-count
increment for all groups, then `torch._fused_adam_` per group, so the result is bit for bit that of
`optimiser.step()` (tests/unit/test_adam.py holds it to that).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def fused_adam_step(optimiser: torch.optim.Adam) -> None:
    """`optimiser.step()` for a fused Adam without AMSGrad, weight decay or maximisation (the
    fit's optimisers): parameters without a gradient are skipped, state starts as torch's."""
    per_group, steps = [], []
    for group in optimiser.param_groups:
        if not group["fused"] or group["amsgrad"] or group["weight_decay"] or group["maximize"]:
            raise ValueError("fused_adam_step takes a fused Adam without amsgrad/decay/maximize")
        params, grads, exp_avgs, exp_avg_sqs, group_steps = [], [], [], [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            state = optimiser.state[param]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            params.append(param)
            grads.append(param.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            group_steps.append(state["step"])
        if params:
            per_group.append((group, params, grads, exp_avgs, exp_avg_sqs, group_steps))
            steps.extend(group_steps)
    if not steps:
        return
    torch._foreach_add_(steps, 1)
    for group, params, grads, exp_avgs, exp_avg_sqs, group_steps in per_group:
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            group_steps,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=group["eps"],
            amsgrad=False,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )
