"""Hugging Face peft tuners as registered methods, through one small bridge (``PeftTuner``).

A peft tuner is a method once it says which block Linears it adapts (``targets``: names from
``methods.families``) and which peft config it builds from its hyperparameters (``peft_config``).
The bridge does the rest, on the timm model itself (no ``PeftModel`` wrapper: ``model.head``,
``reset_classifier`` and ``forward_features`` keep working):

- apply: the exact module paths of the targets in this backbone (``layout_of(model).paths``, never
  name suffixes that could match other modules) go into the config; peft's tuner class for the
  config's type injects its layers into the model in place (what ``peft.inject_adapter_in_model``
  does, which refuses tuners with shared state such as VeRA); the bridge checks that peft wrapped
  exactly those paths. peft initialises every trainable tensor as it always does, from torch's
  global RNG, so the caller's seed reproduces it.
- merge: peft's own merge of every tuner layer (``layer.merge()``), each replaced by its base
  Linear: a plain timm model with the original state_dict keys.
- weight decay: peft leaves the optimizer to the trainer. Every tuner here keeps the project's
  rule (timm's, ``Method.decays``): weight matrices are decayed (LoRA/DoRA A and B, LoHa and LoKr
  factors), vectors are not (DoRA magnitudes, VeRA lambdas, IA3 scales, FourierFT coefficients).
  Most of those vectors are multiplicative scales or norms whose decay would pull the layer
  towards zero output rather than towards the pretrained model, and this is how our LoRA,
  adapters and SSF are decayed, so methods differ by what they add, not by their optimizer.

peft is imported lazily (``import methods`` and ``bench --help`` stay fast) and only in the tested
range pinned in pyproject.toml; outside it, or without peft, applying a tuner is one ImportError
line. peft touches neither the network nor the Hugging Face cache when it applies or merges (a test
checks that no socket is opened).

Registered (exact counts on a randomly initialised ViT-B/16, without head, with peft 0.21):
dora 322,560, vera 30,720, ia3 64,512, loha 589,824, lokr 21,504, fourierft 12,000. OFT and BOFT
are left out: their counts change between peft versions, and BOFT silently changes without its
CUDA extension.

Placements that differ from the papers (deviations, not matched): timm fuses q, k and v into one
``attn.qkv`` Linear, and peft 0.21's ``IA3Config``, ``VeraConfig`` and ``FourierFTConfig`` adapt
whole ``nn.Linear`` modules (``target_modules``; none has a per-output-row option), so through
peft's public API these tuners adapt all of q, k and v or none of them; adapting q and v only would
need timm's qkv split into three Linears, which is not done here. On ViT-B/16:

- ia3: the paper rescales keys, values and the MLP's inner activations (T-Few, r-three/t-few
  ``configs/ia3.json`` at 5edc84b: ``"lora_layers": "k|v|wi_1.*"``):
  12 x (768 + 768 + 3072) = 55,296; ours rescales the whole qkv output, q included:
  12 x (2304 + 3072) = 64,512.
- vera: the paper adapts q and v, each with its own d and b (24.6K in its ViT-B row):
  12 x 2 x (256 + 768) = 24,576; ours one d and one b over the fused qkv: 12 x (256 + 2304) = 30,720,
  its update reaching k too.
- fourierft: the official code adapts q and v (Chaos96/fourierft ``experiments/ViT/exec.py`` at
  1b660d1: ``target_modules=["query", "value"]``), one n-entry spectrum each: 2 x 12 x n (24,000 at
  n = 1000; 72,000 at the paper's n = 3000); ours one spectrum over the fused 2304 x 768 qkv: 12 x n
  (12,000), its n entries spread over q, k and v rows and its Fourier basis spanning all three.

The other tuners here (dora, loha, lokr) also put one update on the fused qkv: q, k and v together.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ._checks import check_float, check_int
from .base import Method, register
from .families import FC2, QKV, Layout, layout_of
from .surgery import replace_module

PEFT_REQUIREMENT = "peft>=0.21,<0.22"  # the tested range; pyproject.toml pins the same
PEFT_SERIES = (0, 21)  # the (major, minor) series that range allows
ADAPTER = "default"  # peft's adapter name; its tensors are called e.g. ``lora_A.default.weight``


class PeftUnavailable(ImportError):
    """peft is missing or outside the tested range; the message is one line saying what to install."""


def import_peft(method: str = "this method"):
    """The ``peft`` module, imported now; ``PeftUnavailable`` when absent or not in the tested range."""
    import re
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("peft")
    except PackageNotFoundError:
        raise PeftUnavailable(f"{method} needs Hugging Face peft, which is not installed: "
                              f"pip install '{PEFT_REQUIREMENT}'") from None
    series = tuple(int(n) for n in re.findall(r"\d+", found)[:2])
    if series != PEFT_SERIES:
        raise PeftUnavailable(f"{method} is tested with {PEFT_REQUIREMENT} (its parameter counts and "
                              f"initialisation depend on the version), found peft {found}: "
                              f"pip install '{PEFT_REQUIREMENT}'")
    try:
        import peft
    except Exception as exc:  # an install that does not import (broken transformers ...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PeftUnavailable(f"{method} needs Hugging Face peft, which fails to import: {first}") from None
    return peft


def seed_from_torch() -> int:
    """A seed for a peft tuner's own ``torch.Generator`` (VeRA's shared projections, FourierFT's
    frequency locations), drawn from torch's global RNG: the caller's seed decides it."""
    return int(torch.randint(0, 2**31 - 1, ()).item())


class Targets(dict):
    """Block-relative name (``attn.qkv``) -> the exact module paths of that Linear in every block."""

    @property
    def all(self) -> list[str]:
        return [p for paths in self.values() for p in paths]


def is_tuner_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer peft injected (``BaseTunerLayer``); False without peft loaded."""
    import sys

    utils = sys.modules.get("peft.tuners.tuners_utils")
    return utils is not None and isinstance(module, utils.BaseTunerLayer)


def inject(peft, model: nn.Module, config, expected: list[str]) -> None:
    """Inject ``config``'s tuner layers into ``model`` in place; RuntimeError unless exactly the
    modules at ``expected`` were wrapped."""
    tuner_cls = peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
    # The tuner object (an nn.Module holding ``model``) is dropped: every layer keeps what it needs,
    # VeRA's shared projections included (each of its layers references the same BufferDict).
    tuner = tuner_cls(model, config, adapter_name=ADAPTER)
    wrapped = sorted(tuner.targeted_module_names)
    if wrapped != sorted(expected):
        raise RuntimeError(f"peft wrapped {wrapped}, expected exactly {sorted(expected)}")


def merge_tuner_layers(model: nn.Module) -> None:
    """peft's own merge: each tuner layer folds its update into its base layer (``merge()``) and is
    replaced by that base layer; the ``peft_config`` attribute peft put on the model goes too."""
    layers = [(name, m) for name, m in model.named_modules() if name and is_tuner_layer(m)]
    for name, layer in layers:
        layer.merge(safe_merge=True)  # safe: NaN/inf in the merged weight is an error, not a model
        replace_module(model, name, layer.get_base_layer())
    model.__dict__.pop("peft_config", None)


class PeftTuner(Method):
    """A method that is one peft tuner config on some Linears of every block.

    Subclasses set ``name``, ``defaults``, ``help``, ``targets`` and implement ``peft_config``
    (and ``_check``, ``search_space`` as any method). Everything else is the bridge's.
    """

    group = "peft"

    mergeable = True
    targets: tuple[str, ...] = (QKV,)  # block-relative Linear names (methods.families constants)

    def peft_config(self, peft, targets: Targets, layout: Layout, **hp: Any):
        """The peft config for hyperparameters ``hp``; ``targets.all`` is the exact path list."""
        raise NotImplementedError

    def check_available(self) -> None:
        import_peft(self.name)

    def _adapt(self, model: nn.Module, **hp: Any) -> None:
        peft = import_peft(self.name)
        layout = layout_of(model)
        targets = Targets((t, layout.paths(t)) for t in self.targets)
        inject(peft, model, self.peft_config(peft, targets, layout, **hp), targets.all)

    def _merge(self, model: nn.Module) -> None:
        merge_tuner_layers(model)


# -- the tuners ------------------------------------------------------------------------------

def _rank_check(method: Method, hp: dict) -> None:
    check_int(method.name, hp, "rank", 1)
    check_float(method.name, hp, "alpha", 0, lo_open=True)


@register
class DoRA(PeftTuner):
    """DoRA (Liu et al., ICML 2024): W' = m * (W + (alpha/r) B A) / ||W + (alpha/r) B A|| per output
    row, on the fused qkv; peft ``LoraConfig(use_dora=True)``: A kaiming-uniform, B zero, the
    magnitude m initialised to the row norms of W (so the model is unchanged at init)."""

    name = "dora"
    defaults = {"rank": 8, "alpha": 16}
    help = {
        "rank": "rank r of the direction update B A on the fused qkv (integer >= 1, at most the width)",
        "alpha": "the update is scaled by alpha / r (number > 0; the search sets alpha = 2 r)",
    }
    # DoRA paper: its commonsense-reasoning configurations use alpha = 2 r (r 32 / alpha 64, and
    # r 16 / alpha 32 for its half-rank variant), and it studies the ranks 4 ... 64 (its
    # rank-robustness figure); peft's own default alpha is 8.
    RANKS = [4, 8, 16, 32, 64]
    width_bounded = ("rank",)

    def _check(self, hp: dict) -> None:
        _rank_check(self, hp)

    def search_space(self, trial) -> dict:
        rank = trial.suggest_categorical("rank", self.RANKS)
        return {"rank": rank, "alpha": 2 * rank}

    def peft_config(self, peft, targets, layout, rank, alpha):
        check_int(self.name, {"rank": rank}, "rank", 1, layout.min_width)
        return peft.LoraConfig(r=rank, lora_alpha=alpha, use_dora=True, target_modules=targets.all)


@register
class VeRA(PeftTuner):
    """VeRA (Kopiczko et al., ICLR 2024): W' = W + diag(b) B diag(d) A with A (r x in) and B (out x r)
    frozen random kaiming-uniform projections shared by every adapted layer, sliced to each layer's
    shape (peft builds them at the largest shape, so Swin's per-stage widths are supported), and
    trainable vectors d (r, init ``d_initial``) and b (out, init 0), on the fused qkv.

    Deviation: the paper adapts q and v, each with its own d and b (its ViT-B row: 24.6K =
    12 x 2 x (256 + 768) = 24,576); on the fused qkv one d and one b (2304 rows: q, k and v) per
    block give 12 x (256 + 2304) = 30,720 on ViT-B/16 (see the module docstring).

    The projections come from peft's own generator seeded with ``projection_prng_key``; here that key
    is drawn from torch's RNG (peft's default is the constant 0), so each run seed draws its own
    projections and a seed reproduces them. They are saved in the state_dict (peft's default
    ``save_projection=True``) and folded into the weights by merge."""

    name = "vera"
    defaults = {"rank": 256, "d_initial": 0.1}
    help = {
        "rank": "rank r of the shared random projections (integer >= 1; may exceed the width)",
        "d_initial": "initial value of the scaling vector d (number > 0)",
    }
    decays_backbone = False  # only vectors train: timm's rule decays none of them

    def _check(self, hp: dict) -> None:
        check_int(self.name, hp, "rank", 1)
        check_float(self.name, hp, "d_initial", 0, lo_open=True)

    def check_fits(self, hp: dict, layout) -> None:
        # the shared projections A (r x width) and B (3 width x r) grow with r. The paper keeps r = 256
        # whatever the width (its ViT-B rows; the demo's 96-wide and tiny_vit's 48-wide layers too), so
        # the bound is generous: 16 x the widest layer (12,288 on ViT-B: projections of 150 MB in fp32)
        widest = max(layout.widths)
        check_int(self.name, hp, "rank", 1, 16 * widest, why=f"at most 16 x the backbone's width {widest}")

    def search_space(self, trial) -> dict:
        # The paper's image-classification rows use r = 256 (24.6K parameters on ViT-B's q and v:
        # 12 x 2 x (768 + 256)), not searched; its initialisation ablation (Table 6c: d_init 1.0,
        # 1e-1, 1e-7) finds small values best, and peft recommends <= 0.1.
        return {"d_initial": trial.suggest_categorical("d_initial", [1e-7, 0.1])}

    def peft_config(self, peft, targets, layout, rank, d_initial):
        return peft.VeraConfig(r=rank, d_initial=d_initial, projection_prng_key=seed_from_torch(),
                               save_projection=True, target_modules=targets.all)


@register
class IA3(PeftTuner):
    """(IA)^3 (Liu et al., NeurIPS 2022): learned vectors that rescale the fused qkv's outputs and
    the MLP's fc2 inputs (fc2 as peft's feed-forward module, as the paper rescales the MLP's inner
    activations), initialised to ones (the model is unchanged at init); peft ``IA3Config``.

    Deviation: the paper rescales k and v, not q (55,296 on ViT-B/16: 12 x (768 + 768 + 3072));
    the fused qkv's scale covers q too: 12 x (2304 + 3072) = 64,512 (see the module docstring)."""

    name = "ia3"
    defaults: dict = {}
    help: dict = {}
    targets = (QKV, FC2)
    decays_backbone = False

    def decays(self, model, name, param) -> bool:
        # the scales are vectors stored as (out, 1) / (1, in) matrices: not decayed (timm's rule
        # for vectors; decay would pull them towards zero output, not towards the pretrained model)
        return ".ia3_l." not in name and super().decays(model, name, param)

    # no method hyperparameter: the paper tunes none besides the optimizer's

    def peft_config(self, peft, targets, layout):
        return peft.IA3Config(target_modules=targets.all, feedforward_modules=targets[FC2])


@register
class LoHa(PeftTuner):
    """LoHa (Hyeon-Woo et al., FedPara, ICLR 2022; as in LyCORIS): W' = W + (alpha/r) (B1 A1) * (B2 A2)
    (Hadamard product of two rank-r products) on the fused qkv; peft ``LoHaConfig``: three factors
    kaiming-uniform, one zero (the model is unchanged at init)."""

    name = "loha"
    defaults = {"rank": 8, "alpha": 8}
    help = {
        "rank": "rank r of each of the two factor products (integer >= 1, at most the width)",
        "alpha": "the update is scaled by alpha / r (number > 0)",
    }
    width_bounded = ("rank",)

    def _check(self, hp: dict) -> None:
        _rank_check(self, hp)

    def search_space(self, trial) -> dict:
        # LyCORIS (Yeh et al., ICLR 2024; its docs/Guidelines.md) trains LoHa at dims 4, 16 and 32,
        # with alpha 1 or alpha = dim / 2; 8 / 8 is peft's default. The alphas cover those rules.
        return {"rank": trial.suggest_categorical("rank", [4, 8, 16, 32]),
                "alpha": trial.suggest_categorical("alpha", [1, 2, 4, 8, 16, 32])}

    def peft_config(self, peft, targets, layout, rank, alpha):
        check_int(self.name, {"rank": rank}, "rank", 1, layout.min_width)
        return peft.LoHaConfig(r=rank, alpha=alpha, target_modules=targets.all)


@register
class LoKr(PeftTuner):
    """LoKr (LyCORIS, Yeh et al., ICLR 2024): W' = W + (alpha/r) W1 kron (B2 A2) on the fused qkv, the
    Kronecker factors' shapes from ``factor`` (-1: as square as the dimensions allow), the second one
    of rank r unless r reaches half its size; peft ``LoKrConfig``: W1 zero, A2 and B2
    kaiming-uniform (the model is unchanged at init)."""

    name = "lokr"
    defaults = {"rank": 8, "alpha": 8, "factor": -1}
    help = {
        "rank": "rank r of the second Kronecker factor (integer >= 1, at most the width)",
        "alpha": "the update is scaled by alpha / r (number > 0; the search sets alpha = r)",
        "factor": "size of the first Kronecker factor's dimensions (-1: balanced, else an integer >= 1)",
    }
    width_bounded = ("rank",)

    def _check(self, hp: dict) -> None:
        _rank_check(self, hp)
        factor = hp["factor"]
        if isinstance(factor, bool) or not isinstance(factor, int) or not (factor == -1 or factor >= 1):
            raise ValueError(f"{self.name}: factor must be -1 or an integer >= 1, got {factor!r}")

    def search_space(self, trial) -> dict:
        # LyCORIS docs/Guidelines.md: LoKr at dims 1 and 8 with factors -1, 4 and 8 (and "full"
        # dims, left out: they make the second factor dense, far over this method's size); alpha = r,
        # peft's default ratio.
        rank = trial.suggest_categorical("rank", [1, 8])
        return {"rank": rank, "alpha": rank, "factor": trial.suggest_categorical("factor", [-1, 4, 8])}

    def peft_config(self, peft, targets, layout, rank, alpha, factor):
        return peft.LoKrConfig(r=rank, alpha=alpha, decompose_factor=factor, target_modules=targets.all)


@register
class FourierFT(PeftTuner):
    """FourierFT (Gao et al., ICML 2024): W' = W + scaling * Re(IDFT2(S)) with S zero but for
    ``n_frequency`` trainable coefficients at random (row, column) locations, on the fused qkv;
    peft ``FourierFTConfig``: coefficients standard normal (peft's and the paper's default, so the
    model changes at init), locations from peft's generator seeded with ``random_loc_seed``, here
    drawn from torch's RNG (peft's default is the constant 777; every layer of one shape shares
    them, as in peft).

    Deviation: the official code adapts q and v, one spectrum each (2 x 12 x n on ViT-B/16: 24,000 at
    n = 1000); ours one spectrum over the fused qkv (12 x n: 12,000), see the module docstring."""

    name = "fourierft"
    defaults = {"n_frequency": 1000, "scaling": 300.0}
    help = {
        "n_frequency": "number of trainable spectral coefficients per layer (integer >= 1, at most in x out)",
        "scaling": "the update is scaled by this (number > 0)",
    }
    decays_backbone = False  # the coefficients are a vector: timm's rule does not decay it

    def _check(self, hp: dict) -> None:
        check_int(self.name, hp, "n_frequency", 1)
        check_float(self.name, hp, "scaling", 0, lo_open=True)

    def check_fits(self, hp: dict, layout) -> None:
        smallest = min(3 * w * w for w in layout.widths)  # the fused qkv is (3 width) x width
        check_int(self.name, hp, "n_frequency", 1, smallest, why="at most the entries of the smallest fused qkv")

    def search_space(self, trial) -> dict:
        # The paper's ViT rows use n = 3000 and 10000 (on q and v) with scaling 300 for image
        # classification; 100 / 150 are its GLUE values (peft's docs give the same guidance);
        # 1000 is peft's default n.
        return {"n_frequency": trial.suggest_categorical("n_frequency", [1000, 3000, 10000]),
                "scaling": trial.suggest_categorical("scaling", [100.0, 150.0, 300.0])}

    def peft_config(self, peft, targets, layout, n_frequency, scaling):
        smallest = min(3 * w * w for w in layout.widths)  # the fused qkv is (3 width) x width
        check_int(self.name, {"n_frequency": n_frequency}, "n_frequency", 1, smallest)
        return peft.FourierFTConfig(n_frequency=n_frequency, scaling=scaling, random_loc_seed=seed_from_torch(),
                                    target_modules=targets.all)


class PeftLoRA(PeftTuner):
    """peft's own LoRA (``LoraConfig``) on the whole fused qkv: not registered, the reference that
    ``bench perf`` times our ``lora`` against (same parameter count and FLOPs at the same rank)."""

    name = "lora (peft)"
    defaults = {"rank": 8, "alpha": 8}
    help = {"rank": "rank of B A on the fused qkv", "alpha": "scale alpha / r"}

    def _check(self, hp: dict) -> None:
        _rank_check(self, hp)

    def peft_config(self, peft, targets, layout, rank, alpha):
        return peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets.all)
