"""FacT (Jie & Deng, AAAI 2023): factor-tuning. The weight increments of every block Linear
(``attn.qkv`` as q, k, v, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``) are tensorised into one
tensor of the whole ViT and factorised; the factors U (rank x width) and V (width x rank) are
shared by every layer, and each layer's d x d piece of its increment is s * V S U with its own
rank x rank core S.

fact_tt (FacT-TT): JieShibo/PETL-ViT ``FacT/fact_tt.py`` ``set_FacT``: U (``FacTu``) and V
(``FacTv``) shared, and per block ``q/k/v/proj_FacTs`` (rank x rank) and ``fc1_FacTs``
(4 rank x rank), ``fc2_FacTs`` (rank x 4 rank) as free cores. 21,504 parameters on ViT-B/16 at
rank 8.
fact_tk (FacT-TK): ``FacT/fact_tk.py`` ``set_FacT``: the cores are not free but
S = C x_3 P[:, column]: one shared rank x rank x rank core C (``FacTc``) and one rank x 12*depth
matrix P (``FacTp``, 12 columns per block: q, k, v, proj and 4 + 4 for the fc1 / fc2 chunks of
width d). 86,528 parameters on ViT-B/16 at rank 32.

Forward, as ``fact_forward_attn`` / ``fact_forward_mlp``: each Linear's output gains
s * V(dropout_0.1(S(U(x)))), on the activations; fc1's 4d outputs are 4 chunks of d (its core
maps rank -> 4 rank, V maps each rank chunk to d), fc2 reads its 4d inputs as 4 chunks of d
(U on each, core 4 rank -> rank). fact_tk forms its cores exactly as the official code does
(``FacTc @ FacTp[:, idx:idx+4]`` for attention, ``[:, :, :4].reshape(r, 4r)`` for fc1, ...).
We wrap each Linear (``FacTLinear``) instead of replacing the block forwards; the math is the
same. Merge: W += s * V S U per chunk, exactly.

Init (official): U as torch's Linear (kaiming-uniform a=sqrt(5)), V zero (so the adapted model
equals the base at init), TT cores as torch's Linear of their shape, TK's C and P
xavier-uniform. Dropout 0.1 on the rank-sized activations (``_.dp = nn.Dropout(0.1)``): one
dropout on the concatenated q, k, v activations instead of three calls of the same rate.

Search space: the official per-task configs (``FacT/configs/tt/*.yaml``: rank in {4, 8, 16};
``configs/tk/*.yaml``: rank in {16, 32}; both: scale in {0.01, 0.1, 1, 10, 100}). Default scale 1:
the default of ``set_FacT(model, dim=8, s=1)``.

Weight decay: every FacT tensor is decayed. ``fact_tt.py`` line 195 and ``fact_tk.py`` line 203:
``AdamW(trainable, lr=args.lr, weight_decay=args.wd)`` over every trainable tensor (FacT factors
and head, biases included). Deviation: the head's bias is not decayed (this project's rule for
every method).

Families: ViT only. The factors are shared across all layers, which needs one width for the
whole model; Swin's stages have different widths, and the official code is ViT-only
(``set_FacT`` builds U, V for ``VisionTransformer``). The MLP widths must be whole multiples of
the model width (4 in ViT-B). Other deviations: the official scripts build the ViT with
``drop_path_rate=0.1``; our backbones keep their own drop path (none).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._checks import check_float, check_int
from .base import Method, Unsupported, register
from .families import ATTN_PROJ, FC1, FC2, QKV, QKV_GROUPS, layout_of
from .surgery import Mergeable, merge_wrappers, wrap

SCALES = [0.01, 0.1, 1.0, 10.0, 100.0]  # the official configs' scale values
DROPOUT = 0.1  # ``_.dp = nn.Dropout(0.1)`` in both official files
SHARED = "fact"  # the model attribute that holds the shared factors (removed by merge)


class FacTFactors(nn.Module):
    """The factors every layer shares: ``u`` (rank x width, ``FacTu.weight``), ``v`` (width x
    rank, ``FacTv.weight``) and, for TK, ``c`` (rank x rank x rank, ``FacTc``) and ``p`` (rank x
    columns, ``FacTp``)."""

    def __init__(self, width: int, rank: int, columns: int, like: torch.Tensor):
        super().__init__()
        dd = dict(device=like.device, dtype=like.dtype)
        self.u = nn.Parameter(torch.empty(rank, width, **dd))
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))  # nn.Linear(768, dim, bias=False)
        self.v = nn.Parameter(torch.zeros(width, rank, **dd))  # nn.init.zeros_(model.FacTv.weight)
        if columns:
            self.p = nn.Parameter(torch.empty(rank, columns, **dd))
            self.c = nn.Parameter(torch.empty(rank, rank, rank, **dd))
            nn.init.xavier_uniform_(self.c)
            nn.init.xavier_uniform_(self.p)


class FacTLinear(Mergeable):
    """A frozen Linear whose output gains s * V(dropout(S(U(x)))) per chunk of the width.

    ``in_chunks`` / ``out_chunks``: how many width-sized chunks its input / output has (qkv: 1 / 3,
    fc1: 1 / 4, fc2: 4 / 1). ``core_matrix()`` is S as a (out_chunks*rank, in_chunks*rank) matrix:
    the rank activations are ``u_chunks @ S^T``.
    """

    def __init__(self, base: nn.Linear, shared: FacTFactors, in_chunks: int, out_chunks: int, scale: float):
        super().__init__()
        self.base = base
        self._shared = (shared,)  # not a submodule: the factors are registered once, on the model
        self.in_chunks, self.out_chunks, self.scale = in_chunks, out_chunks, scale
        self.dropout = nn.Dropout(DROPOUT)

    @property
    def shared(self) -> FacTFactors:
        return self._shared[0]

    def core_matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.shared
        rank, width = f.u.shape
        lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
        tokens = x2.shape[0]
        u = (x2.reshape(tokens * self.in_chunks, width) @ f.u.t()).reshape(tokens, self.in_chunks * rank)
        t = self.dropout(u @ self.core_matrix().t())
        y = self.base(x2)  # (tokens, out_chunks * width): one row of ``width`` per chunk below
        y = torch.addmm(y.reshape(tokens * self.out_chunks, width), t.reshape(tokens * self.out_chunks, rank),
                        f.v.t(), alpha=self.scale)  # y + s * V t, fused: no separate pass over the output
        return y.reshape(*lead, -1)

    def delta_weight(self) -> torch.Tensor:
        """s * (V S U) per (output chunk, input chunk): the increment of the Linear's weight."""
        f = self.shared
        rank, width = f.u.shape
        core = self.core_matrix().reshape(self.out_chunks, rank, self.in_chunks, rank)
        delta = torch.einsum("ib,obpa,aj->oipj", f.v, core, f.u)
        return self.scale * delta.reshape(self.out_chunks * width, self.in_chunks * width)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        return self.base


class FacTTTLinear(FacTLinear):
    """FacT-TT: the core is a free parameter, initialised like the official ``nn.Linear``
    cores (kaiming-uniform a=sqrt(5): bound 1/sqrt(in_chunks * rank))."""

    def __init__(self, base, shared, in_chunks, out_chunks, scale):
        super().__init__(base, shared, in_chunks, out_chunks, scale)
        rank = shared.u.shape[0]
        self.core = nn.Parameter(shared.u.new_empty(out_chunks * rank, in_chunks * rank))
        nn.init.kaiming_uniform_(self.core, a=math.sqrt(5))

    def core_matrix(self) -> torch.Tensor:
        return self.core


class FacTTKLinear(FacTLinear):
    """FacT-TK: the core is C x_3 P[:, columns], formed as the official code forms it.

    ``kind``: "qkv" (3 columns: q, k, v), "proj" (1), "fc1" or "fc2" (``chunks`` columns each)."""

    def __init__(self, base, shared, in_chunks, out_chunks, scale, kind: str, first_column: int):
        super().__init__(base, shared, in_chunks, out_chunks, scale)
        self.kind, self.first_column = kind, first_column
        self.columns = {"qkv": QKV_GROUPS, "proj": 1}.get(kind, max(in_chunks, out_chunks))

    def core_matrix(self) -> torch.Tensor:
        f = self.shared
        rank = f.u.shape[0]
        t = f.c @ f.p[:, self.first_column:self.first_column + self.columns]  # (r, r, columns)
        if self.kind in ("qkv", "proj"):  # official: u @ t[:, :, j], one column per q, k, v, proj
            return t.permute(2, 1, 0).reshape(self.columns * rank, rank)
        m = t.reshape(rank, self.columns * rank)  # official: FacTc[:, :, :4].reshape(dim, dim * 4)
        return m.t() if self.kind == "fc1" else m  # fc1: u @ m; fc2: u @ m.t()


class _FacT(Method):
    mergeable = True
    families = ("vit",)
    unsupported_why = ("FacT shares its factors U, V across every layer, which needs one width for the "
                       "whole model; the official code (JieShibo/PETL-ViT FacT/) is for ViT only")
    ranks: list[int] = []
    tk = False
    width_bounded = ("rank",)  # one width: FacT runs on ViTs only

    def _check(self, hp: dict) -> None:
        check_int(self.name, hp, "rank", 1)
        check_float(self.name, hp, "scale", 0, lo_open=True)

    def search_space(self, trial) -> dict:
        return {"rank": trial.suggest_categorical("rank", self.ranks),
                "scale": trial.suggest_categorical("scale", SCALES)}

    decays_all = True  # the official AdamW decays every FacT tensor
    deviations = ("each Linear is wrapped instead of the block forwards replaced (same math); one dropout mask on "
                  "the concatenated q, k, v; the backbone keeps its own drop path (official: 0.1); head bias not "
                  "decayed")

    def _adapt(self, model: nn.Module, rank: int, scale: float) -> None:
        layout = layout_of(model)
        width = layout.widths[0]
        check_int(self.name, {"rank": rank}, "rank", 1, width)
        fc1 = model.get_submodule(layout.paths(FC1)[0])
        fc2 = model.get_submodule(layout.paths(FC2)[0])
        hidden_out, hidden_in = fc1.weight.shape[0], fc2.weight.shape[1]
        if hidden_out % width or hidden_in % width:
            raise Unsupported(f"{self.name}: the MLP widths ({hidden_out}, {hidden_in}) must be whole multiples "
                              f"of the model width {width} (FacT splits them into chunks of the width)")
        k1, k2 = hidden_out // width, hidden_in // width
        per_block = QKV_GROUPS + 1 + k1 + k2  # official: 4 attention + 8 MLP columns of FacTp per block
        shared = FacTFactors(width, rank, per_block * len(layout.blocks) if self.tk else 0, like=fc1.weight)
        setattr(model, SHARED, shared)
        chunks = {QKV: (1, QKV_GROUPS, "qkv", 0), ATTN_PROJ: (1, 1, "proj", QKV_GROUPS),
                  FC1: (1, k1, "fc1", QKV_GROUPS + 1), FC2: (k2, 1, "fc2", QKV_GROUPS + 1 + k1)}
        for b, block in enumerate(layout.blocks):
            for suffix, (cin, cout, kind, offset) in chunks.items():
                if self.tk:
                    build = lambda _, lin: FacTTKLinear(lin, shared, cin, cout, scale, kind, b * per_block + offset)
                else:
                    build = lambda _, lin: FacTTTLinear(lin, shared, cin, cout, scale)
                wrap(model, [f"{block}.{suffix}"], build)

    def _merge(self, model: nn.Module) -> None:
        merge_wrappers(model)
        delattr(model, SHARED)


@register
class FacTTT(_FacT):
    name = "fact_tt"
    paper = "Jie & Deng, FacT (FacT-TT), AAAI 2023"
    code = "JieShibo/PETL-ViT FacT/fact_tt.py"
    identity_at_init = True  # equals the backbone at init: V starts at zero
    group = "baselines"
    defaults = {"rank": 8, "scale": 1.0}
    help = {
        "rank": "rank of the shared factors U, V and of each layer's core (integer in [1, width]); searched in 4, 8, 16",
        "scale": "s, the factor on every increment (number > 0); searched in 0.01, 0.1, 1, 10, 100",
    }
    ranks = [4, 8, 16]


@register
class FacTTK(_FacT):
    name = "fact_tk"
    paper = "Jie & Deng, FacT (FacT-TK), AAAI 2023"
    code = "JieShibo/PETL-ViT FacT/fact_tk.py"
    identity_at_init = True  # equals the backbone at init: V starts at zero
    group = "baselines"
    defaults = {"rank": 32, "scale": 1.0}
    help = {
        "rank": "rank of U, V, the shared core C and P (integer in [1, width]); searched in 16, 32",
        "scale": "s, the factor on every increment (number > 0); searched in 0.01, 0.1, 1, 10, 100",
    }
    ranks = [16, 32]
    tk = True
