"""PSGD on a GPU runs the CPU's code path: in float64 every family and curvature source follows the CPU run
step for step (the probes are a counter-based hash computed on the parameters' device, so both draw the same
vectors); an optimizer built before its model moved to the GPU follows it there, eager and compiled.
Skipped without CUDA. (test_optimizers.py compiles a Kron step on the GPU too, where one is present.)"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from genlib.optim import LRA, Dense, Diag, Kron, XMat
from genlib.optim.preconditioners import HOST_COUNTERS
from tests.optim._steps import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FAMILIES = {"dense": Dense, "lra": LRA, "kron": Kron, "xmat": XMat, "diag": Diag}


def _problem(device: str):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 6, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(6, 4, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).double().to(device)
    X, Y = X.to(device), Y.to(device)
    return model, lambda: (model(X) - Y).square().mean()


@pytest.mark.parametrize("curvature", ["whiten", "hvp"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_run_follows_the_cpu_run(family, curvature):
    runs = []
    for device in ("cpu", "cuda"):
        model, loss = _problem(device)
        opt = FAMILIES[family](model.parameters(), lr=0.1, momentum=0.9 if curvature == "whiten" else 0.0,
                               curvature=curvature, seed=3)
        train(opt, loss, 25, closure=curvature != "whiten")
        assert all(s.device.type == device for st in opt.state.values() for s in st.values()
                   if isinstance(s, torch.Tensor) and s.dim() > 0)
        runs.append([p.detach().cpu() for p in model.parameters()])
    # Q's first scale comes from a float32 norm of the first pair, whose CPU and GPU reductions differ in
    # the last bits: the runs agree to ~1e-6 relative (an H200, 2026-12-04); other probes differ by ~1e-2
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=1e-7)


def _train(model, opt, X, Y, steps: int, step=None) -> None:
    step = step or opt.step
    for _ in range(steps):
        opt.zero_grad()
        (model(X) - Y).square().mean().backward()
        step()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_optimizer_built_before_the_model_moved_follows_it_to_the_gpu(family, compiled):
    # model.to("cuda") keeps the Parameter objects: the preconditioners, built on the CPU, must move
    torch.manual_seed(0)
    X, Y = torch.randn(32, 6, device="cuda"), torch.randn(32, 4, device="cuda")
    cpu_model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    twin_model = copy.deepcopy(cpu_model).cuda()
    opt = FAMILIES[family](cpu_model.parameters(), lr=0.01, momentum=0.9, check_finite=False)
    model = cpu_model.cuda()
    twin = FAMILIES[family](twin_model.parameters(), lr=0.01, momentum=0.9, check_finite=False)
    _train(model, opt, X, Y, 5, torch.compile(opt.step) if compiled else None)
    _train(twin_model, twin, X, Y, 5)
    for p, st in opt.state.items():
        for k, t in st.items():
            assert k in HOST_COUNTERS or t.device == p.device, (k, t.device)
    for a, b in zip(model.parameters(), twin_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
