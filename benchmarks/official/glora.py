"""Our ``glora`` against the official GLoRA code (Chavan et al., 2023), read from a checkout of
Arnav0400/ViT-Slim at run time. Nothing of that code is in this repository.

    git clone https://github.com/Arnav0400/ViT-Slim /tmp/vitslim
    .venv/bin/python -m benchmarks.official.glora --repo /tmp/vitslim

Ours is peft 0.21's ``GloraLinear`` as methods/peft_tuners.py's "glora" row configures it
(``config_A_B="lora"``, ``config_C="lora"``, ``config_D_E="constant"``, r = 8). The official layer,
``SuperScalableLinear`` of ``GLoRA/layer.py``, is a supernet that samples one of 432 configurations
of (A, B, C, D, E) per forward unless ``eval_config`` is set; the configuration that is peft's is
``CONFIG`` below (A, B, C low-rank of rank r, D and E one constant each), and the official forward
runs unchanged with it. Checked, fp32 on CPU, one thread:

- layer: on every Linear shape the official code adapts in a ViT-B/16 block (qkv, proj, fc1, fc2)
  and on the demo's qkv, the same tensors copied into both give the same outputs, at init (both equal
  the backbone) and after every trainable tensor is perturbed; the official D and E are vectors of
  which ``'constant'`` reads the first entry: the others get noise, which must not matter;
- demo ViT: the same with the project's placement (every fused qkv), on the logits;
- initialisation: both zero one factor of every product and D, E; the other factor within peft's
  kaiming-uniform bound (ours) and the official xavier-uniform bound;
- count: the official ``EvolutionSearcher.get_param_tensor`` (``GLoRA/evolution_utils.py``) of each
  shape under ``CONFIG`` equals our layer's trainable count, 2 r (in + out) + r (in + 1) + 2; its
  ``get_param`` on ViT-B/16 (every block Linear) against the same sum over our layers, and our
  model's count (12 qkv) against 12 official qkv counts;
- placement: the official ``set_glora`` (``GLoRA/utils.py``) adapts every block Linear but the head,
  the project's row only the fused qkv.

``evolution_utils.py`` imports ``avalanche`` (for its evaluation, not called here): when it is not
installed, a stand-in lets the file import (said in the output). A file that cannot be imported
makes its checks SKIP. Exit 0 when every check ran and passed (outputs within 1e-4, counts exact),
1 otherwise, 2 when ``--repo`` is not a checkout of Arnav0400/ViT-Slim.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.official.common import demo_vit, images, perturb
from benchmarks.official.load import LoadError, commit_of, load_module, require

REPOSITORY = "Arnav0400/ViT-Slim"
FILES = ("GLoRA/layer.py", "GLoRA/utils.py", "GLoRA/evolution_utils.py")
RANK = 8
CONFIG = {"A": f"LoRA_{RANK}", "B": f"LoRA_{RANK}", "C": f"LoRA_{RANK}", "D": "constant", "E": "constant"}
TOL = 1e-4
# (in, out) of the Linears of a ViT-B/16 block (qkv, proj, fc1, fc2) and of the demo's qkv
SHAPES = {"qkv": (768, 2304), "proj": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768), "demo qkv": (96, 288)}
FACTORS = {"A": ("Ad", "Au"), "B": ("Bd", "Bu"), "C": ("Cd", "Cu")}


class Report:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, check: str, measured: str, ok: bool | None) -> None:
        self.rows.append((check, measured, "SKIP" if ok is None else "PASS" if ok else "FAIL"))

    def diff(self, check: str, value: float, ok: bool = True) -> None:
        self.add(check, f"{value:.2e}", ok and value < TOL)


def official_from(layer_mod, ours) -> nn.Module:
    """An official layer on a copy of ``ours``'s base Linear holding ``ours``'s current tensors."""
    official = layer_mod.SuperScalableLinear.from_linear(copy.deepcopy(ours.get_base_layer()), RANK)
    official.eval_config = dict(CONFIG)
    with torch.no_grad():
        for path, (d, u) in FACTORS.items():
            tensors = getattr(ours, f"glora_{path}")["default"]
            getattr(official, d).copy_(tensors.Xd)
            getattr(official, u).copy_(tensors.Xu)
        for path in "DE":
            vector = getattr(official, path)
            vector.copy_(torch.randn_like(vector))  # 'constant' must read the first entry only
            vector[0] = getattr(ours, f"glora_{path}")["default"].X[0]
    return official


def our_layer(peft, linear: nn.Linear):
    from peft.tuners.glora.layer import GloraLinear

    from methods import peft_tuners

    row = {r.name: r for r in peft_tuners.TUNERS}["glora"]
    return GloraLinear(copy.deepcopy(linear), "default", peft.GloraConfig(r=RANK, **row.fixed))


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def formula(i: int, o: int) -> int:
    return 2 * RANK * (i + o) + RANK * (i + 1) + 2


def check_config(report: Report) -> None:
    from methods import peft_tuners

    row = {r.name: r for r in peft_tuners.TUNERS}["glora"]
    ok = (row.fixed == {"config_A_B": "lora", "config_C": "lora", "config_D_E": "constant"}
          and row.hparams["rank"].default == RANK)
    report.add("the glora row is the configuration compared (lora, lora, constant; r = 8)", str(row.fixed), ok)


def check_layers(report: Report, peft, layer_mod) -> None:
    for label, (i, o) in SHAPES.items():
        torch.manual_seed(i + o)
        linear = nn.Linear(i, o)
        with torch.no_grad():
            linear.bias.add_(0.1 * torch.randn_like(linear.bias))
            ours = our_layer(peft, linear)
            x = torch.randn(2, 5, i)
            base = linear(x)
            at_init = max((ours(x) - base).abs().max().item(),
                          (official_from(layer_mod, ours)(x) - base).abs().max().item())
            report.diff(f"layer {label} {i}->{o}, init: ours and official vs backbone", at_init)
            perturb(ours, std=0.1)
            mine, theirs = ours(x), official_from(layer_mod, ours)(x)
            moved = (mine - base).abs().max().item() > 1e-2
            report.diff(f"layer {label} {i}->{o}, perturbed: ours vs official", (mine - theirs).abs().max().item(),
                        moved)


def check_model(report: Report, layer_mod) -> None:
    import methods
    from methods import peft_compat

    vit = demo_vit()
    x = images(4, 32)
    torch.manual_seed(0)
    ours = methods.get("glora").apply(copy.deepcopy(vit), num_classes=10).eval()
    wrapped = [n for n, m in ours.named_modules() if peft_compat.is_tuner_layer(m)]

    def with_head(adapt: bool) -> nn.Module:
        model = copy.deepcopy(vit)
        model.reset_classifier(10)
        model.head.load_state_dict(ours.head.state_dict())
        for path in wrapped if adapt else ():
            parent, child = path.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, official_from(layer_mod, ours.get_submodule(path)))
        return model.eval()

    with torch.no_grad():
        reference = with_head(False)
        logits = ours(x)
        at_init = max((logits - reference(x)).abs().max().item(),
                      (with_head(True)(x) - logits).abs().max().item())
        report.diff(f"demo ViT ({len(wrapped)} qkv), init: logits vs backbone and official", at_init)
        perturb(ours, std=0.1)
        logits = ours(x)
        moved = (logits - reference(x)).abs().max().item() > 1e-2
        report.diff("demo ViT, perturbed: logits ours vs official",
                    (logits - with_head(True)(x)).abs().max().item(), moved)


def check_init(report: Report, peft, layer_mod) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(768, 2304)
    ours = our_layer(peft, linear)
    official = layer_mod.SuperScalableLinear.from_linear(copy.deepcopy(linear), RANK)
    ok, bounds = True, []
    for path, (d, u) in FACTORS.items():
        mine = getattr(ours, f"glora_{path}")["default"]
        theirs_d, theirs_u = getattr(official, d), getattr(official, u)
        ok &= mine.Xd.shape == theirs_d.shape and mine.Xu.shape == theirs_u.shape
        ok &= not mine.Xd.any() and not theirs_d.any()
        fan_out, fan_in = mine.Xu.shape
        kaiming, xavier = 1 / math.sqrt(fan_in), math.sqrt(6 / (fan_in + fan_out))
        ok &= mine.Xu.abs().max().item() <= kaiming and theirs_u.abs().max().item() <= xavier
        bounds.append(f"{path} {kaiming:.3f}/{xavier:.3f}")
    ok &= not ours.glora_D["default"].X.any() and not ours.glora_E["default"].X.any()
    ok &= not official.D.any() and not official.E.any()
    report.add("init (qkv): zero factor and D, E zero in both; other factor within bound peft/official",
               ", ".join(bounds), bool(ok))


def check_counts(report: Report, peft, evolution) -> None:
    if evolution is None:
        report.add("count: official get_param_tensor vs ours", "evolution_utils.py not importable", None)
        return
    searcher = evolution.EvolutionSearcher
    per_layer = {}
    for label, (i, o) in SHAPES.items():
        theirs = sum(searcher.get_param_tensor(None, CONFIG[t], i, o, t) for t in "ABCDE")
        mine = trainable(our_layer(peft, nn.Linear(i, o, device="meta")))
        per_layer[label] = mine
        report.add(f"count {label} {i}->{o}: official = ours = 2r(in+out)+r(in+1)+2", f"{theirs:,} / {mine:,}",
                   theirs == mine == formula(i, o))

    import methods
    from bench.backbones import create_meta

    vit_b = create_meta("vit_base_patch16_224")
    linears = [n for n, m in vit_b.named_modules() if isinstance(m, nn.Linear) and n != "head"]
    this = object.__new__(searcher)  # get_param reads only self.model (and its own get_param_tensor)
    this.model = vit_b
    theirs = searcher.get_param(this, configs=[dict(CONFIG) for _ in linears])
    mine = 12 * sum(per_layer[k] for k in ("qkv", "proj", "fc1", "fc2"))
    report.add(f"count ViT-B/16, every block Linear ({len(linears)}): official get_param = 12 x ours",
               f"{theirs:,} / {mine:,}", theirs == mine)
    ours = methods.count_trainable(methods.get("glora").apply(vit_b, num_classes=100))
    qkv = sum(searcher.get_param_tensor(None, CONFIG[t], 768, 2304, t) for t in "ABCDE")
    report.add("count ViT-B/16, the project's placement (12 qkv): ours = 12 x official qkv",
               f"{ours:,} / {12 * qkv:,}", ours == 12 * qkv)


def check_placement(report: Report, utils) -> None:
    if utils is None:
        report.add("placement: official set_glora vs ours", "utils.py not importable", None)
        return
    import methods

    official = demo_vit()
    official.reset_classifier(10)  # the official scripts call set_glora before; the head is skipped by name
    utils.set_glora(official, RANK)
    adapted = sorted(n for n, m in official.named_modules() if isinstance(m, utils.SuperScalableLinear))
    depth = len(official.blocks)
    every = sorted(f"blocks.{i}.{m}" for i in range(depth) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    ours = methods.get("glora")
    ok = adapted == every and type(official.head) is nn.Linear and ours.targets == ("attn.qkv",) and not ours.outer
    report.add("placement: official every block Linear but the head, ours the fused qkv",
               f"official {len(adapted)} Linears, ours {ours.targets}", ok)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, type=Path, help=f"a checkout of {REPOSITORY}")
    args = parser.parse_args(argv)
    repo = require(args.repo, FILES, REPOSITORY)
    torch.set_num_threads(1)

    from methods import peft_compat

    peft = peft_compat.import_peft("benchmarks/official/glora.py")
    print(f"official code: {REPOSITORY} at {commit_of(repo) or '(commit unknown: not a git checkout)'} ({repo})")
    print(f"ours: methods/peft_tuners.py 'glora' row, peft {peft.__version__}, torch {torch.__version__}; fp32, CPU\n")
    try:
        layer_mod = load_module(repo, "GLoRA/layer.py", "vitslim_glora_layer")
    except LoadError as exc:
        print(f"error: cannot import the official layer: {exc}", file=sys.stderr)
        return 1
    loaded = {}
    for rel, name in (("GLoRA/utils.py", "vitslim_glora_utils"),
                      ("GLoRA/evolution_utils.py", "vitslim_glora_evolution")):
        try:
            loaded[rel] = load_module(repo, rel, name, path=["GLoRA"], absent=["avalanche"])
            if loaded[rel].__absent__:
                print(f"note: {rel} imported with stand-ins for {', '.join(loaded[rel].__absent__)} "
                      "(not installed; used only by code not run here)")
        except LoadError as exc:
            loaded[rel] = None
            print(f"note: {rel} not importable ({exc}): its checks SKIP")

    report = Report()
    check_config(report)
    check_layers(report, peft, layer_mod)
    check_model(report, layer_mod)
    check_init(report, peft, layer_mod)
    check_counts(report, peft, loaded["GLoRA/evolution_utils.py"])
    check_placement(report, loaded["GLoRA/utils.py"])

    print(f"\n| check | max abs difference / measured (tolerance {TOL:g}) | result |\n|---|---|---|")
    for check, measured, result in report.rows:
        print(f"| {check} | {measured} | {result} |")
    bad = [r for r in report.rows if r[2] != "PASS"]
    print(f"\n{'PASS' if not bad else 'FAIL'}: {len(report.rows) - len(bad)} of {len(report.rows)} checks passed")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
