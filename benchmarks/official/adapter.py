"""Our ``adapter`` (methods/adapter.py) against the official code of its two modes, read at run time
from checkouts of ShoufaChen/AdaptFormer (``mode=parallel``, Chen et al., NeurIPS 2022) and
ZhangYuanhan-AI/NOAH (``mode=sequential``, NOAH's Adapter row, Zhang et al., 2022). Nothing of
that code is in this repository.

    git clone https://github.com/ShoufaChen/AdaptFormer /tmp/adaptformer
    git clone https://github.com/ZhangYuanhan-AI/NOAH /tmp/noah
    .venv/bin/python -m benchmarks.official.adapter --adaptformer /tmp/adaptformer --noah /tmp/noah

Official, parallel: ``models/adapter.py`` (``Adapter``), ``models/custom_modules.py`` (``Block``, the
adapter beside the MLP: ``ffn_option == "parallel"``), ``models/vit_image.py`` (``VisionTransformer``),
configured by ``main_image.py``'s ``tuning_config`` (read from its source: its literal values).
Sequential: ``model/module/adapter_super.py`` (``AdapterSuper``), ``model/supernet_vision_transformer_timm.py``
(``Block``: ``x + adapter(drop_path(mlp(norm2(x))))``; ``VisionTransformer`` and its init), with
``supernet_train_prompt.py``'s ``--drop_rate_adapter`` default, the supernet of
``experiments/Adapter/ViT-B_prompt_adapter_8.yaml`` and ``configs/Adapter/VTAB/slurm_train_adapter_vtab.sh``
(``--is_adapter``, mode "super": ``supernet_engine_prompt.py`` ``sample_configs`` then gives every block's
adapter the supernet's dim). Checked, fp32 on CPU, one thread:

- configuration: AdaptFormer's ``tuning_config`` (parallel, no layernorm, init "lora", scalar 0.1:
  our default scale) and the dropout 0.1 its ``Block`` gives the adapter; NOAH's adapter dropout
  default 0.1 and the adapter experiment's supernet (adapter dim 8, no prompt, LoRA or prefix) and
  flags: our dropout and bottleneck;
- forward: the demo ViT with ours, against the official ``VisionTransformer`` of the same shape (the
  backbone's tensors, AdaptFormer's q/k/v projections the rows of timm's fused qkv, and our adapter
  tensors, perturbed: every official tensor given, and nothing else); eval logits, and train-mode
  logits under one seed (the same dropout masks), at the defaults and at bottleneck 4 / scale 1;
  another seed must give other train-mode logits;
- init: the official ``Adapter`` (init "lora") and ours follow one rule (down weight
  kaiming-uniform a=sqrt(5), the rest zero; the draws differ: the official module draws its down
  weight twice); NOAH's adapter in the official ``VisionTransformer`` after its own ``init_weights``
  (which overwrites ``AdapterSuper``'s xavier init with ``_init_vit_weights``) and ours: weights of std
  0.02, zero biases;
- count: 12 official adapters of width 768, bottleneck 8, against our trainable count on ViT-B/16,
  each mode.

What is not compared: drop path. The official defaults differ (AdaptFormer ``--drop_path`` 0; NOAH
``--drop-path`` 0.1) and both officials keep the adapter outside the block's drop path where ours is
inside it (NOAH's recipe notes say so); at drop path 0 (here) the two are the same computation.

The official files load with ``load.load_module``'s ``replace``: ``custom_modules.py`` and
``vit_image.py`` import their siblings relatively (loaded as modules of a package
``adaptformer_models`` whose sibling is given), ``adapter_super.py`` imports ``to_2tuple`` from
``model/utils.py``, which imports ``torch._six`` (gone from torch: given ``timm.layers.to_2tuple``), and
timm's ``register_model`` is given as the identity (so that timm's model names are not
re-registered). NOAH's constructors print; that output is dropped. Exit 0 when every check ran and
passed (logits within 1e-5, configuration and counts exact), 1 otherwise, 2 when a checkout is not
of the repository it is given for.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import io
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from benchmarks.official.common import (Report, compare_logits, demo_vit, images, perturb, run_checkouts, vit_b_count,
                                        with_head_of)
from benchmarks.official.load import LoadError, load_module

ADAPTFORMER = "ShoufaChen/AdaptFormer"
NOAH = "ZhangYuanhan-AI/NOAH"
ADAPTFORMER_FILES = ("models/adapter.py", "models/custom_modules.py", "models/vit_image.py", "main_image.py")
NOAH_FILES = ("model/module/adapter_super.py", "model/supernet_vision_transformer_timm.py",
              "supernet_train_prompt.py", "experiments/Adapter/ViT-B_prompt_adapter_8.yaml",
              "configs/Adapter/VTAB/slurm_train_adapter_vtab.sh")
NOAH_SCRIPT = "configs/Adapter/VTAB/slurm_train_adapter_vtab.sh"
TOL = 1e-5
# what methods/adapter.py implements in parallel mode (its docstring): main_image.py's tuning_config
ADAPTFORMER_CONFIG = {"ffn_option": "parallel", "ffn_adapter_layernorm_option": "none",
                      "ffn_adapter_init_option": "lora", "ffn_adapter_scalar": "0.1"}


# ------------------------------------------------------------------------------------------- loading

def load_adaptformer(repo: Path) -> types.SimpleNamespace:
    adapter = load_module(repo, "models/adapter.py", "adaptformer_models.adapter")
    blocks = load_module(repo, "models/custom_modules.py", "adaptformer_models.custom_modules",
                         replace={"adaptformer_models.adapter": {"Adapter": adapter.Adapter}})
    vit = load_module(repo, "models/vit_image.py", "adaptformer_models.vit_image",
                      replace={"adaptformer_models.custom_modules": {"Block": blocks.Block}})
    return types.SimpleNamespace(Adapter=adapter.Adapter, Block=blocks.Block, VisionTransformer=vit.VisionTransformer)


def load_noah(repo: Path) -> types.SimpleNamespace:
    from timm.layers import to_2tuple

    adapter = load_module(repo, "model/module/adapter_super.py", "noah_adapter_super",
                          replace={"model.utils": {"to_2tuple": to_2tuple}})
    vit = load_module(repo, "model/supernet_vision_transformer_timm.py", "noah_supernet_vit",
                      replace={"model.module.adapter_super": {"AdapterSuper": adapter.AdapterSuper},
                               "timm.models.registry": {"register_model": lambda fn: fn}})
    return types.SimpleNamespace(AdapterSuper=adapter.AdapterSuper, VisionTransformer=vit.VisionTransformer)


def literal_keywords(source: str, callee: str) -> dict:
    """The keywords with literal values of the call ``callee(...)`` in ``source`` (the first one)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == callee:
            out = {}
            for kw in node.keywords:
                with contextlib.suppress(ValueError):
                    out[kw.arg] = ast.literal_eval(kw.value)
            return out
    raise LoadError(f"no call of {callee} found")


def argument_default(source: str, flag: str):
    """The ``default=`` of ``parser.add_argument(flag, ...)`` in ``source``."""
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == flag):
            return next(ast.literal_eval(kw.value) for kw in node.keywords if kw.arg == "default")
    raise LoadError(f"no add_argument({flag!r}) found")


# ------------------------------------------------------------------------------------ official models

def adaptformer_config(repo: Path, width: int, bottleneck: int, scale: float) -> types.SimpleNamespace:
    """``main_image.py``'s ``tuning_config`` (its literals), for a model of ``width`` with our bottleneck and
    scale, AdaptFormer on (``--ffn_adapt``), no VPT."""
    cfg = literal_keywords((repo / "main_image.py").read_text(), "EasyDict")
    cfg.update(ffn_adapt=True, ffn_num=bottleneck, d_model=width, ffn_adapter_scalar=str(scale), vpt_on=False,
               vpt_num=0)
    return types.SimpleNamespace(**cfg)


def vit_shape(base: nn.Module) -> dict:
    block = base.blocks[0]
    width = base.embed_dim
    return dict(img_size=base.patch_embed.img_size, patch_size=base.patch_embed.patch_size, embed_dim=width,
                depth=len(base.blocks), num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / width,
                qkv_bias=block.attn.qkv.bias is not None, norm_layer=functools.partial(nn.LayerNorm, eps=block.norm1.eps))


def adapter_state(model: nn.Module, module: str, down: str, up: str) -> dict:
    """``model``'s adapters' tensors under the official names: ``blocks.{i}.{module}.{down|up}.{weight|bias}``
    for our down and up projections."""
    return {f"blocks.{i}.{module}.{theirs}.{t}": getattr(ours, t)
            for i, block in enumerate(model.blocks)
            for theirs, ours in ((down, block.mlp.adapter.down), (up, block.mlp.adapter.up))
            for t in ("weight", "bias")}


def official_parallel(af, repo: Path, base: nn.Module, model: nn.Module) -> nn.Module:
    """AdaptFormer's ``VisionTransformer`` (class token, ``global_pool=False``) holding ``base``'s tensors,
    ``model``'s head and adapters."""
    hp = model.peft_hparams
    ref = af.VisionTransformer(global_pool=False, num_classes=model.num_classes,
                               tuning_config=adaptformer_config(repo, base.embed_dim, hp["bottleneck"], hp["scale"]),
                               **vit_shape(base))
    state = {}
    for key, value in with_head_of(base, model).state_dict().items():
        parts = key.split(".")
        if len(parts) > 2 and parts[-2] == "qkv":  # blocks.i.attn.qkv.{weight,bias} -> q_proj, k_proj, v_proj
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                state[".".join(parts[:-2] + [name, parts[-1]])] = chunk
        elif len(parts) > 3 and parts[2] == "mlp":  # blocks.i.mlp.fc1 -> blocks.i.fc1
            state[".".join(parts[:2] + parts[3:])] = value
        else:
            state[key] = value
    state.update(adapter_state(model, "adaptmlp", "down_proj", "up_proj"))
    ref.load_state_dict(state, strict=True)
    return ref.eval()


def build_noah(noah, base: nn.Module, num_classes: int, bottleneck: int, dropout: float) -> nn.Module:
    """NOAH's ``VisionTransformer`` of ``base``'s shape with only the adapter (no prompt, LoRA or prefix)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return noah.VisionTransformer(num_classes=num_classes, super_prompt_tuning_dim=0, super_LoRA_dim=0,
                                      super_adapter_dim=bottleneck, super_prefix_dim=0, drop_rate_adapter=dropout,
                                      **vit_shape(base))


def sample_adapter_only(ref: nn.Module, bottleneck: int) -> None:
    """``set_sample_config`` as the adapter experiment trains (``supernet_engine_prompt.py``
    ``sample_configs`` with ``is_adapter``: every block's adapter at the supernet's dim, no prompt, LoRA or
    prefix); after the tensors are loaded, as it keeps slices of them."""
    depth = len(ref.blocks)
    ref.set_sample_config({"visual_prompt_dim": [0] * depth, "lora_dim": [0] * depth,
                           "adapter_dim": [bottleneck] * depth, "prefix_dim": [0] * depth})


def official_sequential(noah, dropout: float, base: nn.Module, model: nn.Module) -> nn.Module:
    """NOAH's ``VisionTransformer`` holding ``base``'s tensors, ``model``'s head and adapters."""
    bottleneck = model.peft_hparams["bottleneck"]
    ref = build_noah(noah, base, model.num_classes, bottleneck, dropout)
    state = dict(with_head_of(base, model).state_dict())
    state.update(adapter_state(model, "adapter", "ln1", "ln2"))
    ref.load_state_dict(state, strict=True)
    sample_adapter_only(ref, bottleneck)
    return ref.eval()


# ---------------------------------------------------------------------------------------------- checks

def check_config(report: Report, af_repo: Path, noah_repo: Path, noah_dropout: float, af) -> None:
    import methods
    from methods.adapter import DROPOUT

    ours = methods.get("adapter").defaults
    cfg = literal_keywords((af_repo / "main_image.py").read_text(), "EasyDict")
    seen = {k: cfg.get(k) for k in ADAPTFORMER_CONFIG}
    report.add("AdaptFormer config: main_image.py tuning_config = what parallel implements", str(seen),
               seen == ADAPTFORMER_CONFIG)
    report.add("AdaptFormer config: ffn_adapter_scalar = our default scale", f"{cfg.get('ffn_adapter_scalar')} / "
               f"{ours['scale']}", float(cfg.get("ffn_adapter_scalar", "nan")) == ours["scale"])
    block = af.Block(96, 3, qkv_bias=True, config=adaptformer_config(af_repo, 96, 8, 0.1))
    report.add("AdaptFormer Block: adapter dropout = ours", f"{block.adaptmlp.dropout} / {DROPOUT}",
               block.adaptmlp.dropout == DROPOUT)
    report.add("NOAH supernet_train_prompt.py --drop_rate_adapter default = our dropout",
               f"{noah_dropout} / {DROPOUT}", noah_dropout == DROPOUT)
    supernet = yaml.safe_load((noah_repo / "experiments/Adapter/ViT-B_prompt_adapter_8.yaml").read_text())["SUPERNET"]
    dims = {k: supernet.get(k) for k in ("VISUAL_PROMPT_DIM", "LORA_DIM", "ADAPTER_DIM", "PREFIX_DIM")}
    script = (noah_repo / NOAH_SCRIPT).read_text()
    flags = "--is_adapter" in script and "--mode" not in script
    report.add("NOAH adapter experiment: supernet dims = the adapter only, of our default bottleneck; its VTAB "
               "script trains it with --is_adapter in the default mode 'super' (every block's adapter at that dim)",
               f"{dims}, --is_adapter and no --mode: {flags}",
               dims == {"VISUAL_PROMPT_DIM": 0, "LORA_DIM": 0, "ADAPTER_DIM": ours["bottleneck"], "PREFIX_DIM": 0}
               and flags)


def check_forward(report: Report, mode: str, make_official) -> None:
    import methods

    base, x = demo_vit(), images(4, 32)
    for hp in ({}, {"bottleneck": 4, "scale": 1.0} if mode == "parallel" else {"bottleneck": 4}):
        torch.manual_seed(0)
        model = methods.get("adapter").apply(base, num_classes=10, mode=mode, **hp)
        perturb(model, std=0.1)
        ref = make_official(base, model)
        shown = ("bottleneck", "scale") if mode == "parallel" else ("bottleneck",)  # sequential has no scale
        label = f"{mode}, " + ", ".join(f"{k} {model.peft_hparams[k]}" for k in shown)
        compare_logits(report, f"demo ViT ({label})", model, ref, x, base, TOL,
                       acts=("the adapters act", "dropout acts"))


def check_init(report: Report, af, noah, noah_dropout: float) -> None:
    from methods.adapter import Bottleneck

    width, bottleneck = 768, 8
    torch.manual_seed(0)
    theirs = af.Adapter(d_model=width, bottleneck=bottleneck, dropout=0.1, init_option="lora", adapter_scalar="0.1",
                        adapter_layernorm_option="none")
    ours = Bottleneck(width, bottleneck, "parallel", like=torch.zeros(()))
    bound = 1 / math.sqrt(width)  # kaiming_uniform_(a=sqrt(5)): sqrt(6 / ((1 + 5) fan_in))
    rows = []
    for name, down, rest in (("official", theirs.down_proj.weight,
                              (theirs.down_proj.bias, theirs.up_proj.weight, theirs.up_proj.bias)),
                             ("ours", ours.down.weight, (ours.down.bias, ours.up.weight, ours.up.bias))):
        peak, std = down.abs().max().item(), down.std().item()
        ok = 0.99 * bound < peak <= bound and abs(std - bound / math.sqrt(3)) < 0.03 * bound and not any(
            t.any() for t in rest)
        rows.append((f"{name} max {peak:.4f} std {std:.4f}", ok))
    report.add(f"parallel init (width {width}): down kaiming-uniform (bound {bound:.4f}, std {bound / math.sqrt(3):.4f}), "
               "down bias, up weight, up bias zero, official and ours", "; ".join(r for r, _ in rows),
               all(ok for _, ok in rows))

    base = demo_vit()
    torch.manual_seed(0)
    official = build_noah(noah, base, 10, 32, noah_dropout)
    ours = Bottleneck(base.embed_dim, 32, "sequential", like=torch.zeros(()))
    rows = []
    for name, weights, biases in (
            ("official", [w for b in official.blocks for w in (b.adapter.ln1.weight, b.adapter.ln2.weight)],
             [t for b in official.blocks for t in (b.adapter.ln1.bias, b.adapter.ln2.bias)]),
            ("ours", [ours.down.weight, ours.up.weight], [ours.down.bias, ours.up.bias])):
        w = torch.cat([t.detach().flatten() for t in weights])
        ok = abs(w.mean().item()) < 0.002 and 0.019 < w.std().item() < 0.021 and not any(t.any() for t in biases)
        rows.append((f"{name} std {w.std().item():.4f}, biases zero: {not any(t.any() for t in biases)}", ok))
    xavier = math.sqrt(2 / (base.embed_dim + 32))
    report.add(f"sequential init (demo width {base.embed_dim}, bottleneck 32): weights std 0.02 (not AdapterSuper's "
               f"xavier, std {xavier:.3f}), zero biases, official model and ours", "; ".join(r for r, _ in rows),
               all(ok for _, ok in rows))


def check_counts(report: Report, af, noah) -> None:
    per = {"parallel": sum(p.numel() for p in af.Adapter(d_model=768, bottleneck=8, init_option="lora",
                                                          adapter_layernorm_option="none").parameters()),
           "sequential": 0}
    with contextlib.redirect_stdout(io.StringIO()):  # AdapterSuper prints its width
        per["sequential"] = sum(p.numel() for p in noah.AdapterSuper(768, 8).parameters())
    for mode, n in per.items():
        ours = vit_b_count("adapter", mode=mode)
        report.add(f"count ViT-B/16 ({mode}, bottleneck 8): 12 official adapters = ours", f"{12 * n:,} / {ours:,}",
                   12 * n == ours)


def body(af_repo: Path, noah_repo: Path, report: Report) -> None:
    af, noah = load_adaptformer(af_repo), load_noah(noah_repo)
    noah_dropout = argument_default((noah_repo / "supernet_train_prompt.py").read_text(), "--drop_rate_adapter")
    check_config(report, af_repo, noah_repo, noah_dropout, af)
    check_forward(report, "parallel", functools.partial(official_parallel, af, af_repo))
    check_forward(report, "sequential", functools.partial(official_sequential, noah, noah_dropout))
    check_init(report, af, noah, noah_dropout)
    check_counts(report, af, noah)


def main(argv: list[str] | None = None) -> int:
    return run_checkouts(__doc__, {"adaptformer": (ADAPTFORMER, ADAPTFORMER_FILES), "noah": (NOAH, NOAH_FILES)},
                         "methods/adapter.py (registered 'adapter')", body, argv, old_timm=True)


if __name__ == "__main__":
    sys.exit(main())
