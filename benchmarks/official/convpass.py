"""Our ``convpass`` (methods/convpass.py) against the official Convpass code (Jie & Deng, arXiv
2207.07039), read from a checkout of JieShibo/PETL-ViT at run time. Nothing of that code is in this
repository.

    git clone https://github.com/JieShibo/PETL-ViT /tmp/petl_vit
    .venv/bin/python -m benchmarks.official.convpass --repo /tmp/petl_vit

Official: ``convpass/vtab/convpass.py`` (``set_Convpass``: a ``Convpass`` bypass beside the attention,
and for method ``convpass`` beside the MLP too, with the block forward ``forward_block`` /
``forward_block_attn``), the per-task configs ``convpass/vtab/configs/convpass*/*.yaml`` and
``convpass/vtab/train.py`` (dim, what trains). ``Convpass`` hard-codes the width 768, the 14 x 14
patch grid and, for the identity init, dim 8: the model compared is a ViT of width 768 (12 heads,
2 blocks) on 56-pixel images with patch 4 (196 patches and the class token), random, with noise on
every 1-d tensor. Checked, fp32 on CPU, one thread, for mode ``block`` (official ``convpass``) and
``attn`` (``convpass_attn``), at scale 0.5 and at our defaults (scale 1):

- forward: ours, with every bypass tensor perturbed, against the same ViT after the official
  ``set_Convpass`` holding the same tensors (``adapter_down``, ``adapter_conv``, ``adapter_up``): eval
  logits (the official logits must move away from the backbone's), and train-mode logits under one
  seed (the same dropout masks; another seed must give other logits);
- init: with ``xavier_init=False`` (our ``conv_init="identity"``) every tensor drawn without
  randomness is the same in both (conv weight: the identity at the centre tap, conv bias, down
  bias, up weight and bias zero); with ``xavier_init=True`` the zero tensors;
- count: the official trainable count on ViT-B/16 (``train.py``: every tensor whose name has
  ``adapter``) against ours, for both modes;
- settings: the scales and ``xavier_init`` values of the 19 official configs of each method against
  our search space, and ``train.py``'s dim against our default.

The official file runs as it is, given one name timm 1.0.31's ``Block`` no longer has (said in the
output): ``forward_block`` calls ``self.drop_path`` (timm 1.0.31: ``drop_path1`` and ``drop_path2``,
both Identity here: ``drop_path1`` is given as ``drop_path``). Exit 0 when every check ran and passed
(logits within 1e-5, init, counts and settings exact), 1 otherwise, 2 when ``--repo`` is not a checkout
of JieShibo/PETL-ViT.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from benchmarks.official.common import (Report, check_vit_b_count, compare_logits, images, perturb, randomised_vit,
                                        run, search_space, vit_b, with_head_of)
from benchmarks.official.load import LoadError, load_module

REPOSITORY = "JieShibo/PETL-ViT"
FILES = ("convpass/vtab/convpass.py", "convpass/vtab/train.py", "convpass/vtab/configs/convpass/cifar.yaml",
         "convpass/vtab/configs/convpass_attn/cifar.yaml")
TOL = 1e-5
# Convpass hard-codes width 768 and a 14 x 14 grid
SHAPE = dict(img_size=56, patch_size=4, embed_dim=768, depth=2, num_heads=12, mlp_ratio=4.0)
METHODS = {"block": "convpass", "attn": "convpass_attn"}  # our mode: the official method
STD = 0.05  # the perturbation of every bypass tensor


def official_model(convpass, base: nn.Module, ours: nn.Module) -> nn.Module:
    """``base`` with ``ours``'s head through the official ``set_Convpass``, holding ``ours``'s bypass tensors."""
    hp = ours.peft_hparams
    ref = with_head_of(base, ours)
    convpass.set_Convpass(ref, METHODS[hp["mode"]], dim=hp["dim"], s=hp["scale"],
                          xavier_init=hp["conv_init"] == "xavier")
    for block, mine in zip(ref.blocks, ours.blocks):
        if not (isinstance(block.drop_path1, nn.Identity) and isinstance(block.drop_path2, nn.Identity)
                and isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)):
            raise LoadError("the model has drop path or LayerScale, which the official block forward lays out "
                            "otherwise")
        block.drop_path = block.drop_path1  # timm 0.4's name
        pairs = [(block.adapter_attn, mine.attn.adapter)]
        if hp["mode"] == "block":
            pairs.append((block.adapter_mlp, mine.mlp.adapter))
        with torch.no_grad():
            for theirs, adapter in pairs:
                theirs.adapter_down.load_state_dict(adapter.down.state_dict())
                theirs.adapter_conv.load_state_dict(adapter.conv.state_dict())
                theirs.adapter_up.load_state_dict(adapter.up.state_dict())
    return ref


def check_forward(report: Report, convpass) -> None:
    import methods

    base, x = randomised_vit(**SHAPE), images(3, 56)
    for mode in METHODS:
        for hp in ({"scale": 0.5}, {}):
            torch.manual_seed(0)
            model = methods.get("convpass").apply(base, num_classes=10, mode=mode, **hp)
            perturb(model, std=STD)
            ref = official_model(convpass, base, model)
            label = f"mode {mode} ({METHODS[mode]}), scale {model.peft_hparams['scale']:g}"
            compare_logits(report, label, model, ref, x, base, TOL, acts=("", "dropout acts"))


def check_init(report: Report, convpass) -> None:
    from methods.convpass import ConvBypass

    for conv_init, xavier in (("identity", False), ("xavier", True)):
        torch.manual_seed(0)
        theirs = convpass.Convpass(8, xavier_init=xavier)
        ours = ConvBypass(768, 8, conv_init, 1, like=torch.zeros(()))
        pairs = {"down bias": (ours.down.bias, theirs.adapter_down.bias),
                 "up weight": (ours.up.weight, theirs.adapter_up.weight),
                 "up bias": (ours.up.bias, theirs.adapter_up.bias),
                 "conv bias": (ours.conv.bias, theirs.adapter_conv.bias)}
        if not xavier:
            pairs["conv weight"] = (ours.conv.weight, theirs.adapter_conv.weight)
        equal = [k for k, (a, b) in pairs.items() if a.shape == b.shape and torch.equal(a, b)]
        shapes = all(a.shape == b.shape for a, b in ((ours.down.weight, theirs.adapter_down.weight),
                                                     (ours.conv.weight, theirs.adapter_conv.weight)))
        report.add(f"init, xavier_init={xavier} (ours conv_init {conv_init}): the tensors drawn without randomness "
                   "are equal (and the random ones of the same shapes)", ", ".join(equal) or "none",
                   shapes and len(equal) == len(pairs))


def check_count(report: Report, convpass) -> None:
    for mode, method in METHODS.items():
        theirs = vit_b()
        convpass.set_Convpass(theirs, method, dim=8, s=1)
        check_vit_b_count(report, f"count ViT-B/16, {method}: official (tensors named adapter) = ours", theirs,
                          "adapter", "convpass", mode=mode)


def check_settings(report: Report, repo: Path) -> None:
    import methods

    space = search_space("convpass")
    inits = {False: "identity", True: "xavier"}
    union = set()
    for method in METHODS.values():
        configs = [yaml.safe_load(p.read_text())
                   for p in sorted((repo / "convpass/vtab/configs" / method).glob("*.yaml"))]
        scales = sorted({float(c["scale"]) for c in configs})
        xavier = sorted({inits[bool(c["xavier_init"])] for c in configs})
        union |= set(scales)
        report.add(f"settings: the scales and xavier_init of the {len(configs)} official {method} configs are in our "
                   f"search space", f"{scales}, {xavier} / {space['scale']}, {space['conv_init']}",
                   bool(configs) and set(scales) <= set(space["scale"]) and set(xavier) <= set(space["conv_init"]))
    report.add("settings: the official scales of both methods together = our scales", f"{sorted(union)}",
               sorted(union) == sorted(space["scale"]))
    found = re.search(r"set_Convpass\(model, args\.method, dim=(\d+)", (repo / "convpass/vtab/train.py").read_text())
    dim = int(found.group(1)) if found else None
    ours = methods.get("convpass").defaults["dim"]
    report.add("settings: train.py's dim = our default dim", f"{dim} / {ours}", dim == ours)


def body(repo: Path, report: Report) -> None:
    convpass = load_module(repo, "convpass/vtab/convpass.py", "petl_vit_convpass")
    print("note: each timm 1.0.31 Block gets its drop_path1 (Identity) as the drop_path the official forward calls")
    check_forward(report, convpass)
    check_init(report, convpass)
    check_count(report, convpass)
    check_settings(report, repo)


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, REPOSITORY, FILES, "methods/convpass.py (registered 'convpass')", body, argv, old_timm=True)


if __name__ == "__main__":
    sys.exit(main())
