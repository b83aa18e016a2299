"""Hugging Face peft tuners as registered methods: ONE bridge (``PeftTuner``) and ONE table (``TUNERS``).

Each row of ``TUNERS`` is data: the peft type and config class, the hyperparameters (default, range,
searched values), the fixed peft settings, where the defaults and the search space come from, the
block Linears adapted, whether peft can merge it, whether it equals the backbone at init. A new peft
release's tuner becomes a method by raising the pin and adding a row; a peft type that does not
apply to a ViT gets a line in ``REFUSED`` instead, and ``catalog()`` says for every ``peft.PeftType``
which methods use it or why none does (a test fails on a type the two tables do not name).

The bridge works on the timm model itself (no ``PeftModel`` wrapper: ``model.head``,
``reset_classifier`` and ``forward_features`` keep working), through ``methods/peft_compat.py``, the
one module that touches peft (public API wherever it exists; the few internals it needs are listed
there and checked by tests/test_peft_tuners.py):

- apply: the exact module paths of the targets in this backbone (``layout_of(model).paths``, never
  name suffixes that could match other modules) go into the config; peft injects its layers into the
  model in place; the bridge checks that peft wrapped exactly those paths. peft initialises every
  trainable tensor as it always does, from torch's global RNG, so the caller's seed reproduces it;
  the seeds of peft's own generators (VeRA's projections, FourierFT's locations ...; ``seeds``) are
  drawn from torch's RNG too, instead of peft's constants.
- merge: peft's own merge of every tuner layer, each replaced by its base layer: a plain timm model
  with the original state_dict keys.
- weight decay: peft leaves the optimizer to the trainer. Every tuner here keeps the project's rule
  (timm's, ``Method.decays``): tensors stored as matrices are decayed (LoRA factors ...), vectors are
  not (DoRA magnitudes, VeRA lambdas, FourierFT coefficients ...), and vectors that peft stores as
  (n, 1) / (1, n) matrices are not either (``no_decay``: IA3's scales, BEFT's biases, BOFT's output
  scales, RandLoRA's stacked diagonal scalings, AdaLoRA's singular values). Most such vectors are
  multiplicative scales or norms whose decay would pull the layer towards zero output rather than
  towards the pretrained model; this is how our LoRA, adapters and SSF are decayed, so methods differ
  by what they add, not by their optimizer.
- the meta device (``bench methods`` counts every method on a meta backbone): a tuner whose
  initialisation reads weight values without changing any shape (PiSSA's SVD, SHiRA's mask) takes
  its ``meta`` settings there (shapes only; a test checks the meta count equals the real one).

Registered methods, their exact counts on a randomly initialised ViT-B/16 and the arithmetic are in
tests/specs_peft.py and docs/methods.md; the papers are cited by the arXiv / OpenReview ids peft's
own code gives. Placement: timm fuses q, k and v into one ``attn.qkv`` Linear and peft's tuners
adapt whole ``nn.Linear`` modules (``target_modules``; none has a per-row option), so every tuner
here puts one update on q, k and v together. Where the paper's placement is known to differ, the
counts it changes (ours / the paper's placement on ViT-B/16):

- ia3 (T-Few, r-three/t-few ``configs/ia3.json`` at 5edc84b: ``"lora_layers": "k|v|wi_1.*"``):
  12 x (2304 + 3072) = 64,512 / 12 x (768 + 768 + 3072) = 55,296;
- vera (its ViT-B row, 24.6K): 12 x (256 + 2304) = 30,720 / 12 x 2 x (256 + 768) = 24,576;
- fourierft (Chaos96/fourierft ``experiments/ViT/exec.py`` at 1b660d1: ``target_modules=["query",
  "value"]``): 12 x n = 12,000 / 2 x 12 x n = 24,000 at n = 1000 (72,000 at the paper's n = 3000);
- beft (peft's ``BeftModel``: the value projections' biases): 12 x 2304 = 27,648 / 12 x 768 = 9,216.

AdaLoRA trains through the fit's per-step hooks (``Method.begin_fit``, ``extra_loss``, ``after_step``:
its row's ``steps``, ``AdaLoraSteps``): its rank budget is scheduled over the fit's real step count,
peft's ``update_and_allocate`` runs after every optimizer step, and its orthogonality regulariser is
added to the loss (peft adds it only to a transformers output's ``.loss``). AdaMSS, FRoD and the
prompt-learning types are not registered; ``REFUSED`` says why.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from . import peft_compat
from ._checks import check_choice, check_float, check_int
from .base import Method, register
from .errors import Unsupported
from .families import BLOCK_LINEARS, FC2, NORM1, NORM2, QKV, Layout, layout_of
from .peft_compat import (  # noqa: F401  (the names other modules import from here)
    ADAPTER,
    PEFT_REQUIREMENT,
    PEFT_SERIES,
    PeftUnavailable,
    import_peft,
    is_tuner_layer,
)


def seed_from_torch() -> int:
    """A seed for one of peft's own ``torch.Generator``s (VeRA's shared projections, FourierFT's
    frequency locations ...), drawn from torch's global RNG: the caller's seed decides it."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


class Targets(dict):
    """Block-relative name (``attn.qkv``) -> the exact module paths of that module in every block;
    modules outside the blocks (the final norm ...) under their own path."""

    @property
    def all(self) -> list[str]:
        return [p for paths in self.values() for p in paths]


# -- the table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hp:
    """One hyperparameter of a tuner.

    kind: "int" (an integer >= lo), "float" (a finite number >= lo, > lo when ``lo_open``, <= hi,
    < hi when ``hi_open``), "choice" (one of ``choices``) or "factor" (-1 or an integer >= 1).
    width: an integer at most the backbone's narrowest block width (``Method.width_bounded``).
    space: the values the search suggests (categorical); () when not searched.
    peft: the peft config field it sets ("" = the same name; None = read by ``build`` only).
    """

    default: Any
    help: str
    kind: str = "int"
    lo: float = 1
    lo_open: bool = False
    hi: float = math.inf
    hi_open: bool = False
    width: bool = False
    choices: tuple = ()
    space: tuple = ()
    peft: str | None = ""


@dataclass(frozen=True)
class Tuner:
    """One peft tuner as a method (a row of ``TUNERS``).

    name: the method's registry name. peft_type: its ``peft.PeftType`` member. config: peft's config
    class. paper: the paper in one line (authors, name, venue or arXiv id, year; the ids peft's own
    code cites). what: the method in one line (formula, init). source: where the defaults and the search
    space come from. hparams: ours, in search order. fixed: further peft config fields we fix.
    derived: hyperparameters the search derives from the others (alpha = 2 rank), by name.
    build: peft config fields that depend on the backbone (block sizes that must divide its widths).
    seeds: peft config fields seeding peft's own generators, drawn from torch's RNG after the head.
    targets: block-relative module names adapted (``methods.families``); outer: ``Layout`` fields of
    modules outside the blocks adapted too ("final_norm", "extra_norms"). mergeable: peft merges it.
    identity: the adapted model equals the backbone at init. decays: any trainable tensor besides the
    head is decayed. no_decay: regex of trainable tensors that are vectors stored as matrices (not
    decayed). meta: config attributes set on the meta device (shapes only). fits: further bounds
    that depend on the backbone (``check_fits``). trains_backbone: regex of the backbone tensors it
    trains (a trained copy of them: LN tuning), for the conformance kit (``bench.testing``). note:
    where it deviates from peft's defaults or the paper, in a sentence (``Method.deviations``). steps:
    a class whose per-step hooks the method takes (``AdaLoraSteps``), for tuners trained by more than
    a loss and an optimizer step.
    """

    name: str
    peft_type: str
    config: str
    paper: str
    what: str
    source: str
    hparams: dict[str, Hp] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, Callable[[dict], Any]] = field(default_factory=dict)
    build: Callable[[dict, nn.Module, Targets], dict] | None = None
    seeds: tuple[str, ...] = ()
    targets: tuple[str, ...] = (QKV,)
    outer: tuple[str, ...] = ()
    mergeable: bool = True
    identity: bool = True
    decays: bool = True
    no_decay: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    fits: Callable[[str, dict, Layout], None] | None = None
    trains_backbone: str = ""
    note: str = ""
    steps: type | None = None  # a mixin with the per-step hooks its training needs (``Method.begin_fit`` ...)


def _rank(default: int, space: tuple = (), help: str = "") -> Hp:
    return Hp(default, help or "rank r (integer >= 1, at most the width)", width=True, space=space, peft="r")


def _alpha(default: float, help: str = "the update is scaled by alpha / r (number > 0)", space: tuple = (),
           peft: str = "alpha") -> Hp:
    return Hp(default, help, kind="float", lo=0, lo_open=True, space=space, peft=peft)


def _exact(paths: list[str]) -> str:
    """A regex that peft full-matches against module paths: exactly ``paths``."""
    return "|".join(re.escape(p) for p in paths)


def _gcd(value: int, sizes) -> int:
    """The largest divisor of ``value`` that divides every one of ``sizes`` (``value`` when it does)."""
    return math.gcd(value, *sizes)


def _in_out(model: nn.Module, targets: Targets) -> list[int]:
    return [n for p in targets.all for m in [model.get_submodule(p)] for n in (m.in_features, m.out_features)]


def _vera_fits(name: str, hp: dict, layout: Layout) -> None:
    # the shared projections A (r x width) and B (3 width x r) grow with r. The paper keeps r = 256
    # whatever the width (its ViT-B rows; the demo's 96-wide and tiny_vit's 48-wide layers too), so
    # the bound is generous: 16 x the widest layer (12,288 on ViT-B: projections of 150 MB in fp32)
    widest = max(layout.widths)
    check_int(name, hp, "rank", 1, 16 * widest, why=f"at most 16 x the backbone's width {widest}")


def _entries_fit(key: str) -> Callable[[str, dict, Layout], None]:
    def fits(name: str, hp: dict, layout: Layout) -> None:
        smallest = min(3 * w * w for w in layout.widths)  # the fused qkv is (3 width) x width
        check_int(name, hp, key, 1, smallest, why="at most the entries of the smallest fused qkv")
    return fits


def _shira_fits(name: str, hp: dict, layout: Layout) -> None:
    # r (in + out) entries of an in x out weight: on a fused qkv (width -> 3 width), r <= 3 width / 4
    bound = min(3 * w // 4 for w in layout.widths)
    check_int(name, hp, "rank", 1, bound, why="r (in + out) entries must fit in the smallest fused qkv: at most 3/4 of its width")


def _even_rank(name: str, hp: dict, layout: Layout) -> None:
    if hp["rank"] % 2:
        raise ValueError(f"{name}: rank must be even (its initialisation pairs the reflections), got {hp['rank']}")


def _adalora_fits(name: str, hp: dict, layout: Layout) -> None:
    check_int(name, hp, "target_r", 1, hp["init_r"], why="the budget shrinks from init_r")
    if hp["tinit_frac"] + hp["tfinal_frac"] >= 1:
        raise ValueError(f"{name}: tinit_frac + tfinal_frac must be below 1 (the budget shrinks in between), "
                         f"got {hp['tinit_frac']} + {hp['tfinal_frac']}")


class AdaLoraSteps:
    """AdaLoRA's training through the fit's per-step hooks (``Method.begin_fit`` ...): peft's rank
    allocator (kept with its ``AdaLoraModel``, ``peft_compat``) scheduled over the fit's real number of
    steps, peft's ``update_and_allocate`` after every optimizer step, and the orthogonality
    regulariser in the loss (peft adds it only to a transformers output's ``.loss``)."""

    keep_tuner = True

    def _adapt(self, model: nn.Module, **hp: Any) -> None:
        super()._adapt(model, **hp)
        peft_compat.adalora_frozen_ranknum(model)
        peft_compat.adalora_config(model).total_step = None  # no schedule before begin_fit (after_step refuses)

    def begin_fit(self, model: nn.Module, total_steps: int) -> None:
        """The budget: ``init_r`` per matrix for the first ``tinit_frac`` of the steps, shrinking
        cubically to ``target_r`` on average until the last ``tfinal_frac`` (floors of the fractions)."""
        hp = model.peft_hparams
        peft_compat.adalora_schedule(model, total_steps, int(hp["tinit_frac"] * total_steps),
                                     int(hp["tfinal_frac"] * total_steps))

    def extra_loss(self, model: nn.Module):
        return peft_compat.adalora_orth_reg(model) if model.peft_hparams["orth_reg_weight"] else None

    def after_step(self, model: nn.Module, step: int) -> None:
        if peft_compat.adalora_config(model).total_step is None:
            raise RuntimeError(f"{self.name}: begin_fit(model, total_steps) must come before after_step: the rank "
                               f"budget is scheduled over the fit's steps")
        # the official trainers pass their global_step before its increment: the steps before this one
        peft_compat.adalora_update(model, step - 1)

    def fit_state(self, model: nn.Module) -> dict:
        return peft_compat.adalora_state(model)

    def load_fit_state(self, model: nn.Module, state: dict) -> None:
        peft_compat.load_adalora_state(model, state)


_PEFT_DEFAULTS = "peft 0.21's {} defaults and docstring"

TUNERS: list[Tuner] = [
    # -- the six of issue 13 (their behaviour and counts unchanged) ----------------------------
    Tuner(
        "dora", "LORA", "LoraConfig",
        'Liu et al., DoRA, ICML 2024',
        "DoRA (Liu et al., ICML 2024): W' = m (W + (alpha/r) B A) / ||W + (alpha/r) B A|| per output row; "
        "A kaiming-uniform, B zero, m the row norms of W",
        "alpha = 2 r as in the DoRA paper's commonsense-reasoning configurations (r 32 / alpha 64, r 16 / alpha 32); "
        "ranks 4 ... 64 from its rank-robustness figure; peft's own default alpha is 8",
        {"rank": _rank(8, (4, 8, 16, 32, 64), "rank r of the direction update B A on the fused qkv (integer >= 1, at most the width)"),
         "alpha": _alpha(16, "the update is scaled by alpha / r (number > 0; the search sets alpha = 2 r)", peft="lora_alpha")},
        fixed={"use_dora": True}, derived={"alpha": lambda hp: 2 * hp["rank"]},
        note="alpha 16 (= 2 r, the paper's ratio) where peft's default is 8; one update on the fused qkv (q, k and v)",
    ),
    Tuner(
        "vera", "VERA", "VeraConfig",
        'Kopiczko et al., VeRA, ICLR 2024',
        "VeRA (Kopiczko et al., ICLR 2024): W' = W + diag(b) B diag(d) A, A and B frozen random projections "
        "shared by every layer (built at the largest shape and sliced), d = d_initial and b = 0 trained",
        "the paper's image-classification rows use r = 256 (not searched); its initialisation ablation (Table 6c: "
        "d_init 1.0, 1e-1, 1e-7) finds small values best, and peft recommends <= 0.1",
        {"rank": Hp(256, "rank r of the shared random projections (integer >= 1; may exceed the width)", peft="r"),
         "d_initial": Hp(0.1, "initial value of the scaling vector d (number > 0)", kind="float", lo=0, lo_open=True,
                         space=(1e-7, 0.1))},
        fixed={"save_projection": True}, seeds=("projection_prng_key",), decays=False, fits=_vera_fits,
        note="one d and one b over the fused qkv (the paper: q and v, each its own)",
    ),
    Tuner(
        "ia3", "IA3", "IA3Config",
        'Liu et al., (IA)^3 (T-Few), NeurIPS 2022',
        "(IA)^3 (Liu et al., NeurIPS 2022): learned vectors rescale the fused qkv's outputs and fc2's inputs "
        "(fc2 as peft's feed-forward module: the paper rescales the MLP's inner activations), ones at init",
        "the paper tunes no hyperparameter besides the optimizer's",
        targets=(QKV, FC2), build=lambda hp, model, targets: {"feedforward_modules": _exact(targets[FC2])},
        decays=False, no_decay=r"\.ia3_l\.",
        note="rescales q too (the paper: k and v)",
    ),
    Tuner(
        "loha", "LOHA", "LoHaConfig",
        'Hyeon-Woo et al., FedPara (LoHa), ICLR 2022',
        "LoHa (Hyeon-Woo et al., FedPara, ICLR 2022; as in LyCORIS): W' = W + (alpha/r) (B1 A1) * (B2 A2), three "
        "factors kaiming-uniform, one zero",
        "LyCORIS (Yeh et al., ICLR 2024; docs/Guidelines.md) trains LoHa at dims 4, 16 and 32, with alpha 1 or "
        "dim / 2; 8 / 8 is peft's default",
        {"rank": _rank(8, (4, 8, 16, 32), "rank r of each of the two factor products (integer >= 1, at most the width)"),
         "alpha": _alpha(8, space=(1, 2, 4, 8, 16, 32))},
        note='one update on the fused qkv (q, k and v)',
    ),
    Tuner(
        "lokr", "LOKR", "LoKrConfig",
        'Yeh et al., LyCORIS (LoKr), ICLR 2024',
        "LoKr (LyCORIS, Yeh et al., ICLR 2024): W' = W + (alpha/r) W1 kron (B2 A2), the factors' shapes from "
        "factor (-1: as square as the dimensions allow); W1 zero, A2 and B2 kaiming-uniform",
        "LyCORIS docs/Guidelines.md: LoKr at dims 1 and 8 with factors -1, 4 and 8 (its \"full\" dims left out: "
        "they make the second factor dense); alpha = r, peft's default ratio",
        {"rank": _rank(8, (1, 8), "rank r of the second Kronecker factor (integer >= 1, at most the width)"),
         "alpha": _alpha(8, "the update is scaled by alpha / r (number > 0; the search sets alpha = r)"),
         "factor": Hp(-1, "size of the first Kronecker factor's dimensions (-1: balanced, else an integer >= 1)",
                      kind="factor", space=(-1, 4, 8), peft="decompose_factor")},
        derived={"alpha": lambda hp: hp["rank"]},
        note='one update on the fused qkv (q, k and v)',
    ),
    Tuner(
        "fourierft", "FOURIERFT", "FourierFTConfig",
        'Gao et al., FourierFT, ICML 2024',
        "FourierFT (Gao et al., ICML 2024): W' = W + scaling Re(IDFT2(S)), S zero but n trainable coefficients "
        "(standard normal, so the model changes at init) at random locations shared by the layers of one shape",
        "the paper's ViT rows: n = 3000 and 10000 with scaling 300 (100 / 150 are its GLUE values, peft's docs give "
        "the same guidance); 1000 is peft's default n",
        {"n_frequency": Hp(1000, "number of trainable spectral coefficients per layer (integer >= 1, at most in x out)",
                           space=(1000, 3000, 10000)),
         "scaling": Hp(300.0, "the update is scaled by this (number > 0)", kind="float", lo=0, lo_open=True,
                       space=(100.0, 150.0, 300.0))},
        seeds=("random_loc_seed",), identity=False, decays=False, fits=_entries_fit("n_frequency"),
        note="scaling 300 (the paper's ViT value) where peft's default is 150; one spectrum over the fused qkv (the official code: one on q, one on v)",
    ),
    # -- LoRA's variants in LoraConfig ----------------------------------------------------------
    Tuner(
        "pissa", "LORA", "LoraConfig",
        'PiSSA, arXiv:2404.02948 (2024)',
        "PiSSA (arXiv:2404.02948): LoRA whose A and B start as the principal singular triplets of W "
        "(scaled), W keeping the residual, so the model is unchanged at init; peft init_lora_weights='pissa' "
        "(a full SVD of each adapted weight)",
        "rank as our lora's; alpha = r (peft's default ratio: PiSSA's factors carry the singular values themselves)",
        {"rank": _rank(8, (4, 8, 16, 32, 64), "rank r of the principal part trained (integer >= 1, at most the width)"),
         "alpha": _alpha(8, "the update is scaled by alpha / r (number > 0; the search sets alpha = r)", peft="lora_alpha")},
        fixed={"init_lora_weights": "pissa"}, derived={"alpha": lambda hp: hp["rank"]},
        meta={"init_lora_weights": True},
        note='one update on the fused qkv (q, k and v)',
    ),
    Tuner(
        "olora", "LORA", "LoraConfig",
        'OLoRA (orthonormal low-rank adaptation), 2024',
        "OLoRA: LoRA whose A and B start from the QR decomposition of W (orthonormal B), W keeping "
        "the residual, so the model is unchanged at init; peft init_lora_weights='olora'",
        "rank as our lora's; alpha = r, peft's default ratio",
        {"rank": _rank(8, (4, 8, 16, 32, 64), "rank r (integer >= 1, at most the width)"),
         "alpha": _alpha(8, "the update is scaled by alpha / r (number > 0; the search sets alpha = r)", peft="lora_alpha")},
        fixed={"init_lora_weights": "olora"}, derived={"alpha": lambda hp: hp["rank"]},
        meta={"init_lora_weights": True},
        note='one update on the fused qkv (q, k and v)',
    ),
    Tuner(
        "rslora", "LORA", "LoraConfig",
        'Kalajdzievski, rsLoRA, arXiv:2312.03732 (2023)',
        "rsLoRA (arXiv:2312.03732): LoRA scaled by alpha / sqrt(r) instead of alpha / r, so that larger ranks "
        "keep learning; A kaiming-uniform, B zero; peft use_rslora=True",
        "alpha 8 (peft's default) kept fixed while the rank is searched: the paper's point is that alpha / sqrt(r) "
        "needs no retuning of alpha across ranks",
        {"rank": _rank(8, (4, 8, 16, 32, 64), "rank r (integer >= 1, at most the width)"),
         "alpha": _alpha(8, "the update is scaled by alpha / sqrt(r) (number > 0)", peft="lora_alpha")},
        fixed={"use_rslora": True},
        note='one update on the fused qkv (q, k and v)',
    ),
    # -- orthogonal and rotation tuners --------------------------------------------------------
    Tuner(
        "oft", "OFT", "OFTConfig",
        'Qiu et al., OFT, NeurIPS 2023',
        "OFT (Qiu et al., NeurIPS 2023, arXiv:2306.07280): W' = W R with R block-diagonal orthogonal (the Cayley transform of "
        "skew-symmetric blocks, peft's Cayley-Neumann series), R = I at init",
        _PEFT_DEFAULTS.format("OFTConfig") + " (block size 32; sizes that divide the input, e.g. 4, 8, 16; "
        "use_cayley_neumann=True as peft recommends); peft adjusts a block size that does not divide a layer's "
        "input to the nearest one that does",
        {"block_size": Hp(32, "size b of the orthogonal blocks (integer >= 1); b (b - 1) / 2 trained per block",
                          space=(8, 16, 32, 64), peft="oft_block_size")},
        fixed={"r": 0, "use_cayley_neumann": True},
    ),
    Tuner(
        "boft", "BOFT", "BOFTConfig",
        'Liu et al., BOFT, ICLR 2024',
        "BOFT (Liu et al., ICLR 2024, arXiv:2311.06243) with butterfly factor 1: W' = diag(s) (W R), R block-diagonal orthogonal "
        "(exact Cayley transform of b x b blocks), s an output scale; R = I, s = 1 at init",
        _PEFT_DEFAULTS.format("BOFTConfig") + " (block size 4, butterfly factor 1; block sizes e.g. 4, 8, 16). "
        "Butterfly factors > 1 are not offered: peft applies them only through a CUDA kernel it JIT-compiles, "
        "and without it silently falls back to 1, so the method would depend on the machine",
        {"block_size": Hp(4, "size b of the orthogonal blocks (integer >= 1, dividing the width)",
                          space=(2, 4, 8, 16), peft="boft_block_size")},
        fixed={"boft_n_butterfly_factor": 1, "boft_block_num": 0}, no_decay=r"\.boft_s\.",
        note="butterfly factor 1 only: without butterfly factors BOFT is block-diagonal OFT with an output scale",
    ),
    Tuner(
        "hra", "HRA", "HRAConfig",
        'HRA, arXiv:2405.17484 (2024)',
        "HRA (arXiv:2405.17484): W' = W H_1 ... H_r, H_i Householder reflections I - 2 u_i u_i^T / |u_i|^2 "
        "whose u come in equal pairs at init (so the product is I)",
        _PEFT_DEFAULTS.format("HRAConfig") + " (r = 8, even; no Gram-Schmidt); ranks around it",
        {"rank": _rank(8, (4, 8, 16, 32), "number r of reflections (even integer >= 2, at most the width)")},
        fixed={"apply_GS": False}, fits=_even_rank,
    ),
    Tuner(
        "road", "ROAD", "RoadConfig",
        'RoAd, arXiv:2409.00119 (2024)',
        "RoAd (arXiv:2409.00119): rotates pairs of output features by trained 2D rotations and scales "
        "(angle 0, scale 1 at init); road_1 shares one angle and scale per pair, road_2 one per element, road_4 two",
        _PEFT_DEFAULTS.format("RoadConfig") + " (variant road_1; the variants from the paper as peft's docstring "
        "lists them). The group size (which elements are paired; no effect on the result, per peft's docstring) "
        "is peft's 64 where it divides the qkv's output, else the largest divisor of it that does",
        {"variant": Hp("road_1", "road_1, road_2 or road_4 (out, 2 out or 4 out trained per layer)", kind="choice",
                       choices=("road_1", "road_2", "road_4"), space=("road_1", "road_2", "road_4"))},
        build=lambda hp, model, targets: {"group_size": _gcd(64, [model.get_submodule(p).out_features
                                                                  for p in targets.all])},
        decays=False,
        note="group size divided down where peft's 64 does not divide the qkv's outputs (no effect on the result)",
    ),
    Tuner(
        "psoft", "PSOFT", "PsoftConfig",
        'PSOFT, OpenReview FSHrinMArK',
        "PSOFT (orthogonal fine-tuning in a principal subspace, OpenReview FSHrinMArK): dW = B (R - I) A with A, B "
        "frozen from W's SVD and R an r x r orthogonal (Cayley) transform, plus trained scaling vectors on its two "
        "sides; R = I at init",
        _PEFT_DEFAULTS.format("PsoftConfig") + " (r = 32, alpha = r); searched: its docstring's 32-128 for simple "
        "tasks up to 64, the ranks every backbone here holds (the demo's width is 96)",
        {"rank": _rank(32, (32, 64), "rank r of the principal subspace rotated (integer >= 1, at most the width)"),
         "alpha": _alpha(32, "the update is scaled by alpha / r (number > 0; the search sets alpha = r)", peft="psoft_alpha")},
        derived={"alpha": lambda hp: hp["rank"]}, decays=False,
        note="its packed rotation is stored as a vector, so timm's rule does not decay it",
    ),
    # -- low-rank relatives --------------------------------------------------------------------
    Tuner(
        "glora", "GLORA", "GloraConfig",
        'Chavan et al., GLoRA, 2023',
        "GLoRA (Chavan et al., 2023): W' = W + W * A + B, b' = b + b * D + E + W C, A, B and C rank-r products "
        "(one factor kaiming-uniform, the other zero), D and E scalars (zero): the update is zero at init",
        _PEFT_DEFAULTS.format("GloraConfig") + " (r = 8; A, B and C low-rank, D and E constants); the paper's "
        "evolutionary search over per-layer parameterisations is not done (peft fixes one). Checked against the "
        "official code, Arnav0400/ViT-Slim@0fed674 GLoRA/layer.py (SuperScalableLinear with A, B, C 'LoRA_r' and "
        "D, E 'constant'), by benchmarks/official/glora.py on a checkout of it (docs/measurements.md); "
        "tests/test_glora.py checks the paper's equations",
        {"rank": _rank(8, (4, 8, 16, 32))},
        fixed={"config_A_B": "lora", "config_C": "lora", "config_D_E": "constant"},
        note="official code Arnav0400/ViT-Slim@0fed674 GLoRA/layer.py (benchmarks/official/glora.py --repo on a "
             "checkout: same outputs for the same tensors, 6.0e-7 max on fp32 logits, and the same count per layer "
             "under peft's one configuration; docs/measurements.md); no per-layer search of the parameterisation "
             "(the official supernet samples one of 432 per forward, then an evolutionary search fixes one per layer "
             "under a parameter budget); only the fused "
             "qkv adapted (the official code adapts every block Linear, qkv, proj, fc1 and fc2: 2,875,872 parameters "
             "on ViT-B/16 at r = 8 in this configuration, against 663,672); the non-zero factor of each product "
             "kaiming-uniform (peft) where the official code draws it xavier-uniform",
    ),
    Tuner(
        "delora", "DELORA", "DeloraConfig",
        'DeLoRA, arXiv:2503.18225 (2025)',
        "DeLoRA (arXiv:2503.18225): dW = (lambda / r) B diag(1 / |b_i| |a_i|) A |W|, a low-rank update with "
        "normalised rank-one parts whose strength lambda is trained; B zero at init",
        _PEFT_DEFAULTS.format("DeloraConfig") + " (r = 8, lambda = 15); ranks around it",
        {"rank": _rank(8, (4, 8, 16, 32)),
         "delora_lambda": Hp(15.0, "initial bound lambda of the update's norm (number > 0)", kind="float", lo=0,
                             lo_open=True)},
    ),
    Tuner(
        "randlora", "RANDLORA", "RandLoraConfig",
        'RandLoRA, arXiv:2502.00987 (2025)',
        "RandLoRA (arXiv:2502.00987): dW = sum over min(in, out) / r frozen random rank-r bases B_i A_i "
        "(shared by the layers), each scaled by trained diagonals Lambda_i (zero at init) and Gamma_i",
        _PEFT_DEFAULTS.format("RandLoraConfig") + " (r = 32; smaller r trains more parameters) with alpha = 2 r, "
        "not its docstring's typical 20 r: the docstring warns that so large an alpha can make training unstable, "
        "and at 20 r a N(0, 0.1) change of every trained tensor (the registry tests' merge check) makes the update "
        "about 100 x the qkv weight, where float32 noise in the logits reached 6e-1 on the test Swin (2e-5 at 2 r)",
        {"rank": _rank(32, (16, 32, 64), "rank r of each random basis (integer >= 1, at most the width; smaller r "
                                       "means more bases and more parameters)"),
         "alpha": _alpha(64, "the update is scaled by alpha / r (number > 0; the search sets alpha = 2 r)",
                         peft="randlora_alpha")},
        fixed={"save_projection": True}, derived={"alpha": lambda hp: 2 * hp["rank"]},
        seeds=("projection_prng_key",), decays=False, no_decay=r"\.randlora_(lambda|gamma)\.",
        note="alpha 2 r, not the docstring's typical 20 r (float32 stability, docs/methods.md)",
    ),
    Tuner(
        "vblora", "VBLORA", "VBLoRAConfig",
        'VB-LoRA, arXiv:2405.15179 (2024)',
        "VB-LoRA (arXiv:2405.15179): the sub-vectors of every layer's rank-r factors are top-k mixtures of "
        "one vector bank shared by all layers (the bank and the mixing logits are trained)",
        _PEFT_DEFAULTS.format("VBLoRAConfig") + " (r = 4, 256 vectors, top-2 as its docstring recommends); vector "
        "length peft's 256 where it divides the layers' sizes, else the largest divisor of them that does",
        {"rank": _rank(4, (4, 8)),
         "num_vectors": Hp(256, "number of vectors in the shared bank (integer >= 1)", space=(128, 256, 512))},
        fixed={"topk": 2}, identity=False,
        build=lambda hp, model, targets: {"vector_length": _gcd(256, _in_out(model, targets))},
        note="vector length divided down where peft's 256 does not divide the layers' sizes",
    ),
    Tuner(
        "hira", "HIRA", "HiraConfig",
        'HiRA, OpenReview TwJrTz9cRS',
        "HiRA (OpenReview TwJrTz9cRS): W' = W + W * (B A), a Hadamard product with W that makes the update high "
        "rank; B zero at init",
        _PEFT_DEFAULTS.format("HiraConfig") + " (r = 32); ranks around it",
        {"rank": _rank(32, (8, 16, 32, 64))},
    ),
    Tuner(
        "gralora", "GRALORA", "GraloraConfig",
        'GraLoRA (granular low-rank adaptation)',
        "GraLoRA (granular LoRA): the weight split into k x k blocks, each with its own rank-r/k LoRA (as many "
        "parameters as LoRA of rank r, k times its rank); B zero at init",
        _PEFT_DEFAULTS.format("GraloraConfig") + " (r = 32, alpha = 64, k = 2; its docstring: k = 2 for ranks up to "
        "32, k = 4 from 64)",
        {"rank": _rank(32, (16, 32, 64)),
         "alpha": _alpha(64, "the update is scaled by alpha / r (number > 0; the search sets alpha = 2 r)"),
         "gralora_k": Hp(2, "number k of blocks along each dimension (integer >= 1 dividing r and the layer sizes)")},
        derived={"alpha": lambda hp: 2 * hp["rank"], "gralora_k": lambda hp: 2 if hp["rank"] <= 32 else 4},
    ),
    Tuner(
        "deft", "DEFT", "DeftConfig",
        'DEFT (decompositional efficient fine-tuning)',
        "DEFT (decompositional efficient fine-tuning): W' = (I - P_proj) W + Q_P R, a rank-r subspace of W removed "
        "and an injection R trained; R set so W' = W at init",
        _PEFT_DEFAULTS.format("DeftConfig") + " (r = 8, relu projector; its two projectors searched)",
        {"rank": _rank(8, (4, 8, 16, 32)),
         "decomposition_method": Hp("relu", "relu (P relu(P)^T) or qr (orthogonal) projector", kind="choice",
                                    choices=("relu", "qr"), space=("relu", "qr"))},
    ),
    Tuner(
        "peanut", "PEANUT", "PeanutConfig",
        'PEANuT, arXiv:2410.01870 (2024)',
        "PEANuT (arXiv:2410.01870): a weight-aware update dW = scaling f(W) computed by a small network (A over W's output dimension, "
        "B back; depth hidden layers); B zero at init",
        _PEFT_DEFAULTS.format("PeanutConfig") + " (r = 32, depth 0, relu, scaling 1); ranks around it",
        {"rank": _rank(32, (8, 16, 32)),
         "depth": Hp(0, "hidden adapter layers per side (integer >= 0)", lo=0, space=(0, 1))},
        fixed={"act_fn": "relu", "scaling": 1.0},
    ),
    Tuner(
        "lily", "LILY", "LilyConfig",
        'Lily, arXiv:2407.09946 (2024)',
        "Lily (arXiv:2407.09946): each layer projects to rank r with its A (shared "
        "by stride_A consecutive layers) and back through a router-weighted mixture of num_B B's shared by all "
        "layers; B zero at init. The router is input-dependent, so it is not mergeable",
        _PEFT_DEFAULTS.format("LilyConfig") + " (r = 32, stride_A = 1, num_B = 2, scaling 1); searched: its "
        "docstring's suggestions (stride_A 2-4 with a larger r, scaling on a log scale 0.01 ... 10)",
        {"rank": _rank(32, (16, 32, 64)),
         "stride_A": Hp(1, "consecutive layers sharing one A (integer >= 1)", space=(1, 2, 3, 4)),
         "num_B": Hp(2, "B's shared by all layers, mixed by each layer's router (integer >= 2)", lo=2, space=(2, 3, 4)),
         "scaling": Hp(1.0, "multiplier of the update (number > 0)", kind="float", lo=0, lo_open=True,
                       space=(0.01, 0.1, 1.0, 10.0))},
        mergeable=False,
    ),
    # -- sparse and spectral tuners ------------------------------------------------------------
    Tuner(
        "shira", "SHIRA", "ShiraConfig",
        'SHiRA (sparse high rank adapters)',
        "SHiRA (sparse high rank adapters): trains r (in + out) entries of W at random locations (zero update "
        "at init; the locations from peft's generator, the same in every layer of one shape)",
        _PEFT_DEFAULTS.format("ShiraConfig") + " with r = 16, half its default 32, so that r (in + out) entries fit "
        "in every backbone family's narrowest fused qkv (r <= 3/4 of its width: 24 on a 32-wide Swin stage); "
        "ranks around it",
        {"rank": Hp(16, "entries trained per layer: r (in + out), as many as LoRA of rank r (integer >= 1)",
                    space=(8, 16, 32), peft="r")},
        fixed={"mask_type": "random"}, seeds=("random_seed",), decays=False, fits=_shira_fits,
        meta={"mask_fn": lambda base_layer, r, **kwargs: None},  # the locations need real tensors (nonzero)
        note="r 16, half peft's default, so that it fits 32-wide layers",
    ),
    Tuner(
        "waveft", "WAVEFT", "WaveFTConfig",
        'WaveFT (wavelet fine-tuning)',
        "WaveFT (wavelet fine-tuning): dW = scaling IDWT(S), S zero but n trainable wavelet coefficients (Haar) at "
        "random locations; zero update at init",
        _PEFT_DEFAULTS.format("WaveFTConfig") + " (n = 2592) with scaling 5, not its 25: 25 is peft's value for "
        "SDXL personalization and no ViT setting is published; at 25 a N(0, 0.1) change of every coefficient (the "
        "registry tests' merge check) makes the update about 40 x the qkv weight (norm 125 against 3.3 on the demo "
        "ViT), where float32 noise in the logits reached 1e-2 (2e-6 at 5); 25 stays in the search, n and scaling "
        "searched around peft's values, not from the paper",
        {"n_frequency": Hp(2592, "number of trainable wavelet coefficients per layer (integer >= 1, at most in x out)",
                           space=(1296, 2592, 5184)),
         "scaling": Hp(5.0, "the update is scaled by this (number > 0)", kind="float", lo=0, lo_open=True,
                       space=(1.0, 5.0, 25.0))},
        fixed={"wavelet_family": "db1", "use_idwt": True}, seeds=("random_loc_seed",), decays=False,
        fits=_entries_fit("n_frequency"),
        note="scaling 5, not peft's 25 (its SDXL value; float32 stability, docs/methods.md)",
    ),
    Tuner(
        "c3a", "C3A", "C3AConfig",
        'C3A, arXiv:2407.19342 (2024)',
        "C3A (arXiv:2407.19342): dW made of (in / b) x (out / b) circulant b x b blocks, i.e. a block circular "
        "convolution, b trained numbers per block; peft's default init (xavier-uniform, not zero)",
        _PEFT_DEFAULTS.format("C3AConfig") + " (b = 256, xavier-uniform init); the block size of a backbone is the "
        "largest divisor of b that divides every adapted layer's input and output, as its docstring advises",
        {"block_size": Hp(256, "block size b (integer >= 1; larger b trains fewer parameters)", space=(64, 128, 256),
                          peft=None)},
        identity=False,
        build=lambda hp, model, targets: {"block_size": _gcd(hp["block_size"], _in_out(model, targets))},
        note="block size divided down where it does not divide the layers' sizes; changes the model at init (peft's xavier-uniform default)",
    ),
    Tuner(
        "supertuning", "SUPERTUNING", "SupertuningConfig",
        'Super-Tuning, arXiv:2607.09287',
        "Super-Tuning (arXiv:2607.09287): trains the largest-magnitude (or smallest) 1 - sparsity of W's entries in place; zero update "
        "at init",
        _PEFT_DEFAULTS.format("SupertuningConfig") + " (sparsity 0.99: 1% trained; largest magnitudes; its docstring: "
        "the best direction is model- and task-dependent, so both are searched)",
        {"sparsity": Hp(0.99, "fraction of each weight's entries left frozen (number in (0, 1))", kind="float", lo=0,
                        lo_open=True, hi=1, hi_open=True, space=(0.99, 0.995, 0.999)),
         "select_top": Hp(True, "train the largest-magnitude entries (True) or the smallest (False)", kind="choice",
                          choices=(True, False), space=(True, False))},
        decays=False,
    ),
    # -- vectors ---------------------------------------------------------------------------------
    Tuner(
        "beft", "BEFT", "BeftConfig",
        'BEFT, arXiv:2509.15974 (2025)',
        "BEFT (arXiv:2509.15974): a trained bias added to the fused qkv's output, zero at init",
        "nothing to choose besides the optimizer's hyperparameters",
        decays=False, no_decay=r"\.beft_bias\.",
        note="adds a bias to q, k and v (peft's BeftModel: the value projections)",
    ),
    Tuner(
        "pvera", "PVERA", "PveraConfig",
        'PVeRA, arXiv:2512.07703 (2025)',
        "PVeRA (arXiv:2512.07703): VeRA's shared frozen projections with d giving a mean and a log-variance; "
        "training samples the rank-r code, evaluation (and merge) uses the mean",
        _PEFT_DEFAULTS.format("PveraConfig") + " (r = 256, d_initial = 0.1, no sampling at inference); d_initial "
        "searched as vera's",
        {"rank": Hp(256, "rank r of the shared random projections (integer >= 1; may exceed the width)", peft="r"),
         "d_initial": Hp(0.1, "initial value of the scaling vector d (number > 0)", kind="float", lo=0, lo_open=True,
                         space=(1e-7, 0.1))},
        fixed={"save_projection": True, "sample_at_inference": False}, seeds=("projection_prng_key",),
        decays=False, fits=_vera_fits,
    ),
    Tuner(
        "unilora", "UNILORA", "UniLoraConfig",
        'Uni-LoRA, arXiv:2506.00799 (2025)',
        "Uni-LoRA (arXiv:2506.00799): every layer's rank-r LoRA factors are read, through fixed random "
        "indices, from one trained vector theta_d shared by all layers (uniform +-0.02, so the update is not zero "
        "at init)",
        _PEFT_DEFAULTS.format("UniLoraConfig") + " (r = 4, theta_d of 256); the vector length searched around it, "
        "not from the paper",
        {"rank": _rank(4),
         "theta_d_length": Hp(256, "length of the one trained vector (integer >= 1)", space=(256, 1024, 4096))},
        seeds=("proj_seed",), identity=False, decays=False,
    ),
    Tuner(
        "tinylora", "TINYLORA", "TinyLoraConfig",
        'TinyLoRA, arXiv:2602.04118',
        "TinyLoRA (arXiv:2602.04118): dW = U Sigma (sum_i v_i P_i) V^T from W's frozen rank-r SVD, "
        "fixed random P_i and a trained u-vector v per layer; v zero at init",
        _PEFT_DEFAULTS.format("TinyLoraConfig") + " (r = 2 as the paper recommends, u = 64, no weight tying); u "
        "searched down to its docstring's 1-13",
        {"u": Hp(64, "trained numbers per layer (integer >= 1)", space=(1, 13, 64))},
        fixed={"r": 2, "weight_tying": 0.0, "save_projection": True}, seeds=("projection_seed",), decays=False,
    ),
    # -- structure-preserving subspace tuners ---------------------------------------------------
    Tuner(
        "miss", "MISS", "MissConfig",
        'MiSS, arXiv:2409.15371 (2024)',
        "MiSS (arXiv:2409.15371): dW built by sharing one trained r x out shard across W's "
        "in / r column blocks; zero at init",
        _PEFT_DEFAULTS.format("MissConfig") + " (its default initialisation, an even r) with r = 32, half its "
        "default 64: peft requires r <= the layer's input width, and 32 fits every backbone family's narrowest "
        "layer here (a 32-wide Swin stage); ranks around it",
        {"rank": _rank(32, (16, 32, 64), "shard size r (even integer >= 2, at most the width)")},
        fits=_even_rank,
        note="r 32, half peft's default, so that it fits 32-wide layers",
    ),
    Tuner(
        "osf", "OSF", "OSFConfig",
        'OSF (orthogonal subspace fine-tuning)',
        "OSF (orthogonal subspace fine-tuning): W = U S V^T split at effective_rank; the top singular directions "
        "stay frozen, the rest (U_low, S_low, V_low) train with gradients projected orthogonal to them",
        _PEFT_DEFAULTS.format("OSFConfig") + " (half of each weight's rank preserved); the fraction searched, not "
        "from the paper",
        {"keep": Hp(0.5, "fraction of each weight's rank kept frozen (number in (0, 1))", kind="float", lo=0,
                    lo_open=True, hi=1, hi_open=True, space=(0.5, 0.75, 0.9), peft="effective_rank")},
    ),
    Tuner(
        "ln_tuning", "LN_TUNING", "LNTuningConfig",
        'LN tuning, arXiv:2312.11420 (2023)',
        "LN tuning (arXiv:2312.11420): trains (a copy of) every LayerNorm's affine: norm1 and norm2 of every "
        "block, the final norm and the backbone's other norms (CLIP's pre-norm, Swin's patch norms)",
        "nothing to choose besides the optimizer's hyperparameters",
        targets=(NORM1, NORM2), outer=("final_norm", "extra_norms"), decays=False,
        trains_backbone=r"(.+\.)?(norm|norm1|norm2|fc_norm|norm_pre)\.(weight|bias)",
    ),
    # -- adaptive rank: trained through the fit's per-step hooks --------------------------------
    Tuner(
        "adalora", "ADALORA", "AdaLoraConfig",
        "Zhang et al., AdaLoRA, ICLR 2023",
        "AdaLoRA (Zhang et al., ICLR 2023): W' = W + (alpha / init_r) P diag(E) Q on every block Linear (the fused "
        "qkv, attn.proj, fc1, fc2), P and Q normal(0, 0.02), E zero; after every optimizer step an EMA of each "
        "weight's |w x grad| and of its uncertainty scores the (P, E, Q) triplets, and the lowest-scored "
        "singular values E are masked to a budget that falls cubically from init_r to target_r per matrix on "
        "average; the loss adds orth_reg_weight x the mean ||P^T P - I||_F, ||Q Q^T - I||_F",
        "the official code, QingruZhang/AdaLoRA@d10f5eb: its README quickstart and SQuAD example (lora_r 12, "
        "target_rank 8, mask_interval 10, beta1 = beta2 = 0.85, reg_orth_coef 0.1, lora_alpha 16), whose ranks and "
        "betas are peft's AdaLoraConfig defaults; the search tries its NLU/scripts' reg_orth_coef 0.1 and 0.3 and "
        "lora_alpha 16 and 32, and target_r 2, 4, 8 with init_r = 1.5 target_r (the ratio of 12 / 8); every Linear "
        "of a block as its --lora_module (query, key, value, attention.output, intermediate, layer.output); its "
        "warmups as fractions of its runs (README 500 and 1500 of 3000 steps, SQuAD 50 and 100 of 300, GLUE scripts "
        "9-18 % and 44-58 %; medians 15 % and 48 %): tinit_frac 0.15, tfinal_frac 0.5",
        {"target_r": Hp(8, "average rank the budget ends at (integer >= 1, at most init_r)", space=(2, 4, 8)),
         "init_r": Hp(12, "rank every matrix starts with, the trainable tensors' rank (integer >= 1, at most the width)",
                      width=True),
         "alpha": _alpha(16, "the update is scaled by alpha / init_r (number > 0)", space=(16, 32), peft="lora_alpha"),
         "orth_reg_weight": Hp(0.1, "weight of the orthogonality regulariser in the loss (number >= 0)", kind="float",
                               lo=0, space=(0.1, 0.3)),
         "tinit_frac": Hp(0.15, "fraction of the fit's steps before the budget starts to shrink (number in [0, 1))",
                          kind="float", lo=0, hi=1, hi_open=True, peft=None),
         "tfinal_frac": Hp(0.5, "fraction of the fit's steps at the end trained at the final budget (number in [0, 1))",
                           kind="float", lo=0, hi=1, hi_open=True, peft=None),
         "deltaT": Hp(10, "optimizer steps between two budget allocations (integer >= 1)"),
         "beta1": Hp(0.85, "EMA coefficient of the importance (number in (0, 1))", kind="float", lo=0, lo_open=True,
                     hi=1, hi_open=True),
         "beta2": Hp(0.85, "EMA coefficient of its uncertainty (number in (0, 1))", kind="float", lo=0, lo_open=True,
                     hi=1, hi_open=True)},
        # total_step, tinit, tfinal: placeholders peft's config check accepts; begin_fit sets the fit's own
        fixed={"total_step": 1, "tinit": 0, "tfinal": 0}, derived={"init_r": lambda hp: 3 * hp["target_r"] // 2},
        targets=BLOCK_LINEARS, no_decay=r"\.lora_E\.", fits=_adalora_fits, steps=AdaLoraSteps,
        note="q, k and v share one SVD update (timm's fused qkv) where the paper gives W_q, W_k and W_v each their own "
             "triplets and budget; tinit and tfinal are fractions of the fit's steps (tinit_frac 0.15, tfinal_frac 0.5), "
             "not the official scripts' step counts, as fits here differ in length; the regulariser is computed in fp32 outside "
             "autocast (the official GLUE runs are fp32 throughout); the singular values E, stored (r, 1), are not "
             "weight-decayed (the project's rule for vectors; the official Trainer decays them); orth_reg_weight 0.1 "
             "and alpha 16 (the official scripts) where peft's defaults are 0.5 and 8; the budget masks E but keeps "
             "the init_r tensors training, so the trainable count is init_r's",
    ),
]

# peft types that no method uses, and why: a ViT cannot take them, or they would silently misbehave here
REFUSED: dict[str, str] = {
    "PROMPT_TUNING": "prompt learning for language models: trains virtual token embeddings that peft's PeftModel "
                     "prepends to input_ids' embeddings; a timm ViT has no token-embedding input (vpt is the ViT form)",
    "MULTITASK_PROMPT_TUNING": "prompt learning for language models (virtual token embeddings, shared across tasks "
                               "by task ids); a timm ViT has no token-embedding input",
    "P_TUNING": "prompt learning for language models: a prompt encoder's virtual tokens fed as input embeddings; a "
                "timm ViT has no token-embedding input",
    "PREFIX_TUNING": "prompt learning for language models: key/value prefixes passed as past_key_values, which "
                     "timm's attention does not take",
    "CPT": "context-aware prompt tuning of causal language models (token-type masks over input_ids)",
    "CARTRIDGE": "prompt learning for causal language models: a trained KV-cache prefix (past_key_values)",
    "ADAPTION_PROMPT": "LLaMA-Adapter: replaces the self-attention modules of Llama-style transformers models (their "
                       "forward signature), not nn.Linear layers",
    "POLY": "Polytropon: routes LoRA modules by the task_ids passed with every batch (multi-task); a single-task "
            "run has none, and with one task it is LoRA",
    "XLORA": "X-LoRA: a mixture of already trained LoRA adapters gated by a classifier over a transformers model's "
             "hidden states",
    "TRAINABLE_TOKENS": "trains rows of a token-embedding matrix; a ViT has no token embedding",
    "SHADOW": "ShadowPEFT: wraps the decoder blocks of a decoder-only transformers language model and rides its "
              "decoder loop",
    "ADAMSS": "AdaMSS's initialisation clusters each weight's singular vectors (scikit-learn KMeans) and sizes its "
              "per-subspace tensors by the clusters (40, 87, 14, 112 and 35 rows on one demo qkv), so their shapes "
              "depend on the weights' values and it cannot be built on the meta device bench methods counts on "
              "(its ASA variant's per-step update_and_allocate would go through Method.after_step, as AdaLoRA's)",
    "FROD": "FRoD's pre-injection step jointly decomposes the values of all targeted weights (on the CPU), which no "
            "option skips, so it cannot be built on the meta device bench methods counts on",
}


def catalog(peft=None) -> dict[str, str]:
    """Every ``peft.PeftType`` of the installed peft -> what the project does with it: ``registered as
    <methods>`` or ``refused: <why>`` (or ``not in the table``: a tuner of a newer peft no row names)."""
    peft = peft or import_peft("the peft catalog")
    used: dict[str, list[str]] = {}
    for row in TUNERS:
        used.setdefault(row.peft_type, []).append(row.name)
    out = {}
    for name in peft_compat.peft_types(peft):
        if name in used:
            out[name] = f"registered as {', '.join(used[name])}"
        elif name in REFUSED:
            out[name] = f"refused: {REFUSED[name]}"
        else:
            out[name] = "not in the table (methods/peft_tuners.py TUNERS or REFUSED)"
    return out


def methods_for(peft_type: str) -> list[str]:
    """The registered methods built on peft type ``peft_type`` (a ``peft.PeftType`` name, e.g.
    ``"OFT"``); ``Unsupported``, one line saying why, for a type refused here; ValueError for a name
    no row of either table knows."""
    names = [row.name for row in TUNERS if row.peft_type == peft_type]
    if names:
        return names
    if peft_type in REFUSED:
        raise Unsupported(f"peft {peft_type} is not a method here: {REFUSED[peft_type]}")
    raise ValueError(f"peft type {peft_type!r} is in neither table of methods/peft_tuners.py (TUNERS, REFUSED)")


# -- the bridge -------------------------------------------------------------------------------

class PeftTuner(Method):
    """A method that is one peft tuner config on some modules of every block: built from a ``Tuner``
    row (``row``) by ``make``; ``peft_config`` may be overridden instead by a hand-written subclass."""

    group = "peft"
    row: Tuner | None = None
    mergeable = True
    targets: tuple[str, ...] = (QKV,)  # block-relative module names (methods.families constants)
    outer: tuple[str, ...] = ()
    keep_tuner = False  # keep peft's tuner model object on the model (``AdaLoraSteps``: its rank allocator)

    # -- hyperparameters ---------------------------------------------------------------------
    def _check(self, hp: dict) -> None:
        for key, spec in (self.row.hparams.items() if self.row else ()):
            if spec.kind == "int":
                check_int(self.name, hp, key, int(spec.lo))
            elif spec.kind == "float":
                check_float(self.name, hp, key, spec.lo, spec.hi, lo_open=spec.lo_open, hi_open=spec.hi_open)
            elif spec.kind == "choice":
                check_choice(self.name, hp, key, spec.choices)
            elif spec.kind == "factor":
                v = hp[key]
                if isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or v >= 1):
                    raise ValueError(f"{self.name}: {key} must be -1 or an integer >= 1, got {v!r}")

    def check_fits(self, hp: dict, layout) -> None:
        super().check_fits(hp, layout)
        if self.row and self.row.fits:
            self.row.fits(self.name, hp, layout)

    def search_space(self, trial) -> dict:
        if not self.row:
            return {}
        out = {k: trial.suggest_categorical(k, list(spec.space)) for k, spec in self.row.hparams.items()
               if spec.space and k not in self.row.derived}
        for k, rule in self.row.derived.items():
            out[k] = rule(out)
        return {k: out[k] for k in self.row.hparams if k in out}

    # -- optimizer ---------------------------------------------------------------------------
    def decays(self, model, name, param) -> bool:
        if self.row and self.row.no_decay and re.search(self.row.no_decay, name):
            return False
        return super().decays(model, name, param)

    # -- adapt / merge -----------------------------------------------------------------------
    def check_available(self) -> None:
        import_peft(self.name)

    def targets_of(self, layout: Layout) -> Targets:
        targets = Targets((t, layout.paths(t)) for t in self.targets)
        for attr in self.outer:
            value = getattr(layout, attr)
            for path in (value,) if isinstance(value, str) else value:
                targets[path] = [path]
        return targets

    def peft_config(self, peft, targets: Targets, layout: Layout, model: nn.Module, **hp: Any):
        """The peft config for hyperparameters ``hp``; ``targets.all`` is the exact path list."""
        row = self.row
        kwargs = dict(row.fixed)
        kwargs.update({(spec.peft or key): hp[key] for key, spec in row.hparams.items() if spec.peft is not None})
        if row.build:
            kwargs.update(row.build(hp, model, targets))
        kwargs.update({key: seed_from_torch() for key in row.seeds})
        paths = targets.all
        # one regex of the exact paths: peft full-matches a string, where it would also match list
        # entries as name suffixes ("norm" would take every block's ``attn.norm``); and Lily shares its
        # B's among the layers one target entry matched, so one entry shares them across all blocks
        kwargs["target_modules"] = _exact(paths)
        config = peft_compat.config_class(peft, row.config)(**kwargs)
        if _on_meta(model, paths):
            for key, value in row.meta.items():
                setattr(config, key, value)
        return config

    def _adapt(self, model: nn.Module, **hp: Any) -> None:
        peft = import_peft(self.name)
        peft_compat.no_boft_kernel(peft)
        layout = layout_of(model)
        targets = self.targets_of(layout)
        config = self.peft_config(peft, targets, layout, model, **hp)
        with warnings.catch_warnings():
            # peft asks every module it wraps for in/out features, which a LayerNorm (LN tuning) has not
            warnings.filterwarnings("ignore", message=r"Unsupported layer type .*LayerNorm", category=UserWarning)
            wrapped = peft_compat.inject(peft, model, config, keep_tuner=self.keep_tuner)
        if wrapped != sorted(targets.all):
            raise RuntimeError(f"peft wrapped {wrapped}, expected exactly {sorted(targets.all)}")

    def _merge(self, model: nn.Module) -> None:
        peft_compat.merge_and_unload(model)


def _on_meta(model: nn.Module, paths: list[str]) -> bool:
    return any(p.is_meta for path in paths for p in model.get_submodule(path).parameters())


def make(row: Tuner) -> type[PeftTuner]:
    """The method class of a table row (one class per method, so each has its own class attributes)."""
    label = re.sub(r"\W", "_", row.name).title().replace("_", "") + "Tuner"
    attrs = {
        "__doc__": f"{row.what}.\n\nDefaults and search space: {row.source}.",
        "__module__": __name__,
        "__qualname__": label,
        "name": row.name,
        "row": row,
        "defaults": {k: spec.default for k, spec in row.hparams.items()},
        "help": {k: spec.help for k, spec in row.hparams.items()},
        "targets": row.targets,
        "outer": row.outer,
        "mergeable": row.mergeable,
        "identity_at_init": row.identity,
        "trains_backbone": row.trains_backbone,
        "paper": row.paper,
        "code": f"huggingface/peft {'.'.join(map(str, PEFT_SERIES))} ({row.config.removesuffix('Config')}Model)",
        "deviations": row.note,
        "decays_backbone": row.decays,
        "width_bounded": tuple(k for k, spec in row.hparams.items() if spec.width),
    }
    return type(label, ((row.steps,) if row.steps else ()) + (PeftTuner,), attrs)


for _row in TUNERS:
    register(make(_row))


class PeftLoRA(PeftTuner):
    """peft's own LoRA (``LoraConfig``) on the whole fused qkv: not registered, the reference that
    ``bench perf`` times our ``lora`` against (same parameter count and FLOPs at the same rank)."""

    name = "lora (peft)"
    row = Tuner("lora (peft)", "LORA", "LoraConfig", "Hu et al., LoRA, ICLR 2022", "peft's LoRA on the fused qkv", "-",
                {"rank": _rank(8, help="rank of B A on the fused qkv"),
                 "alpha": _alpha(8, "scale alpha / r", peft="lora_alpha")})
    defaults = {"rank": 8, "alpha": 8}
    help = {"rank": "rank of B A on the fused qkv", "alpha": "scale alpha / r"}
