"""Our ``repadapter`` (methods/repadapter.py) against the official RepAdapter code (Luo et al., arXiv
2302.08106), read from a checkout of luogen1996/RepAdapter at run time. Nothing of that code is in
this repository.

    git clone https://github.com/luogen1996/RepAdapter /tmp/repadapter
    .venv/bin/python -m benchmarks.official.repadapter --repo /tmp/repadapter

Official: ``repadapter.py`` (``set_RepAdapter``: a ``RepAdapter`` in front of the attention, and for
method ``repblock`` in front of the MLP too, with the block forward ``forward_vit_block_adapter`` /
``forward_vit_attn_adapter``; ``set_RepWeight``, with ``reparameterize`` and ``sparse2dense``: the
structural re-parameterisation into qkv and fc1), as ``test.py`` uses them for inference
(``set_RepAdapter(..., set_forward=False)``, the trained tensors, ``set_RepWeight``), and the search
scripts ``scripts/search_repblock.sh`` / ``search_repattn.sh``. ``set_RepAdapter`` builds its adapters
with the width 768: the model compared is a ViT of width 768 (12 heads, 2 blocks) on 32-pixel
images with patch 8, random, with noise on every 1-d tensor. Checked, fp32 on CPU, one thread, for
mode ``block`` (official ``repblock``) and ``attn`` (``repattn``), at scale 5 and at our defaults
(scale 1; dim 8, groups 2 in all):

- forward: ours, with every adapter tensor perturbed, against the same ViT after the official
  ``set_RepAdapter`` holding the same tensors (``conv_A``: our down projection, ``conv_B``: our
  grouped up projection, as 1x1 Conv1d weights): eval logits (the official logits must move away from
  the backbone's);
- re-parameterisation: the official inference model (timm's own block forward, the adapters folded
  by ``set_RepWeight``) against our merged model: the qkv and fc1 weights and biases of every block,
  and the logits; and the official inference model's logits against the official adapter forward;
- count: the official adapters on ViT-B/16 (every tensor of ``adapter_attn`` / ``adapter_mlp``)
  against ours, for both modes;
- settings: the scales of the official search scripts against our search space, their dim against
  our default, and ``RepAdapter``'s default groups, scale and dropout against ours.

Not compared: train mode (the official dropout draws its mask on (batch, dim, tokens), ours on
(batch, tokens, dim): the same distribution, other masks under one seed), the initialisation draws
(the official 1x1 convolutions draw their default init before the xavier one, ours a Linear's:
tests/test_baselines.py checks our init) and Swin (the official Swin forward is written for timm
0.4's ``SwinTransformerBlock``). The official file runs as it is. Exit 0 when every check ran and
passed (logits and merged tensors within 1e-5, counts and settings exact), 1 otherwise, 2 when
``--repo`` is not a checkout of luogen1996/RepAdapter.
"""
from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.official.common import (Report, check_vit_b_count, compare_eval, images, max_diff, perturb,
                                        randomised_vit, run, search_space, vit_b, with_head_of)
from benchmarks.official.load import load_module

REPOSITORY = "luogen1996/RepAdapter"
FILES = ("repadapter.py", "test.py", "scripts/search_repblock.sh", "scripts/search_repattn.sh")
TOL = 1e-5
SHAPE = dict(img_size=32, patch_size=8, embed_dim=768, depth=2, num_heads=12, mlp_ratio=4.0)  # width 768
METHODS = {"block": "repblock", "attn": "repattn"}  # our mode: the official method
STD = 0.05  # the perturbation of every adapter tensor


def adapters(block: nn.Module, mode: str) -> list[tuple[str, str]]:
    """(official adapter attribute, the Linear it feeds) of a block."""
    return [("adapter_attn", "attn.qkv")] + ([("adapter_mlp", "mlp.fc1")] if mode == "block" else [])


def official_model(repadapter, base: nn.Module, ours: nn.Module, set_forward: bool = True) -> nn.Module:
    """``base`` with ``ours``'s head after the official ``set_RepAdapter``, holding ``ours``'s adapter tensors."""
    hp = ours.peft_hparams
    ref = with_head_of(base, ours)
    repadapter.set_RepAdapter(ref, METHODS[hp["mode"]], dim=hp["dim"], s=hp["scale"], set_forward=set_forward)
    with torch.no_grad():
        for block, mine in zip(ref.blocks, ours.blocks):
            for name, linear in adapters(block, hp["mode"]):
                theirs, adapter = getattr(block, name), mine.get_submodule(linear).adapter
                theirs.conv_A.weight.copy_(adapter.down.weight.unsqueeze(-1))
                theirs.conv_A.bias.copy_(adapter.down.bias)
                theirs.conv_B.weight.copy_(adapter.up_weight.unsqueeze(-1))
                theirs.conv_B.bias.copy_(adapter.up_bias)
    return ref.eval()


def check_forward_and_merge(report: Report, repadapter) -> None:
    import methods

    base, x = randomised_vit(**SHAPE), images(4, 32)
    for mode, method in METHODS.items():
        for hp in ({"scale": 5.0}, {}):
            torch.manual_seed(0)
            model = methods.get("repadapter").apply(base, num_classes=10, mode=mode, **hp)
            perturb(model, std=STD)
            model.eval()
            s = model.peft_hparams["scale"]
            label = f"mode {mode} ({method}), scale {s:g}"
            ref = official_model(repadapter, base, model)
            folded = official_model(repadapter, base, model, set_forward=False)
            repadapter.set_RepWeight(folded, method, dim=model.peft_hparams["dim"], s=s)
            merged = methods.get("repadapter").merge(model).eval()
            theirs = compare_eval(report, label, model, ref, x, base, TOL)
            with torch.no_grad():
                weights, biases, names = 0.0, 0.0, set()
                for i, block in enumerate(folded.blocks):
                    for _, linear in adapters(block, mode):
                        mine, official = merged.blocks[i].get_submodule(linear), block.get_submodule(linear)
                        weights = max(weights, max_diff(mine.weight, official.weight))
                        biases = max(biases, max_diff(mine.bias, official.bias))
                        names.add(linear.split(".")[1])
                    untouched = {"attn.proj", "mlp.fc2"} | ({"mlp.fc1"} if mode == "attn" else set())
                    for linear in untouched:
                        if not torch.equal(merged.blocks[i].get_submodule(linear).weight,
                                           base.blocks[i].get_submodule(linear).weight):
                            weights = float("inf")
                which = " and ".join(sorted(names, reverse=True))
                report.diff(f"{label}: merged {which} weights, ours vs official set_RepWeight (the other Linears "
                            "untouched)", weights, TOL)
                report.diff(f"{label}: merged {which} biases, ours vs official set_RepWeight", biases, TOL)
                inference = folded(x)
                report.diff(f"{label}: logits of our merged model vs the official re-parameterised one",
                            max_diff(merged(x), inference), TOL)
                report.diff(f"{label}: official re-parameterised logits vs the official adapter forward",
                            max_diff(inference, theirs), TOL)


def check_count(report: Report, repadapter) -> None:
    for mode, method in METHODS.items():
        theirs = vit_b()
        repadapter.set_RepAdapter(theirs, method, dim=8, s=1)
        check_vit_b_count(report, f"count ViT-B/16, {method}: official adapters = ours", theirs, "adapter_",
                          "repadapter", mode=mode)


def check_settings(report: Report, repo: Path, repadapter) -> None:
    import methods
    from methods.repadapter import DROPOUT

    method = methods.get("repadapter")
    ours = sorted(search_space("repadapter")["scale"])
    for script in ("search_repblock.sh", "search_repattn.sh"):
        text = (repo / "scripts" / script).read_text()
        scales = sorted({float(v) for v in re.findall(r"^\s*scale=([0-9.]+)", text, re.M)})
        dims = sorted({int(v) for v in re.findall(r"^\s*dim=(\d+)", text, re.M)})
        report.add(f"settings: scripts/{script} scales = our search space; its dim = our default",
                   f"{scales}, dim {dims} / {ours}, dim {method.defaults['dim']}",
                   scales == ours and dims == [method.defaults["dim"]])
    defaults = inspect.signature(repadapter.RepAdapter).parameters
    official = (defaults["groups"].default, defaults["scale"].default, repadapter.RepAdapter().dropout.p)
    mine = (method.defaults["groups"], method.defaults["scale"], DROPOUT)
    report.add("settings: RepAdapter's default groups, scale and dropout = ours", f"{official} / {mine}",
               official == mine)


def body(repo: Path, report: Report) -> None:
    repadapter = load_module(repo, "repadapter.py", "luogen_repadapter")
    check_forward_and_merge(report, repadapter)
    check_count(report, repadapter)
    check_settings(report, repo, repadapter)


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, REPOSITORY, FILES, "methods/repadapter.py (registered 'repadapter')", body, argv,
               old_timm=True)


if __name__ == "__main__":
    sys.exit(main())
