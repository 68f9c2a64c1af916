"""The optimizer tests' training loop, shared by the CPU and CUDA tests."""

from __future__ import annotations


def train(opt, loss_fn, steps: int, closure: bool) -> None:
    """``steps`` steps of ``opt`` on ``loss_fn``: ``opt.step(loss_fn)`` with ``closure`` (Newton types:
    the optimizer differentiates the loss), else ``loss_fn().backward(); opt.step()``."""
    for _ in range(steps):
        if closure:
            opt.step(loss_fn)
        else:
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
