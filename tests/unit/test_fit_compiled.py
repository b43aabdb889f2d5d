"""The fit's fused loss units (`compiled.fuse`) trace whole and compute what the eager code does.

On CUDA the engine hands `losses.gaussians_loss`, `losses.camera_loss` and `camera.posed_w2c_44`
to torch.compile (inductor). Here, on the CPU, the same units go through dynamo and AOTAutograd
with the `aot_eager` backend (no code generation): that checks what can break in the compiled
path (graph breaks, guards, a recompile when the Gaussian count changes) against the eager
values and gradients. tests/gpu/test_fit_compiled.py runs inductor itself on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters

from services.fit.camera import posed_w2c_44
from services.fit.compiled import fuse
from services.fit.config import FitRuntime, preset
from services.fit.gaussians import mean_depth_hw
from services.fit.losses import (
    FlowTargets,
    camera_loss,
    gaussians_loss,
    photometric_target,
    term_weights,
)
from tests.unit.test_fit_state import K_33, H, W, _gaussians

BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _gaussians_step(n: int, fused: bool) -> tuple[torch.Tensor, dict, dict]:
    """Loss, terms and parameter gradients of one Gaussians step on n Gaussians."""
    g = _gaussians(n)
    w2c_44, K_t = torch.eye(4), torch.tensor(K_33, dtype=torch.float32)
    with torch.no_grad():
        reference = g.render(w2c_44, K_t, W, H, backend="torch")
    target_hw3 = (reference.rgb_hw3 * 0.9 + 0.05).flip(1)
    prior_hw = mean_depth_hw(reference) * 1.1
    g.requires_grad_(True)
    out = g.render(w2c_44, K_t, W, H, backend="torch")
    moving_m = torch.nonzero(g.moving_n)[:, 0]
    flow = FlowTargets(moving_m, torch.full((len(moving_m), 2), 10.0), w2c_44, K_t)
    step = fuse(gaussians_loss, fused, backend=BACKEND)
    loss, terms = step(
        out,
        photometric_target(target_hw3),
        prior_hw,
        torch.ones(H, W, dtype=torch.bool),
        g,
        term_weights(preset("default")),
        ssim_share=0.2,
        anchor_n3=g.means_n3.detach() + 0.01,
        footprint=0.01,
        flow=flow,
    )
    loss.backward()
    grads = {name: p.grad.clone() for name, p in g.parameters().items()}
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, grads


def test_gaussians_loss_fused_equals_eager_and_follows_a_new_count():
    for n in (40, 56):  # the second count is a densified model: a recompile, not a fallback
        eager_loss, eager_terms, eager_grads = _gaussians_step(n, fused=False)
        loss, terms, grads = _gaussians_step(n, fused=True)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-7)
        assert terms.keys() == eager_terms.keys()
        for name in terms:
            torch.testing.assert_close(terms[name], eager_terms[name], rtol=1e-6, atol=1e-7)
        for name in grads:
            torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-5, atol=1e-7)
    assert counters["graph_break"] == {}
    assert counters["stats"]["unique_graphs"] >= 1


def test_camera_step_fused_equals_eager():
    gen = torch.Generator().manual_seed(5)
    rgb_hw3 = torch.rand(H, W, 3, generator=gen).requires_grad_(True)
    target = photometric_target(torch.rand(H, W, 3, generator=gen))
    weight_hw = (torch.rand(H, W, generator=gen) > 0.3).float()
    points_p3 = torch.rand(30, 3, generator=gen) + torch.tensor([0.0, 0.0, 3.0])
    pixels_p2 = torch.rand(30, 2, generator=gen) * torch.tensor([W, H])
    K_t = torch.tensor(K_33, dtype=torch.float32)
    w2c_init_44 = torch.eye(4)

    def step(fused: bool) -> tuple[torch.Tensor, ...]:
        omega_3 = torch.tensor([0.01, -0.02, 0.005], requires_grad=True)
        tau_3 = torch.tensor([0.03, 0.01, -0.02], requires_grad=True)
        rgb_hw3.grad = None
        w2c_44 = fuse(posed_w2c_44, fused, backend=BACKEND)(omega_3, tau_3, 2.5, w2c_init_44)
        loss = fuse(camera_loss, fused, backend=BACKEND)(
            rgb_hw3, target, weight_hw, 0.2, points_p3, pixels_p2, w2c_44, K_t, 0.01
        )
        loss.backward()
        return loss.detach(), w2c_44.detach(), omega_3.grad, tau_3.grad, rgb_hw3.grad.clone()

    for fused_value, eager_value in zip(step(True), step(False), strict=True):
        torch.testing.assert_close(fused_value, eager_value, rtol=1e-5, atol=1e-7)
    assert counters["graph_break"] == {}


def test_fuse_disabled_is_the_function_itself():
    assert fuse(camera_loss, False) is camera_loss
    assert FitRuntime(compile=True).compiles_on("cuda")
    assert not FitRuntime(compile=True).compiles_on("cpu")  # the CPU always runs eagerly
    assert not FitRuntime().compiles_on("cuda")  # off by default
    assert fuse(camera_loss, True, backend=BACKEND) is fuse(camera_loss, True, backend=BACKEND)


def test_a_unit_the_compiler_cannot_build_runs_eagerly_with_a_warning(caplog):
    """A machine without a working compiler (no Triton, no C compiler) loses speed, not the fit."""
    attempts = []

    def broken_backend(graph_module, example_inputs):
        attempts.append(1)
        raise RuntimeError("Cannot find a working triton installation")

    w2c_init_44 = torch.eye(4)
    omega_3, tau_3 = torch.tensor([0.01, -0.02, 0.03]), torch.tensor([0.1, 0.0, -0.1])
    step = fuse(posed_w2c_44, True, backend=broken_backend)
    with caplog.at_level("WARNING", logger="services.fit.compiled"):
        first = step(omega_3, tau_3, 2.0, w2c_init_44)
        second = step(omega_3, tau_3, 2.0, w2c_init_44)
    expected = posed_w2c_44(omega_3, tau_3, 2.0, w2c_init_44)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert len(attempts) == 1  # the compiler is not tried again
    assert "runs eagerly from now on" in caplog.text and "posed_w2c_44" in caplog.text


def test_a_backward_pass_the_compiler_cannot_build_falls_back_before_any_step(caplog):
    """AOTAutograd would compile a unit's backward pass lazily, at the first loss.backward(), out
    of `fuse`'s reach (inductor's C++ wrapper failed exactly there on the H200): `fuse` has it
    compiled with the forward pass, so a failure there also ends in the eager unit."""

    def forward_compiler(graph_module, example_inputs):
        return make_boxed_func(graph_module.forward)

    def broken_backward_compiler(graph_module, example_inputs):
        raise RuntimeError("CudaKernelParamCache not populated")

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=broken_backward_compiler)
    w2c_init_44 = torch.eye(4)

    def pose_gradients(fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        omega_3 = torch.tensor([0.01, -0.02, 0.03], requires_grad=True)
        tau_3 = torch.tensor([0.1, 0.0, -0.1], requires_grad=True)
        step = fuse(posed_w2c_44, fused, backend=backend)
        (step(omega_3, tau_3, 2.0, w2c_init_44) ** 2).sum().backward()
        return omega_3.grad, tau_3.grad

    with caplog.at_level("WARNING", logger="services.fit.compiled"):
        fused_grads = pose_gradients(fused=True)
    for fused_grad, eager_grad in zip(fused_grads, pose_gradients(fused=False), strict=True):
        assert torch.equal(fused_grad, eager_grad)
    assert "runs eagerly from now on" in caplog.text
