"""Our ``fact_tt`` and ``fact_tk`` (methods/fact.py) against the official FacT code (Jie & Deng, AAAI
2023), read from a checkout of JieShibo/PETL-ViT at run time. Nothing of that code is in this
repository.

    git clone https://github.com/JieShibo/PETL-ViT /tmp/petl_vit
    .venv/bin/python -m benchmarks.official.fact --repo /tmp/petl_vit

Official: ``FacT/fact_tt.py`` and ``FacT/fact_tk.py`` (``set_FacT``, which adds the factors to a timm
ViT and binds ``fact_forward_attn`` / ``fact_forward_mlp`` to its attentions and MLPs), with the
per-task configs ``FacT/configs/tt/*.yaml`` and ``configs/tk/*.yaml``. ``set_FacT`` hard-codes the
width 768 and FacT-TK's 144 columns of ``FacTp`` (12 blocks): the model compared is a ViT of
ViT-B's width and depth (12 blocks of 768, 12 heads, MLP ratio 4) on 32-pixel images (patch 8: 16
patches and the class token), random, with noise on every 1-d tensor. Checked, fp32 on CPU, one
thread, for each method at (rank 4, scale 10) and at our defaults (TT rank 8, TK rank 32; scale 1):

- forward: ours, with every FacT tensor perturbed (noise of std 0.02: increments of order 1 at width 768,
  where float32 rounding stays far below the tolerance), against the same ViT after the official
  ``set_FacT`` holding the same tensors (TT: ``q/k/v_FacTs.weight`` the rows of our qkv core,
  ``proj/fc1/fc2_FacTs.weight`` our cores; TK: ``FacTu``, ``FacTv``, ``FacTc``, ``FacTp``): eval
  logits (the official logits must move away from the backbone's);
- merge: every one of the 48 Linears' increments in the official forward (it adds them in place to
  the Linear's output: captured there, on the inputs the Linear sees in the forward above: 68 token
  vectors, which tell two different matrices apart with probability 1) against the increment of our
  merged weight, W' - W, applied to the same inputs; and our merged model's logits against the
  official ones;
- count: the official trainable count (``total_param`` of the scripts: every tensor whose name has
  ``FacT``) on ViT-B/16 against ours (TT rank 8, TK rank 32);
- settings: the ranks and scales of the 19 official configs of each method against our search space.

Not compared: train mode (the official code draws one dropout mask for each of q, k and v, ours one on
the concatenated q, k, v: a documented deviation) and the initialisation draws (``set_FacT`` draws
other tensors in between, e.g. the default init of ``FacTv`` before zeroing it, so one seed gives
other tensors; tests/test_baselines.py checks our init).

The official files run as they are, given what timm 1.0.31 no longer has or now passes (said in the
output): they read their model from the global ``vit`` (set to the model compared); ``set_FacT``
compares with ``timm.models.layers.mlp.Mlp`` (gone: ``timm.layers.mlp`` is put there while it runs);
``fact_forward_mlp`` calls ``self.drop`` (timm 1.0.31's ``Mlp`` has ``drop1`` and ``drop2``, both p=0
here: ``drop1`` is given as ``drop``); timm's block calls the attention with ``attn_mask=None,
is_causal=False``, which are dropped before the official forward. Both files import ``avalanche``
(stood in when not installed; only their evaluation uses it) and ``FacT/vtab.py``. Exit 0 when every
check ran and passed (logits and increments within 1e-4, counts and settings exact), 1 otherwise, 2
when ``--repo`` is not a checkout of JieShibo/PETL-ViT.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import yaml

from benchmarks.official.common import (Report, check_vit_b_count, compare_eval, images, max_diff, perturb,
                                        randomised_vit, run, search_space, vit_b, with_head_of)
from benchmarks.official.load import LoadError, load_module

REPOSITORY = "JieShibo/PETL-ViT"
FILES = ("FacT/fact_tt.py", "FacT/fact_tk.py", "FacT/vtab.py", "FacT/configs/tt/cifar.yaml",
         "FacT/configs/tk/cifar.yaml")
TOL = 1e-4
# ViT-B's width and depth (set_FacT hard-codes 768 and, for TK, 12 blocks x 12 columns of FacTp)
SHAPE = dict(img_size=32, patch_size=8, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
CASES = {"fact_tt": ({"rank": 4, "scale": 10.0}, {"rank": 8, "scale": 1.0}),
         "fact_tk": ({"rank": 4, "scale": 10.0}, {"rank": 32, "scale": 1.0})}
COUNT_RANKS = {"fact_tt": 8, "fact_tk": 32}
STD = 0.02  # the perturbation of every FacT tensor (increments of order 1 at width 768)
LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@contextlib.contextmanager
def old_timm_mlp_path():
    """``timm.models.layers.mlp`` (timm 0.4's module of ``Mlp``, which ``set_FacT`` reads) while it runs."""
    import timm.layers.mlp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import timm.models.layers as shim
    had = "mlp" in vars(shim)
    held = vars(shim).get("mlp")
    shim.mlp = timm.layers.mlp
    try:
        yield
    finally:
        if had:
            shim.mlp = held
        else:
            del shim.mlp


def without_mask(forward):
    """The official attention forward (``x`` only), called the way timm 1.0.31's block calls it."""
    def call(x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise LoadError("the official FacT attention takes no attention mask")
        return forward(x)
    return call


class Capture(nn.Module):
    """A Linear that keeps its inputs and the tensors it returned: the official forward adds its increment
    to those in place (``qkv += ...``, ``proj += ...``, ``h += ...``)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear, self.seen = linear, []

    def forward(self, x):
        y = self.linear(x)
        self.seen.append((x, y))
        return y

    def increments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, what the official code added to the Linear's outputs), one token per row."""
        x, y = self.seen[-1]
        return x.reshape(-1, x.shape[-1]), (y - self.linear(x)).reshape(-1, y.shape[-1])


class Official:
    """The two official files, loaded, and official models holding our tensors."""

    def __init__(self, repo: Path):
        self.modules = {name: load_module(repo, f"FacT/{name}.py", f"petl_vit_{name}", path=["FacT"],
                                          absent=["avalanche"]) for name in ("fact_tt", "fact_tk")}
        stood = sorted({m for mod in self.modules.values() for m in mod.__absent__})
        print(f"note: FacT/fact_tt.py, fact_tk.py loaded with stand-ins for {', '.join(stood) or '-'} (not installed; "
              "used only by their evaluation)")
        print("note: while set_FacT runs, timm.models.layers.mlp is timm.layers.mlp (gone from timm 1.0.31); each Mlp "
              "gets its drop1 (p=0) as the old drop; timm's attn_mask=None, is_causal=False are dropped before the "
              "official attention forward; the files' global vit is the model compared")

    def set_fact(self, name: str, model: nn.Module, rank: int, scale: float) -> nn.Module:
        module = self.modules[name]
        module.vit = model  # the official functions read the model from the scripts' global ``vit``
        with old_timm_mlp_path():
            module.set_FacT(model, dim=rank, s=scale)
        return model

    def model(self, name: str, base: nn.Module, ours: nn.Module) -> nn.Module:
        """``base`` with ``ours``'s head, through the official ``set_FacT``, holding ``ours``'s FacT tensors;
        the official file's global ``vit`` (which its forwards read) is this model."""
        hp = ours.peft_hparams
        ref = self.set_fact(name, with_head_of(base, ours), hp["rank"], hp["scale"])
        r = hp["rank"]
        with torch.no_grad():
            ref.FacTu.weight.copy_(ours.fact.u)
            ref.FacTv.weight.copy_(ours.fact.v)
            if name == "fact_tk":
                if ref.FacTp.shape != ours.fact.p.shape:
                    raise LoadError(f"FacTp {tuple(ref.FacTp.shape)} vs ours {tuple(ours.fact.p.shape)}")
                ref.FacTc.copy_(ours.fact.c)
                ref.FacTp.copy_(ours.fact.p)
            else:
                for block, mine in zip(ref.blocks, ours.blocks):
                    qkv = mine.attn.qkv.core
                    block.attn.q_FacTs.weight.copy_(qkv[:r])
                    block.attn.k_FacTs.weight.copy_(qkv[r:2 * r])
                    block.attn.v_FacTs.weight.copy_(qkv[2 * r:])
                    block.attn.proj_FacTs.weight.copy_(mine.attn.proj.core)
                    block.mlp.fc1_FacTs.weight.copy_(mine.mlp.fc1.core)
                    block.mlp.fc2_FacTs.weight.copy_(mine.mlp.fc2.core)
        for block in ref.blocks:
            attn, mlp = block.attn, block.mlp
            unused = [attn.q_norm, attn.k_norm, attn.norm, mlp.norm]
            if any(not isinstance(m, nn.Identity) for m in unused) or mlp.drop1.p or mlp.drop2.p \
                    or getattr(attn, "gate", None) is not None:
                raise LoadError("the model has layers the official FacT forwards do not run")
            attn.forward = without_mask(attn.forward)
            mlp.drop = mlp.drop1
        return ref.eval()


def check_forward_and_merge(report: Report, official: Official, base: nn.Module, x: torch.Tensor) -> None:
    import methods

    for name, cases in CASES.items():
        for hp in cases:
            torch.manual_seed(0)
            ours = methods.get(name).apply(base, num_classes=10, **hp)
            perturb(ours, std=STD)
            ours.eval()
            label = f"{name} rank {hp['rank']}, scale {hp['scale']:g}"
            ref = official.model(name, base, ours)
            captures = {}
            for i, block in enumerate(ref.blocks):
                for path in LINEARS:
                    parent, child = path.split(".")
                    holder = getattr(block, parent)
                    captures[i, path] = Capture(getattr(holder, child))
                    setattr(holder, child, captures[i, path])
            theirs = compare_eval(report, label, ours, ref, x, base, TOL)
            with torch.no_grad():
                merged = methods.get(name).merge(ours).eval()
                worst = 0.0
                for (i, path), capture in captures.items():
                    inputs, added = capture.increments()
                    delta = merged.blocks[i].get_submodule(path).weight - base.blocks[i].get_submodule(path).weight
                    worst = max(worst, max_diff(inputs @ delta.t(), added))
                scale = max(c.increments()[1].abs().max().item() for c in captures.values())
                report.diff(f"{label}: official increments of the {len(captures)} Linears vs our merged W' - W on "
                            f"the same inputs (largest increment {scale:.1e})", worst, TOL)
                report.diff(f"{label}: our merged model's logits vs official", max_diff(merged(x), theirs), TOL)


def check_count(report: Report, official: Official) -> None:
    for name, rank in COUNT_RANKS.items():
        check_vit_b_count(report, f"count ViT-B/16, {name} rank {rank}: official total_param = ours",
                          official.set_fact(name, vit_b(), rank, 1.0), "FacT", name, rank=rank)


def check_settings(report: Report, repo: Path) -> None:
    for name, folder in (("fact_tt", "tt"), ("fact_tk", "tk")):
        configs = [yaml.safe_load(p.read_text()) for p in sorted((repo / "FacT/configs" / folder).glob("*.yaml"))]
        ranks = sorted({c["rank"] for c in configs})
        scales = sorted({float(c["scale"]) for c in configs})
        space = {k: sorted(v) for k, v in search_space(name).items()}
        report.add(f"settings: the ranks and scales of the {len(configs)} official {folder} configs = our search "
                   f"space", f"{ranks}, {scales} / {space.get('rank')}, {space.get('scale')}",
                   bool(configs) and ranks == space.get("rank") and scales == space.get("scale"))


def body(repo: Path, report: Report) -> None:
    official = Official(repo)
    base, x = randomised_vit(**SHAPE), images(4, 32)
    check_forward_and_merge(report, official, base, x)
    check_count(report, official)
    check_settings(report, repo)


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, REPOSITORY, FILES, "methods/fact.py (registered 'fact_tt', 'fact_tk')", body, argv,
               old_timm=True)


if __name__ == "__main__":
    sys.exit(main())
