"""``torch.compile`` of a fit's step (``--compile``): whether a model's step is compiled (its
method may declare ``compiles = False``, with ``compile_why``: it then runs eagerly and its runs
say so, ``bench.run.records``), and the compiling itself, which keeps dynamo from silently falling
back to eager after a process has compiled ``recompile_limit`` kinds of model."""
from __future__ import annotations

import torch
import torch.nn as nn

import methods

_last_method: list[str] = []  # the method whose models this process compiled last


def compiles(model: nn.Module, compile: bool) -> bool:
    """Whether a fit of ``model`` with ``--compile`` = ``compile`` compiles its step: not for a
    method that declares ``compiles = False``."""
    return compile and methods.get(model.peft_method).compiles


def compile_step(step_fn, method: str):
    """``torch.compile(step_fn)``, dynamo's caches emptied first when ``method`` differs from the
    last one compiled in this process: dynamo compiles one function for at most ``recompile_limit``
    (8) kinds of model and runs the 9th eagerly without a word, so a worker fitting its 9th method
    would silently stop compiling. Models of one method (its trials, its seeds) reuse the cache."""
    if _last_method != [method]:
        torch.compiler.reset()
        _last_method[:] = [method]
    return torch.compile(step_fn)
