"""SPT (He et al., "Sensitivity-Aware Visual Parameter-Efficient Fine-Tuning", ICCV 2023): a pass
over training data scores every weight entry of the blocks by its squared gradient; under a budget
of trainable parameters, the weight matrices with many sensitive entries get a structured module
(``spt_lora``: LoRA, ``spt_adapter``: an adapter), the vectors with many get trained whole, and the
other sensitive entries train one by one (unstructured). As ziplab/SPT builds it (commit e385f67):
``engine.py`` ``get_sensitivity`` (the selection: ``methods._spt_plan``), ``train_spt.py`` (how a
selection becomes a model), ``model/vision_transformer_timm.py`` (``VisionTransformerSPT``,
``BlockSPTParallel`` / ``BlockSPTSeq``, ``StructuredTuningModule``, ``LinearSPTSparseGrad``), with
the settings of ``configs/vtab_supervised_spt_{lora,adapter}{_sensitivity,}.sh``. Compared with that
code (the pass, the sweep, the models, training steps, the cifar count below) by
``benchmarks/official/spt.py``, which reads it from a checkout (results: docs/measurements.md);
tests/test_spt.py checks the rules written here.

The selection (``select``, called by ``bench.train.fit`` once per fit on its training split only,
in the split's order, before the optimizer exists; ``get_sensitivity``): the model in train mode
with timm's stochastic depth 0.1 (``--drop-path`` default), the first 16 batches of 32 images
(``--sensitivity_batch_num 16``, ``--batch-size=32``, a ``SequentialSampler``), the cross-entropy
of the logits, fp32; the sensitivity of an entry is its squared gradient summed over the batches.
Scored: the weights and biases of q, k, v, proj, fc1, fc2 and the affines of norm1, norm2 and the
final norm (``grad_skip_kwd_list``: never the head, class token, patch embedding or position
embedding). Then the sweep: for tau = 0.02M, 0.04M ... 1.58M the tau most sensitive entries of all
scored tensors together are counted per tensor; a matrix (in x out) with at least
``cost / alpha`` of them gets a structured module (alpha 10; cost = in*r + r*out for LoRA,
out*r + r*out + r + out for the adapter: ``get_structured_param_num``), a vector with at least 1/5
of its entries trains whole (``--structured_vector``, beta 5), the rest stay unstructured; the
step whose total (+ 768 for the class token) is closest to ``budget`` millions is the selection
(``param_req_<budget>.pth``; ties go to the later step).

The model (``train_spt.py`` with ``--freeze_stage``): the head, the class token, the structured
modules, the whole vectors and the unstructured entries train. Unstructured entries of a Linear are
a 1-d ``delta`` added at their indices (``LinearSPTSparseGrad``: the layer computes with
W + scatter(delta)); those of a norm are counted by the sweep but never trained
(``replace_linear`` only replaces ``nn.Linear``). The structured modules, on timm's fused
``attn.qkv`` per 1/3 row chunk (the official q, k, v Linears), ``attn.proj``, ``mlp.fc1``,
``mlp.fc2``: LoRA (``--block=BlockSPTParallel``): B A x added to the layer's output, unscaled,
reading the layer's input through ``Dropout(0.1)`` (one mask shared by q, k and v; proj's reads its
input without); adapter (``--block=BlockSPTSeq``): y + up(GELU(down(Dropout(0.1)(y)))) on the
layer's output y (width -> r -> width, with biases), proj's in parallel as LoRA's. Each module's
output passes a ``DropPath(0.1)`` (``StructuredTuningModule``). Init: every Linear of a module
trunc_normal(std 0.02) with zero biases (``VisionTransformerSPT.__init__`` runs
``init_weights`` -> ``_init_vit_weights`` on every ``nn.Linear`` after building them, overriding
the module's kaiming/zero init), so SPT does not equal the backbone at init; deltas start at zero.
Optimizer (``lib/utils.py`` ``build_optimizer``: AdamW, lr 1e-3, weight decay 1e-4, batch 64 in
the configs): decay on the 2-d module weights and the head's weight, none on 1-d tensors, biases
and the class token: timm's rule, ``Method.decays``'s default.

Count: class token + the structured modules' costs + whole vectors + unstructured entries of Linear
weights and biases. The official cifar ``param_req_0.4`` LoRA selection on ViT-B/16 trains
768 + 301,056 + 55,296 + 23,618 = 380,738 (the sweep counted 380,909, with 171 norm entries).
Until ``select`` runs (``apply`` alone) a placeholder selection stands in: a structured module on q
and v of every block, nothing else (ViT-B/16: 768 + 24 x 12,288 = 295,680 with LoRA,
768 + 24 x 13,064 = 314,304 with adapters).

Deviations: timm fuses q, k, v in one Linear: the modules act on its row chunks and a whole q, k or v
bias trains as a delta over all entries of its chunk (the same update: Adam's step of an entry sees
that entry's gradient only, and neither is decayed). The pass goes through the fit's new head
(official: the sensitivity model's own random head) on the split the fit trains on (official:
always train800; the final fit's train800val200); its drop-path masks and the modules' init are
drawn after seeding with the fit's seed. The sweep ranks the entries once and takes prefixes (the
same sets as each step's topk, ties aside) and compares totals in exact integers (official: float32
millions); the class token counts its real size (official: 768). On a backbone with fewer than
1.58M scored entries the sweep stops at its last step that fits; a budget no step comes within
(every total above twice the budget: the official writes no file for it) is a ValueError.
spt_adapter selects with the adapter's cost, as ``vtab_supervised_spt_adapter_sensitivity.sh``
computes it (``vtab_supervised_spt_adapter.sh`` reads the LoRA files instead). The backbone's own
stochastic depth in training (0.1) is the runner's ``drop_path_rate``. On resume the selection is
recomputed (deterministic for the same data, seed and device). Families: ViT only (the official
Swin code is not released).
"""
from __future__ import annotations

from functools import partial
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from ._checks import check_float, check_int
from ._spt_plan import MAX_BUDGET, Selection, sensitivities, structured_count, sweep
from .base import Method, register
from .families import ATTN_PROJ, FC1, FC2, NORM1, NORM2, QKV, layout_of
from .surgery import Mergeable, merge_wrappers, wrap

DROPOUT = 0.1  # the modules' ``structured_drop`` (--no_structured_drop_out off)
DROP_PATH = 0.1  # the modules' own DropPath (--no_structured_drop_path off)
INIT_STD = 0.02  # _init_vit_weights: trunc_normal_(std=.02) on every Linear
OPS = {QKV: ("q", "k", "v"), ATTN_PROJ: ("proj",), FC1: ("fc1",), FC2: ("fc2",)}
BUDGETS = [0.2, 0.4, 0.6, 0.8, 1.0]  # configs/vtab_supervised_spt_*.sh: param_req_1.0 ... param_req_0.2


class Structured(nn.Module):
    """``StructuredTuningModule``: LoRA (in -> r -> out, no biases) or an adapter (in -> r -> GELU
    -> out, with biases), then ``DropPath(0.1)``; trunc_normal(0.02) weights, zero biases."""

    def __init__(self, kind: str, in_dim: int, out_dim: int, rank: int, like: torch.Tensor):
        super().__init__()
        make = partial(nn.Linear, bias=kind == "adapter", device=like.device, dtype=like.dtype)
        layers = [make(in_dim, rank), make(rank, out_dim)]
        self.learnable = nn.Sequential(*(layers if kind == "lora" else [layers[0], nn.GELU(), layers[1]]))
        self.drop_path = DropPath(DROP_PATH)
        for layer in layers:
            nn.init.trunc_normal_(layer.weight, std=INIT_STD, a=-2.0, b=2.0)  # timm's trunc_normal_ bounds
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.learnable(x))


class SPTLinear(Mergeable):
    """A frozen Linear (timm's fused qkv: three ops q, k, v over its row chunks) with SPT's parts:
    unstructured ``delta_weight`` / ``delta_bias`` added at ``index_weight`` / ``index_bias`` (flat
    indices of the fused tensors), and a structured module per selected op."""

    def __init__(self, base: nn.Linear, ops: tuple[str, ...], kind: str):
        super().__init__()
        self.base, self.ops, self.kind = base, ops, kind
        self.chunk = base.out_features // len(ops)
        self.sequential = kind == "adapter" and ops != ("proj",)  # BlockSPTSeq: proj's stays parallel
        self.drop = nn.Dropout(DROPOUT) if ops != ("proj",) else nn.Identity()  # proj's reads x as it is
        self.structured = nn.ModuleDict()
        for part in ("weight", "bias"):
            self.register_parameter(f"delta_{part}", None)
            self.register_buffer(f"index_{part}", None)

    def weight(self) -> torch.Tensor:
        w = self.base.weight
        if self.delta_weight is None:
            return w
        return w.flatten().index_add(0, self.index_weight, self.delta_weight).view_as(w)

    def bias(self) -> torch.Tensor | None:
        b = self.base.bias
        return b if self.delta_bias is None else b.index_add(0, self.index_bias, self.delta_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight(), self.bias())
        if not len(self.structured):
            return out
        pieces = list(out.split(self.chunk, dim=-1))
        shared = None if self.sequential else self.drop(x)  # AttentionSPTParallel: one x_drop for q, k, v
        for i, op in enumerate(self.ops):
            if op in self.structured:
                source = self.drop(pieces[i]) if self.sequential else shared
                pieces[i] = pieces[i] + self.structured[op](source)
        return torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]

    def choose(self, selection: Selection, prefix: str, rank: int) -> None:
        """Rebuild this layer's parts for ``selection`` (official names ``<prefix>.<op>.weight``)."""
        self.structured = nn.ModuleDict()
        w, rows_in = self.base.weight, self.base.in_features
        weight_index, bias_index = [], []
        for i, op in enumerate(self.ops):
            name = f"{prefix}.{op}"
            if f"{name}.weight" in selection.structured:
                in_dim = self.chunk if self.sequential else rows_in
                self.structured[op] = Structured(self.kind, in_dim, self.chunk, rank, w)
            elif f"{name}.weight" in selection.entries:
                weight_index.append(selection.entries[f"{name}.weight"].to(w.device) + i * self.chunk * rows_in)
            if self.base.bias is not None and f"{name}.bias" in selection.vectors:
                bias_index.append(torch.arange(self.chunk, device=w.device) + i * self.chunk)
            elif f"{name}.bias" in selection.entries:
                bias_index.append(selection.entries[f"{name}.bias"].to(w.device) + i * self.chunk)
        self._set_delta("weight", weight_index)
        self._set_delta("bias", bias_index)
        self.structured.train(self.training)

    def _set_delta(self, part: str, indices: list[torch.Tensor]) -> None:
        index = torch.cat(indices) if indices else None
        if index is not None and not len(index):
            index = None
        self.register_buffer(f"index_{part}", index)
        tensor = getattr(self.base, part)
        self.register_parameter(f"delta_{part}", None if index is None else nn.Parameter(tensor.new_zeros(len(index))))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        if self.sequential and len(self.structured):
            raise ValueError("spt: a sequential adapter cannot be folded into its Linear")
        weight, bias = self.weight().clone(), self.bias()
        for i, op in enumerate(self.ops):
            if op in self.structured:
                down, up = self.structured[op].learnable[0], self.structured[op].learnable[-1]
                weight[i * self.chunk:(i + 1) * self.chunk] += up.weight @ down.weight
        self.base.weight.copy_(weight)
        if bias is not None:
            self.base.bias.copy_(bias)
        return self.base


def _norm_tensors(name: str, norm: nn.Module) -> list[tuple[str, nn.Parameter, slice | None]]:
    return [(f"{name}.{part}", p, None) for part in ("weight", "bias") if (p := getattr(norm, part, None)) is not None]


def _norms(model: nn.Module) -> list[str]:
    layout = layout_of(model)
    return [f"{b}.{n}" for b in layout.blocks for n in (NORM1, NORM2)] + [layout.final_norm]


def scored(model: nn.Module) -> list[tuple[str, nn.Parameter, slice | None]]:
    """(official name, tensor, its rows) of every tensor the sweep scores, in the official order."""
    layout, found = layout_of(model), []
    for block in layout.blocks:
        for path in (NORM1, QKV, ATTN_PROJ, NORM2, FC1, FC2):
            module = model.get_submodule(f"{block}.{path}")
            if path in (NORM1, NORM2):
                found += _norm_tensors(f"{block}.{path}", module)
                continue
            linear = module.base if isinstance(module, SPTLinear) else module
            ops, prefix = OPS[path], f"{block}.{path.rpartition('.')[0]}"
            chunk = linear.out_features // len(ops)
            for i, op in enumerate(ops):
                rows = slice(i * chunk, (i + 1) * chunk) if len(ops) > 1 else None
                found += [(f"{prefix}.{op}.{part}", t, rows) for part in ("weight", "bias")
                          if (t := getattr(linear, part)) is not None]
    return found + _norm_tensors(layout.final_norm, model.get_submodule(layout.final_norm))


def placeholder(model: nn.Module) -> Selection:
    """``apply``'s selection until ``select`` runs: a structured module on q and v of every block."""
    return Selection(structured=tuple(f"{b}.attn.{op}.weight" for b in layout_of(model).blocks for op in "qv"))


def build(model: nn.Module, selection: Selection, rank: int) -> None:
    """Give every ``SPTLinear`` its parts of ``selection`` and train its whole norm vectors (the
    class token always trains; the rest of the backbone stays frozen)."""
    layout = layout_of(model)
    for block in layout.blocks:
        for path in OPS:
            model.get_submodule(f"{block}.{path}").choose(selection, f"{block}.{path.rpartition('.')[0]}", rank)
    vectors = set(selection.vectors)
    for norm in _norms(model):
        for name, tensor, _ in _norm_tensors(norm, model.get_submodule(norm)):
            tensor.requires_grad_(name in vectors)
    if getattr(model, "cls_token", None) is not None:
        model.cls_token.requires_grad_(True)


class _SPT(Method):
    kind = ""  # "lora" or "adapter"
    paper = "He et al., SPT (Sensitivity-Aware Visual Parameter-Efficient Fine-Tuning), ICCV 2023"
    code = "ziplab/SPT@e385f67 engine.py (get_sensitivity), train_spt.py, model/vision_transformer_timm.py"
    deviations = ("fused qkv: modules on its row chunks, whole q/k/v biases as full-chunk deltas; the pass runs "
                  "through the fit's head on the fit's training split; budget ties compared in exact integers; "
                  "sweep capped at a small backbone's size; spt_adapter selects with the adapter's cost")
    group = "vision"
    families = ("vit",)
    unsupported_why = "the official code places modules in ViT blocks; its Swin code is not released"
    defaults = {"budget": 0.4, "rank": 8, "alpha": 10.0}
    help = {"budget": f"trainable parameters in millions the selection comes closest to (official param_req; "
                      f"in (0, {MAX_BUDGET:g}])",
            "rank": "rank of each LoRA / bottleneck of each adapter (official low_rank_dim 8; at most the width)",
            "alpha": "a matrix gets a structured module when >= cost/alpha of its entries are sensitive (official 10)"}
    width_bounded = ("rank",)
    needs_training_data = True
    count_from_data = True  # select builds the modules: the trained count is the selection's
    select_in_order = True  # the official pass reads the training split with a SequentialSampler
    identity_at_init = False  # _init_vit_weights: the modules start trunc_normal(0.02), not zero
    trains_backbone = r"cls_token|(blocks\.\d+\.norm[12]|norm|fc_norm)\.(weight|bias)"

    def _check(self, hp: dict) -> None:
        check_float(self.name, hp, "budget", 0, MAX_BUDGET, lo_open=True)
        check_int(self.name, hp, "rank", 1)
        check_float(self.name, hp, "alpha", 0, lo_open=True)

    def search_space(self, trial) -> dict:
        return {"budget": trial.suggest_categorical("budget", BUDGETS)}  # the official sweep of budgets

    def _adapt(self, model: nn.Module, budget: float, rank: int, alpha: float) -> None:
        layout = layout_of(model)
        for path, ops in OPS.items():
            wrap(model, layout.paths(path), lambda _, linear, ops=ops: SPTLinear(linear, ops, self.kind))
        build(model, placeholder(model), rank)

    def select(self, model: nn.Module, batches: Iterable, seed: int) -> None:
        hp = model.peft_hparams
        build(model, Selection(), hp["rank"])  # the pass sees the plain backbone
        found = scored(model)
        tensors = list({id(t): t for _, t, _ in found}.values())
        sums = dict(zip(map(id, tensors), sensitivities(model, tensors, batches, seed)))
        scores = {name: sums[id(t)] if rows is None else sums[id(t)][rows] for name, t, rows in found}
        cls = getattr(model, "cls_token", None)
        cost = lambda in_dim, out_dim: structured_count(self.kind, in_dim, out_dim, hp["rank"])  # noqa: E731
        selection = sweep(scores, cost, hp["budget"], hp["alpha"], 0 if cls is None else cls.numel())
        device = tensors[0].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            build(model, selection, hp["rank"])

    def _merge(self, model: nn.Module) -> None:
        merge_wrappers(model)


@register
class SPTLoRA(_SPT):
    name = "spt_lora"
    kind = "lora"
    mergeable = True  # in eval mode W + scatter(delta) + B A folds into W exactly


@register
class SPTAdapter(_SPT):
    name = "spt_adapter"
    kind = "adapter"
    mergeable = False  # sequential adapters with a GELU between down and up
