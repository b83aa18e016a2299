"""Our ``adapter_plus`` (methods/adapter_plus.py) against the official Adapter+ code (Steitz & Roth,
CVPR 2024), read from a checkout of visinf/adapter_plus at run time. Nothing of that code is in this
repository.

    git clone https://github.com/visinf/adapter_plus /tmp/adapter_plus
    .venv/bin/python -m benchmarks.official.adapter_plus --repo /tmp/adapter_plus

Official: ``adapter_plus/vit_adapter.py`` (``Adapter``; ``AdapterBlock``, a subclass of timm's
``Block`` whose ``forward_post`` runs the adapter after the block; ``VisionTransformerAdapter.
forward_features``), configured by ``conf/adapter/adapter_plus.yaml`` over ``base_adapter.yaml``,
read from the checkout. Checked, fp32 on CPU, one thread:

- configuration: the official Adapter+ config is the one ours implements (post placement, per-channel
  scaling, the block's GELU, no norm, biases, Houlsby init, no dropout, no attention adapter), its
  ``dim`` and ``drop_path`` are our defaults, and the bottlenecks of the official "dim1-32" VTAB runs
  (``conf/experiment/vtab/adapter_plus_dim1-32.yaml``) are our search space;
- init: drawn after the same seed, the official ``Adapter`` (that config) and ours hold the same
  tensors (width 96 and 768);
- forward: the demo ViT with ours, against the same ViT whose blocks are official ``AdapterBlock``\\ s
  holding the same tensors, with the official ``forward_features``; eval logits, and train-mode
  logits under one seed (the same DropPath masks), at the defaults and at bottleneck 2 with drop
  path 0.3, the adapters' tensors perturbed; another seed must give other train-mode logits;
- count: 12 official ``Adapter``\\ s of width 768 against our trainable count on ViT-B/16.

The official ``VisionTransformerAdapter`` cannot be built with the installed timm (1.0.31's
``VisionTransformer`` passes its blocks arguments ``AdapterBlock`` does not take), so its blocks
are put into timm's ViT and its ``forward_features`` is run on it (the method reads only what timm's
ViT has, and ``prompt_config``, None here; timm's ``forward`` passes it ``attn_mask=None`` and
``is_causal=False`` as well, which are dropped). Exit 0 when every check ran and passed (logits
within 1e-4, init and counts exact), 1 otherwise, 2 when ``--repo`` is not a checkout of
visinf/adapter_plus.
"""
from __future__ import annotations

import copy
import functools
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from benchmarks.official.common import (Report, compare_logits, demo_vit, images, load_backbone, max_diff, perturb,
                                        run, vit_b_count, with_head_of)
from benchmarks.official.load import load_module

REPOSITORY = "visinf/adapter_plus"
FILES = ("adapter_plus/vit_adapter.py", "conf/adapter/adapter_plus.yaml", "conf/adapter/base_adapter.yaml",
         "conf/experiment/vtab/adapter_plus_dim1-32.yaml")
TOL = 1e-4
# what methods/adapter_plus.py implements (its docstring), besides the dim and drop_path defaults
IMPLEMENTED = {"config": "post", "scaling": "channel", "act_layer": True, "norm_layer": False, "bias": True,
               "init": "houlsby", "dropout": 0, "attn_adapter": False}


def official_config(repo: Path) -> types.SimpleNamespace:
    """``conf/adapter/adapter_plus.yaml`` over its default ``base_adapter.yaml`` (hydra's order)."""
    folder = repo / "conf" / "adapter"
    top = yaml.safe_load((folder / "adapter_plus.yaml").read_text())
    merged = {}
    for default in top.pop("defaults", []):
        merged.update(yaml.safe_load((folder / f"{default}.yaml").read_text()))
    merged.update(top)
    return types.SimpleNamespace(**merged)


def official_adapter(vit_adapter, cfg, width: int) -> nn.Module:
    """``Adapter`` built as ``AdapterBlock.__init__`` builds it from ``cfg`` (act_layer: the block's GELU)."""
    return vit_adapter.Adapter(width, bottleneck_dim=cfg.dim, dropout=cfg.dropout, drop_path=cfg.drop_path,
                               act_layer=nn.GELU if cfg.act_layer else None,
                               norm_layer=nn.LayerNorm if cfg.norm_layer else None, bias=cfg.bias,
                               scaling=cfg.scaling, init=cfg.init)


def check_config(report: Report, repo: Path, cfg) -> None:
    import methods
    from methods.adapter_plus import BOTTLENECKS

    ours = methods.get("adapter_plus").defaults
    seen = {k: getattr(cfg, k, None) for k in IMPLEMENTED}
    report.add("config: official adapter_plus.yaml = what ours implements", str(seen), seen == IMPLEMENTED)
    report.add("config: official dim, drop_path = our defaults", f"{cfg.dim}, {cfg.drop_path} / "
               f"{ours['bottleneck']}, {ours['drop_path']}",
               (cfg.dim, cfg.drop_path) == (ours["bottleneck"], ours["drop_path"]))
    runs = yaml.safe_load((repo / "conf/experiment/vtab/adapter_plus_dim1-32.yaml").read_text())
    dims = sorted(set(runs["dataset_dim"].values()))
    report.add("search space: the dims of the official dim1-32 VTAB runs = ours", f"{dims} / {BOTTLENECKS}",
               dims == sorted(BOTTLENECKS))


def check_init(report: Report, vit_adapter, cfg) -> None:
    from methods.adapter_plus import AdapterPlus

    for width in (96, 768):
        torch.manual_seed(7)
        theirs = official_adapter(vit_adapter, cfg, width)
        torch.manual_seed(7)
        ours = AdapterPlus(width, cfg.dim, cfg.drop_path, like=torch.zeros(()))
        pairs = [(ours.down.weight, theirs.bottleneck[1].weight), (ours.down.bias, theirs.bottleneck[1].bias),
                 (ours.up.weight, theirs.bottleneck[4].weight), (ours.up.bias, theirs.bottleneck[4].bias),
                 (ours.scale, theirs.scaling)]
        equal = all(a.shape == b.shape and torch.equal(a, b) for a, b in pairs)
        report.add(f"init, width {width}: same seed, same tensors (down, up, biases, scale)",
                   "equal" if equal else f"max diff {max(max_diff(a, b) for a, b in pairs if a.shape == b.shape):.2e}",
                   equal)


def official_model(vit_adapter, cfg, base: nn.Module, ours: nn.Module) -> nn.Module:
    """``base`` with ``ours``'s head, each block an official ``AdapterBlock`` holding the block's tensors
    and our adapter's, and the official ``forward_features``."""
    ref = with_head_of(base, ours)
    for i, block in enumerate(ref.blocks):
        adapter = ours.blocks[i].adapter
        block_cfg = copy.copy(cfg)
        block_cfg.dim, block_cfg.drop_path = adapter.down.out_features, ours.peft_hparams["drop_path"]
        width = block.norm1.normalized_shape[0]
        official = vit_adapter.AdapterBlock(
            width, block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / width,
            qkv_bias=block.attn.qkv.bias is not None, act_layer=nn.GELU,
            norm_layer=functools.partial(nn.LayerNorm, eps=block.norm1.eps), adapter_config=block_cfg)
        load_backbone(official, block.state_dict(), extra=("adapter.",))
        with torch.no_grad():
            official.adapter.bottleneck[1].load_state_dict(adapter.down.state_dict())
            official.adapter.bottleneck[4].load_state_dict(adapter.up.state_dict())
            official.adapter.scaling.copy_(adapter.scale)
        ref.blocks[i] = official
    ref.prompt_config = None
    official_features = vit_adapter.VisionTransformerAdapter.forward_features

    def forward_features(x, attn_mask=None, is_causal=False):  # timm 1.0.31's forward passes these two
        assert attn_mask is None and not is_causal
        return official_features(ref, x)

    ref.forward_features = forward_features
    return ref


def check_forward(report: Report, vit_adapter, cfg) -> None:
    import methods

    base, x = demo_vit(), images(4, 32)
    for hp in ({}, {"bottleneck": 2, "drop_path": 0.3}):
        torch.manual_seed(0)
        model = methods.get("adapter_plus").apply(base, num_classes=10, **hp)
        perturb(model, std=0.05)
        ref = official_model(vit_adapter, cfg, base, model)
        label = ", ".join(f"{k} {v}" for k, v in model.peft_hparams.items())
        compare_logits(report, f"demo ViT ({label})", model, ref, x, base, TOL,
                       acts=("the adapters act", "drop path acts"))


def check_count(report: Report, vit_adapter, cfg) -> None:
    torch.manual_seed(0)
    official = 12 * sum(p.numel() for p in official_adapter(vit_adapter, cfg, 768).parameters() if p.requires_grad)
    ours = vit_b_count("adapter_plus")
    report.add("count ViT-B/16 (dim 8): 12 official Adapters = ours", f"{official:,} / {ours:,}", official == ours)


def body(repo: Path, report: Report) -> None:
    vit_adapter = load_module(repo, "adapter_plus/vit_adapter.py", "adapter_plus_vit_adapter")
    cfg = official_config(repo)
    print(f"official Adapter+ config (conf/adapter/adapter_plus.yaml over base_adapter.yaml): {vars(cfg)}")
    check_config(report, repo, cfg)
    check_init(report, vit_adapter, cfg)
    check_forward(report, vit_adapter, cfg)
    check_count(report, vit_adapter, cfg)


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, REPOSITORY, FILES, "methods/adapter_plus.py (registered 'adapter_plus')", body, argv,
               old_timm=True)


if __name__ == "__main__":
    sys.exit(main())
