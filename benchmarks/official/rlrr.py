"""RLRR's residual dropout (``methods.families.set_residual_dropout``, which the ``rlrr-paper`` recipe
sets) and our ``rlrr`` (methods/rlrr.py) against the official RLRR code (Dong et al., CVPR 2024),
read from a checkout of zstarN70/RLRR at run time. Nothing of that code is in this repository.

    git clone https://github.com/zstarN70/RLRR /tmp/rlrr
    .venv/bin/python -m benchmarks.official.rlrr --repo /tmp/rlrr

Official: ``models/networks.py`` (``RLRRBlock``: ``drop_path1`` / ``drop_path2`` are
``nn.Dropout(p=drop_path)`` on the attention and MLP branches; ``RLRREncoder``: the rates
``torch.linspace(0, drop_path, num_layers)``; ``RLRRVisionTransformer``), ``models/configs.py`` (the
ViT-B/16 config), ``RLRRDatasets/VTABConfig.py`` and ``FGVCConfig.py`` (the per-task settings the
recipe transcribes). Checked, fp32 on CPU, one thread:

- config: the official ViT-B/16 config has no attention or MLP dropout (rates 0), so the blocks'
  only dropout is the residual one;
- rates: at 0.1, 0.3 and 0.5, on 4 and 12 blocks, each block's two residual dropouts are
  ``nn.Dropout`` (element-wise, not stochastic depth) at the official encoder's rate, in ours and
  in the official encoder;
- residual dropout alone: the demo ViT's blocks and final norm with ``set_residual_dropout`` against
  the official ``RLRREncoder`` without RLRR (``enable_rlrr=False``) holding the same tensors (q, k, v
  the rows of timm's fused qkv): train mode under one seed (the same element-wise masks, drawn in the
  same order) and eval mode, rates 0.1, 0.3, 0.5; another seed must move ours;
- RLRR with it (what the recipe trains): our ``rlrr`` on the demo ViT with ``set_residual_dropout``,
  its scales, shifts and SSF perturbed, against the official ``RLRRVisionTransformer`` of that shape
  (``enable_rlrr=True``) holding the same tensors (``s_in`` rows as the query, key and value
  ``scale_col``, ``s_out`` and ``t`` chunks as their ``scale_line`` and ``shift_bias``, the SSF after
  the patch embedding, norm1, norm2 and the final norm as ``ssf_*_patch``, ``ssf_*_attn_norm``,
  ``ssf_*_ffn_norm``, ``ssf_*_enc_norm``; every official tensor given, and nothing else): logits in
  eval mode and in train mode under one seed, rates 0 and 0.3;
- recipe: for every task of ``bench/catalog_data/recipes/rlrr-paper.toml``, its lr, weight decay,
  residual dropout, batch size and (VTAB) flip are the official config's ``lr``, ``weight_decay``,
  ``drop_path``, ``batch_size`` and ``simple_aug``.

``models/configs.py`` and the dataset configs build ``ml_collections.ConfigDict``\\ s; ml_collections is
not a dependency of this project, so a dict with attribute access stands in for it, and
``networks.py``'s ``from models import configs`` is given the configs file loaded that way (see
``load.load_module``'s ``replace``). Exit 0 when every check ran and passed (outputs within 1e-5,
rates and settings exact), 1 otherwise, 2 when ``--repo`` is not a checkout of zstarN70/RLRR.
"""
from __future__ import annotations

import copy
import re
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.official.common import Report, compare_logits, demo_vit, images, max_diff, perturb, run
from benchmarks.official.load import LoadError, load_module

REPOSITORY = "zstarN70/RLRR"
FILES = ("models/networks.py", "models/configs.py", "RLRRDatasets/VTABConfig.py", "RLRRDatasets/FGVCConfig.py")
TOL = 1e-5
RATES = (0.1, 0.3, 0.5)


class ConfigDict(dict):
    """Stands in for ``ml_collections.ConfigDict``: a dict whose keys are attributes too."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def __delattr__(self, key):
        del self[key]


def load(repo: Path) -> types.SimpleNamespace:
    stand_in = {"ml_collections": {"ConfigDict": ConfigDict}}
    configs = load_module(repo, "models/configs.py", "rlrr_configs", replace=stand_in)
    networks = load_module(repo, "models/networks.py", "rlrr_networks", replace={"models": {"configs": configs}})
    vtab = load_module(repo, "RLRRDatasets/VTABConfig.py", "rlrr_vtab_config", replace=stand_in)
    fgvc = load_module(repo, "RLRRDatasets/FGVCConfig.py", "rlrr_fgvc_config", replace=stand_in)
    return types.SimpleNamespace(networks=networks, vtab=vtab.DATA_CONFIGS, fgvc=fgvc.DATA_CONFIGS)


def official_config(base: nn.Module, depth: int | None = None) -> ConfigDict:
    """The official config of ``base``'s shape (``models/configs.py``'s fields), no attention or MLP dropout."""
    block = base.blocks[0]
    return ConfigDict(patches=ConfigDict(size=tuple(base.patch_embed.patch_size)), hidden_size=base.embed_dim,
                      transformer=ConfigDict(mlp_dim=block.mlp.fc1.out_features, num_heads=block.attn.num_heads,
                                             num_layers=depth or len(base.blocks), attention_dropout_rate=0.0,
                                             dropout_rate=0.0),
                      classifier="token", representation_size=None)


# our state_dict names (plain timm ViT, or with rlrr's wrappers: .inner / .base) -> the official ones
_LINEARS = {"attn.qkv": ("attn.query", "attn.key", "attn.value"), "attn.proj": ("attn.out",),
            "mlp.fc1": ("ffn.fc1",), "mlp.fc2": ("ffn.fc2",)}
_NORMS = {"norm1": ("attention_norm", "attn_norm"), "norm2": ("ffn_norm", "ffn_norm")}


def official_state(ours: dict, encoder_only: bool) -> dict:
    """``ours`` (a state dict of a timm ViT, plain or with rlrr) under the official names: those of
    ``RLRREncoder`` when ``encoder_only``, else of ``RLRRVisionTransformer``."""
    enc = "" if encoder_only else "transformer.encoder."
    emb = "transformer.embeddings."
    out = {}
    for key, value in ours.items():
        key = key.replace(".inner.", ".").replace(".base.", ".")
        if m := re.fullmatch(r"blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(\w+)", key):
            i, linear, leaf = m.groups()
            names = _LINEARS[linear]
            chunks = value.chunk(len(names))
            for name, chunk in zip(names, chunks):
                prefix = f"{enc}layer.{i}.{name}"
                if leaf in ("weight", "bias"):
                    out[f"{prefix}.mlp.{leaf}"] = chunk
                else:  # s_in (groups, in) -> scale_col (1, in); s_out (out, 1) -> scale_line; t -> shift_bias (1, out)
                    official = {"s_in": "scale_col", "s_out": "scale_line", "t": "shift_bias"}[leaf]
                    out[f"{prefix}.{official}"] = chunk.reshape(1, -1) if leaf == "t" else chunk
        elif m := re.fullmatch(r"blocks\.(\d+)\.(norm1|norm2)\.(\w+)", key):
            i, norm, leaf = m.groups()
            module, ssf = _NORMS[norm]
            out[f"{enc}layer.{i}.{module}.{leaf}" if leaf in ("weight", "bias")
                else f"{enc}layer.{i}.ssf_{leaf}_{ssf}"] = value
        elif m := re.fullmatch(r"norm\.(\w+)", key):
            leaf = m.group(1)
            out[f"{enc}encoder_norm.{leaf}" if leaf in ("weight", "bias") else f"{enc}ssf_{leaf}_enc_norm"] = value
        elif encoder_only:
            continue  # the embeddings and the head are not the encoder's
        elif m := re.fullmatch(r"patch_embed\.proj\.(\w+)", key):
            leaf = m.group(1)
            out[f"{emb}patch_embeddings.{leaf}" if leaf in ("weight", "bias") else f"{emb}ssf_{leaf}_patch"] = value
        elif key in ("cls_token", "pos_embed"):
            out[emb + {"cls_token": "cls_token", "pos_embed": "position_embeddings"}[key]] = value
        elif key.startswith("head."):
            out[key] = value
        else:
            raise LoadError(f"no official name for our {key}")
    return out


def check_config(report: Report, off) -> None:
    t = off.networks.CONFIGS["ViT-B_16"].transformer
    rates = (t["attention_dropout_rate"], t["dropout_rate"])
    report.add("official ViT-B/16 config: attention and MLP dropout rates 0 (the residual dropout is the blocks' "
               "only dropout)", f"attention_dropout_rate {rates[0]}, dropout_rate {rates[1]}", rates == (0.0, 0.0))


def check_rates(report: Report, off) -> None:
    from timm.models.vision_transformer import VisionTransformer

    from methods.families import set_residual_dropout

    for depth in (4, 12):
        torch.manual_seed(0)
        ours = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=depth, num_heads=3, num_classes=0)
        bad = []
        for rate in RATES:
            set_residual_dropout(ours, rate)
            theirs = off.networks.RLRREncoder(official_config(ours), vis=False, drop_path=rate, enable_rlrr=False)
            for i, (a, b) in enumerate(zip(ours.blocks, theirs.layer)):
                pairs = ((a.drop_path1, b.drop_path1), (a.drop_path2, b.drop_path2))
                if not all(type(x) is type(y) is nn.Dropout and x.p == y.p for x, y in pairs):
                    bad.append(f"rate {rate} block {i}: ours {a.drop_path1}, official {b.drop_path1}")
        report.add(f"rates, {depth} blocks, residual dropout {', '.join(map(str, RATES))}: each block's two "
                   "residual dropouts nn.Dropout at the official encoder's rate",
                   f"{len(bad)} differ, e.g. {bad[0]}" if bad else "every block equal at each rate", not bad)


def check_residual_dropout(report: Report, off) -> None:
    """The plain demo ViT: our blocks + final norm with ``set_residual_dropout`` vs ``RLRREncoder``."""
    from methods.families import set_residual_dropout

    base = demo_vit()
    x = torch.randn(2, 17, base.embed_dim, generator=torch.Generator().manual_seed(3))
    for rate in RATES:
        model = copy.deepcopy(base)
        set_residual_dropout(model, rate)
        theirs_enc = off.networks.RLRREncoder(official_config(base), vis=False, drop_path=rate, enable_rlrr=False)
        theirs_enc.load_state_dict(official_state(base.state_dict(), encoder_only=True), strict=True)

        def ours_enc(h):
            return model.norm(model.blocks(h))

        with torch.no_grad():
            model.train(), theirs_enc.train()
            torch.manual_seed(1)
            ours = ours_enc(x)
            torch.manual_seed(1)
            theirs = theirs_enc(x)
            torch.manual_seed(2)
            other = max_diff(ours_enc(x), ours)
            report.diff(f"residual dropout {rate}, blocks + final norm, train mode, one seed: ours vs official "
                        f"RLRREncoder (another seed moves ours by {other:.1e}: the dropout acts)",
                        max_diff(ours, theirs), TOL, ok=other > 1e-2)
            model.eval(), theirs_enc.eval()
            report.diff(f"residual dropout {rate}, blocks + final norm, eval: ours vs official RLRREncoder",
                        max_diff(ours_enc(x), theirs_enc(x)), TOL)


def check_rlrr(report: Report, off) -> None:
    """Our rlrr with residual dropout vs the official ``RLRRVisionTransformer`` (``enable_rlrr=True``)."""
    import methods
    from methods.families import set_residual_dropout

    base, x = demo_vit(), images(4, 32)
    for rate in (0.0, 0.3):
        torch.manual_seed(0)
        model = methods.get("rlrr").apply(base, num_classes=10)
        perturb(model, std=0.05)
        set_residual_dropout(model, rate)
        ref = off.networks.RLRRVisionTransformer(official_config(base), img_size=base.patch_embed.img_size[0],
                                                 num_classes=10, zero_head=True, drop_path=rate, enable_rlrr=True)
        ref.load_state_dict(official_state(model.state_dict(), encoder_only=False), strict=True)
        compare_logits(report, f"rlrr, residual dropout {rate}", model, ref, x, base, TOL, acts=("RLRR acts", ""),
                       official="official RLRRVisionTransformer", stochastic=bool(rate))  # rate 0: no dropout at all


def check_recipe(report: Report, off) -> None:
    from bench.catalog import load_suite
    from bench.recipes import load_recipe

    recipe = load_recipe("rlrr-paper")
    keys = {"lr": "lr", "weight_decay": "weight_decay", "residual_dropout": "drop_path", "batch_size": "batch_size"}
    for suite, official in (("vtab1k", off.vtab), ("fgvc", off.fgvc)):
        tasks = load_suite(suite).tasks
        names = {alias: t.name for t in tasks.values() for alias in (t.name, *t.aliases)}
        bad, seen = [], set()
        for official_name, cfg in official.items():
            task = names.get(official_name)
            if task is None:
                bad.append(f"{official_name}: no task of ours")
                continue
            seen.add(task)
            ours = recipe.setting(suite, task, "rlrr").train
            pairs = {k: (ours[k], cfg[o]) for k, o in keys.items()}
            if "simple_aug" in cfg:
                pairs["flip"] = (ours["flip"], cfg["simple_aug"])
            bad += [f"{task} {k}: ours {a}, official {b}" for k, (a, b) in pairs.items() if a != b]
        bad += [f"{t}: no official config" for t in tasks if t not in seen]
        what = "lr, weight decay, residual dropout (drop_path), batch size" + (", flip (simple_aug)"
                                                                               if suite == "vtab1k" else "")
        report.add(f"recipe rlrr-paper, {suite}: {what} of every task = the official config's",
                   "; ".join(bad) or f"{len(seen)} tasks equal", not bad)


def body(repo: Path, report: Report) -> None:
    off = load(repo)
    check_config(report, off)
    check_rates(report, off)
    check_residual_dropout(report, off)
    check_rlrr(report, off)
    check_recipe(report, off)


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, REPOSITORY, FILES, "methods.families.set_residual_dropout; methods/rlrr.py (registered "
               "'rlrr'); the rlrr-paper recipe", body, argv)


if __name__ == "__main__":
    sys.exit(main())
