"""Where the adaptable parts of a backbone live: one small module per backbone family.

Methods never spell out a timm module path. They ask ``layout_of(model)`` for the blocks, the
attention and MLP Linears, the norms and the stem, and wrap what they adapt through ``wrap``. A
family module (``vit.py``, ``swin.py``) registers a function that reads one model class's
structure into a ``Layout``; adding a backbone family means adding one such module here, and no
method changes.

Inside every block of every supported family the sub-modules have the same names (timm's):
``attn.qkv`` (q, k, v fused in one Linear, three row chunks), ``attn.proj``, ``mlp.fc1``,
``mlp.fc2``, ``norm1``, ``norm2``, ``mlp`` as the MLP branch, and ``drop_path1`` / ``drop_path2``
(stochastic depth on the two residual branches). ``Layout.paths`` joins them with each block's path.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from timm.layers import DropPath

from ..errors import Unsupported
from ..surgery import replace_module

QKV = "attn.qkv"
QKV_GROUPS = 3  # timm fuses q, k, v into one Linear: three row chunks of the width each
ATTN_PROJ = "attn.proj"
FC1, FC2 = "mlp.fc1", "mlp.fc2"
MLP = "mlp"
NORM1, NORM2 = "norm1", "norm2"
BLOCK_LINEARS = (QKV, ATTN_PROJ, FC1, FC2)
BLOCK_NORMS = (NORM1, NORM2)
DROP_PATHS = ("drop_path1", "drop_path2")  # stochastic depth on the attention and the MLP branch


@dataclass(frozen=True)
class Layout:
    """The adaptable structure of one backbone model.

    family: "vit" or "swin" (the name methods declare support for).
    blocks: paths of the transformer blocks, input to output.
    widths: the channel width of each block (constant for ViTs, per stage for Swin).
    stem: the patch-embedding conv; ``stem_bias`` whether it has a bias (CLIP's has none).
    final_norm: the norm in front of the head (``norm``, or ``fc_norm`` for models that pool first).
    extra_norms: affine norms outside the blocks besides the final one (CLIP's ``norm_pre``, Swin's
        patch-embedding norm and patch-merging norms), input to output.
    Readers see through the methods' wrappers: an adapted model has the layout of its backbone.
    tokens: "nlc" (a ViT's token sequence, ``num_prefix_tokens`` class/register tokens first) or
        "nhwc" (Swin's feature map, no prefix tokens).
    """

    family: str
    blocks: tuple[str, ...]
    widths: tuple[int, ...]
    stem: str
    stem_bias: bool
    final_norm: str
    extra_norms: tuple[str, ...] = ()
    tokens: str = "nlc"
    num_prefix_tokens: int = 0

    def paths(self, *suffixes: str) -> list[str]:
        """``<block>.<suffix>`` for every block and suffix, block by block."""
        return [f"{b}.{s}" for b in self.blocks for s in suffixes]

    @property
    def min_width(self) -> int:
        return min(self.widths)


_READERS: list[tuple[type, Callable[[nn.Module], Layout]]] = []


def family(model_class: type):
    """Decorator for a family module's reader: ``@family(VisionTransformer) def layout(model)``."""
    def register(reader: Callable[[nn.Module], Layout]):
        _READERS.append((model_class, reader))
        return reader
    return register


def layout_of(model: nn.Module) -> Layout:
    """The ``Layout`` of ``model``; ``Unsupported`` for a model class no family module reads."""
    for cls, reader in _READERS:
        if isinstance(model, cls):
            return reader(model)
    known = ", ".join(c.__name__ for c, _ in _READERS)
    raise Unsupported(f"no backbone family reads {type(model).__name__}; supported: {known}")


def has_bias(module: nn.Module) -> bool:
    """Whether a module (or the module a method wrapped it in) has a bias."""
    return any(name.rpartition(".")[2] == "bias" for name, _ in module.named_parameters())


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """timm's stochastic-depth decay rule: the rate of each of ``depth`` blocks, input to output,
    rising linearly from 0 to ``rate``. Both families build it so: ViT as
    ``torch.linspace(0, drop_path_rate, depth)``, Swin as the same linspace over all its blocks
    (``sum(depths)``) split into the stages (``calculate_drop_path_rates(..., stagewise=True)``),
    which gives every block its own rate in the same order as ``Layout.blocks``."""
    return torch.linspace(0, rate, depth, device="cpu").tolist()


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Give a built model the stochastic depth timm would have built it with at
    ``drop_path_rate=rate``: each block's ``drop_path1`` / ``drop_path2`` become ``DropPath`` at
    that block's rate (``drop_path_rates``), or ``Identity`` where it is 0 (as timm does), found
    through any wrapper a method put around a block."""
    _set_residual_branches(model, rate, lambda r: DropPath(r) if r > 0 else nn.Identity())


def _set_residual_branches(model: nn.Module, rate: float, make: Callable[[float], nn.Module]) -> None:
    """Each block's ``drop_path1`` / ``drop_path2`` become ``make(that block's rate)``
    (``drop_path_rates``), in the block's train/eval mode, found through any wrapper a method put
    around a block."""
    blocks = layout_of(model).blocks
    for path, block_rate in zip(blocks, drop_path_rates(rate, len(blocks))):
        block = model.get_submodule(path)
        for name, _ in list(block.named_modules()):
            parent, _, leaf = name.rpartition(".")
            if leaf in DROP_PATHS:
                setattr(block.get_submodule(parent), leaf, make(block_rate).train(block.training))


def set_residual_dropout(model: nn.Module, rate: float) -> None:
    """RLRR's "drop_path", which is not stochastic depth: element-wise ``nn.Dropout`` on each
    block's two residual branches (zstarN70/RLRR ``models/networks.py`` at 99d2087, ``RLRRBlock``:
    ``self.drop_path1 = nn.Dropout(p=drop_path)`` (lines 166-167),
    ``x = x + self.drop_path1(self.attn(...))`` and the same for the MLP branch (lines 174-178)), at
    a rate rising linearly from 0 to ``rate`` over the blocks (``RLRREncoder``, line 217:
    ``torch.linspace(0, drop_path, num_blocks)``, which is ``drop_path_rates``).
    Each block's ``drop_path1`` / ``drop_path2`` become ``nn.Dropout`` at that block's rate (at 0
    too, as RLRR builds them), found through any wrapper a method put around a block, in the
    block's train/eval mode. It replaces stochastic depth there: set one of the two."""
    _set_residual_branches(model, rate, lambda r: nn.Dropout(p=r))


for _info in pkgutil.iter_modules(__path__):  # every family module registers its reader
    importlib.import_module(f"{__name__}.{_info.name}")
