"""One optimizer step of an adapted model: the loss in the run's precision, the method's own loss
term and its per-step hook. ``bench.train.fit`` trains with it; `bench perf`, `bench gpu-check` and
the run planner time it (``method_steps``), so a method's per-step work (AdaLoRA's regulariser and
rank allocation) is in the throughput they report."""
from __future__ import annotations

import functools
import itertools
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import methods

from .device import autocast


def train_step(step_fn, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               device: str, precision: str | None = None, extra_loss: Callable | None = None) -> torch.Tensor:
    """One optimizer step in ``precision``'s autocast; returns the detached loss without a host sync
    (the caller checks it for NaN/inf every few steps, so the GPU never waits on the CPU).
    ``extra_loss()``: the method's own term (``Method.extra_loss``), added in fp32 after the forward,
    outside autocast and outside the compiled ``step_fn``: the same term whether the step is
    compiled or not; when it returns None the loss is the cross-entropy itself."""
    with autocast(device, precision):
        loss = F.cross_entropy(step_fn(x), y)
    term = extra_loss() if extra_loss is not None else None
    if term is not None:
        loss = loss + term
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def method_step(method, model: nn.Module, step_fn, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, device: str, precision: str | None, step: int) -> torch.Tensor:
    """One optimizer step of ``model`` with ``method``'s (``methods.get(model.peft_method)``) per-step
    hooks: its ``extra_loss`` in the loss and its ``after_step`` after the step, ``step`` being this
    step's number in the fit (from 1). How ``bench.train.fit`` trains, and what ``method_steps`` times."""
    loss = train_step(step_fn, optimizer, x, y, device, precision, functools.partial(method.extra_loss, model))
    method.after_step(model, step)
    return loss


def method_steps(model: nn.Module, optimizer: torch.optim.Optimizer, device: str, precision: str | None = None,
                 step_fn=None, total_steps: int = 10_000) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``step(x, y)``: one optimizer step of ``model`` as a fit takes it (``method_step``, after
    ``begin_fit`` once with ``total_steps``), through ``step_fn`` (the model, or its compiled form).
    What `bench perf`, `bench gpu-check` and the run planner time, so a method's per-step work
    (AdaLoRA's regulariser and rank allocation) is in its throughput."""
    method = methods.get(model.peft_method)
    method.begin_fit(model, total_steps)
    count = itertools.count(1)
    step_fn = model if step_fn is None else step_fn  # not `or`: a module's truth is its len(), if any

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return method_step(method, model, step_fn, optimizer, x, y, device, precision, next(count))

    return step
