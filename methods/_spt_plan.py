"""SPT's selection (``methods.spt``): the sensitivity pass over the first training batches and the
sweep that turns the sensitivities into a selection under a parameter budget, as ziplab/SPT@e385f67
``engine.py`` ``get_sensitivity`` computes them.

Tensors are named as in the official ``vit_base_patch16_224_in21k_sep_qkv`` model, where q, k and
v are separate Linears: ``blocks.<i>.attn.q.weight`` is the first third of the rows of timm's fused
``blocks.<i>.attn.qkv.weight`` (``k`` the second, ``v`` the third; the same for the bias). A
tensor's sensitivities are the same either way: the gradient of an entry does not depend on how
the rows are grouped into modules.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .families import DROP_PATHS, layout_of, set_drop_path

STEP = 0.02  # engine.py: ``for param_num in range(1, 80): param_num = param_num * 0.02`` (millions of entries)
STEPS = range(1, 80)
MAX_BUDGET = 79 * STEP  # the sweep's last step: 1.58M sensitive entries
BETA = 5.0  # train_spt.py --beta: a vector is tuned whole when >= 1/beta of it is sensitive
BATCH_SIZE = 32  # configs/vtab_*_spt_*_sensitivity.sh --batch-size=32
BATCHES = 16  # train_spt.py --sensitivity_batch_num default
PASS_DROP_PATH = 0.1  # train_spt.py --drop-path default: the sensitivity model's stochastic depth
VECTOR_KEYWORDS = ("norm", "bias")  # engine.py grad_vector_kwd_list (checked first)
MATRIX_KEYWORDS = (".q.", ".k.", ".v.", "proj", "fc")  # engine.py grad_matrix_kwd_list


def structured_count(kind: str, in_dim: int, out_dim: int, rank: int) -> int:
    """engine.py ``get_structured_param_num``: the parameters of one structured module in place of
    an ``out_dim`` x ``in_dim`` matrix (the adapter's is sequential: out -> rank -> out, with biases)."""
    if kind == "lora":
        return in_dim * rank + rank * out_dim
    if kind == "adapter":
        return out_dim * rank + rank * out_dim + rank + out_dim
    raise ValueError(f"spt: unknown structured module {kind!r}; known: lora, adapter")


@dataclass
class Selection:
    """What trains, by official tensor name: ``structured`` matrices get a LoRA or adapter module,
    ``vectors`` (norm affines, biases) train whole, ``entries`` holds each other tensor's
    unstructured entries (flat indices, ascending). ``planned`` is the count the sweep compared
    with the budget (unstructured entries + structured modules + whole vectors + the class token)."""

    structured: tuple[str, ...] = ()
    vectors: tuple[str, ...] = ()
    entries: dict[str, torch.Tensor] = field(default_factory=dict)
    planned: int = 0


def _decide(names, shapes, counts, cost: Callable[[int, int], int], alpha: float):
    """One sweep step (engine.py, the loop over ``grad_shapes``): (unstructured entries, structured
    parameters, structured names, whole vectors) for ``counts`` sensitive entries per tensor."""
    unstructured = structured = 0
    matrices, vectors = [], []
    for name, shape, count in zip(names, shapes, counts):
        if any(k in name for k in VECTOR_KEYWORDS):
            if len(shape) == 1 and count >= shape[0] / BETA:  # --structured_vector
                structured += shape[0]
                vectors.append(name)
            else:
                unstructured += count
        elif any(k in name for k in MATRIX_KEYWORDS):
            size = cost(shape[1], shape[0])
            if count >= size / alpha:
                structured += size
                matrices.append(name)
            else:
                unstructured += count
        else:
            raise ValueError(f"spt: {name} is neither a vector nor a weight matrix the sweep knows")
    return unstructured, structured, matrices, vectors


def sweep(scores: dict[str, torch.Tensor], cost: Callable[[int, int], int], budget: float, alpha: float,
          extra: int) -> Selection:
    """The official sweep: for tau = 0.02M, 0.04M ... 1.58M the tau most sensitive entries (of all
    ``scores`` together, ``torch.topk``) are counted per tensor; a matrix with at least
    ``cost(in, out) / alpha`` of them gets a structured module instead, a vector with at least 1/beta
    of its entries trains whole; the step whose total (+ ``extra``, the class token) is closest to
    ``budget`` millions wins (ties: the later step), as ``param_req_<budget>.pth``. The top entries
    are ranked once and each step takes a prefix (the same sets as topk(tau), ties aside)."""
    names, shapes = list(scores), [tuple(s.shape) for s in scores.values()]
    sizes = [s.numel() for s in scores.values()]
    flat = torch.cat([s.detach().flatten().float() for s in scores.values()])
    taus = [k for k in (math.ceil(j * STEP * 1e6) for j in STEPS) if k <= flat.numel()]
    if not taus:
        raise ValueError(f"spt: the backbone has {flat.numel():,} scored entries, fewer than the sweep's first step")
    top = flat.topk(taus[-1]).indices
    ends = torch.tensor(sizes, device=top.device).cumsum(0)
    owner = torch.bucketize(top, ends, right=True)
    target, best, best_total, smallest = budget * 1e6, None, 0, None
    counts, done = torch.zeros(len(names), dtype=torch.long, device=top.device), 0
    for tau in taus:
        counts += torch.bincount(owner[done:tau], minlength=len(names))
        done = tau
        unstructured, structured, matrices, vectors = _decide(names, shapes, counts.tolist(), cost, alpha)
        total = unstructured + structured + extra
        smallest = total if smallest is None else smallest
        if abs(total - target) <= abs(best_total - target):  # best_total starts at 0, as the official dict
            best, best_total = (tau, matrices, vectors), total
    if best is None:
        raise ValueError(f"spt: budget {budget}M is below half the smallest selection of the sweep "
                         f"({smallest:,} parameters on this backbone); raise the budget")
    tau, matrices, vectors = best
    return Selection(tuple(matrices), tuple(vectors), _entries(top[:tau], owner[:tau], names, sizes,
                                                               set(matrices) | set(vectors)), best_total)


def _entries(chosen, owner, names, sizes, whole: set) -> dict[str, torch.Tensor]:
    """The unstructured entries (flat indices, ascending) of every tensor not structured or whole."""
    counts = torch.bincount(owner, minlength=len(names)).tolist()
    starts = [0] + torch.tensor(sizes).cumsum(0).tolist()[:-1]
    pieces = chosen.sort().values.split(counts)  # sorted global indices are grouped by tensor
    return {n: (p - start).cpu() for n, p, start in zip(names, pieces, starts) if n not in whole}


def rebatch(batches: Iterable, size: int = BATCH_SIZE, count: int = BATCHES) -> Iterator:
    """The first ``count`` batches of ``size`` images of ``batches`` (in their order; the last one
    smaller if the split ends first), reading no more of ``batches`` than they need."""
    xs, ys, held, made = [], [], 0, 0
    for x, y in batches:
        xs.append(x)
        ys.append(torch.as_tensor(y))
        held += len(x)
        while held >= size and made < count:
            x_all, y_all = torch.cat(xs), torch.cat(ys)
            yield x_all[:size], y_all[:size]
            xs, ys, held, made = [x_all[size:]], [y_all[size:]], held - size, made + 1
        if made == count:
            return
    if held:
        yield torch.cat(xs), torch.cat(ys)


@contextmanager
def _pass_drop_path(model: nn.Module):
    """timm's stochastic depth at ``PASS_DROP_PATH`` during the pass; the blocks' own after it."""
    blocks = [model.get_submodule(path) for path in layout_of(model).blocks]
    saved = [(b, name, m) for b in blocks for name, m in b.named_children() if name in DROP_PATHS]
    set_drop_path(model, PASS_DROP_PATH)
    try:
        yield
    finally:
        for block, name, module in saved:
            setattr(block, name, module)


def sensitivities(model: nn.Module, tensors: list[nn.Parameter], batches: Iterable, seed: int) -> list[torch.Tensor]:
    """engine.py ``get_sensitivity``'s pass: the model in train mode (stochastic depth 0.1), for each of
    the first 16 batches of 32 training images in order the cross-entropy of the logits, its
    gradient, and the sum over batches of the squared gradient of each of ``tensors``. Seeded by
    ``seed`` (the drop-path masks); the caller's random state and the model's modes are kept."""
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    device = tensors[0].device
    sums = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
    seen = 0
    try:
        model.requires_grad_(False)
        for t in tensors:
            t.requires_grad_(True)
            t.grad = None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                _pass_drop_path(model):
            torch.manual_seed(seed)
            model.train()
            for x, y in rebatch(batches):
                for t in tensors:
                    t.grad = None
                F.cross_entropy(model(x), y.to(x.device)).backward()
                for s, t in zip(sums, tensors):
                    s += t.grad.float() ** 2
                seen += 1
    finally:
        for t in tensors:
            t.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    if not seen:
        raise ValueError("spt: the sensitivity pass saw no training batch")
    return sums
