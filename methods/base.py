"""The method interface and its registry.

A method is a small object with one contract (like an Optuna sampler): ``apply`` adapts a timm
backbone (any family in ``methods.families``; ``families`` limits it), ``search_space`` suggests its own hyperparameters from an Optuna trial,
``merge`` folds what it added back into a plain timm model. Registering a subclass with
``@register`` is all it takes for the CLI, the runner and the tests to pick it up.

Weight decay follows each method's official code: ``Method.decays(model, name, param)`` says
whether the optimizer decays one trainable tensor (``bench.train.make_optimizer`` asks it). The
default is timm's rule (``param_groups_weight_decay``: dongzelian/SSF ``optim_factory.py``, and
timm 0.5.4's ``create_optimizer`` in ZhangYuanhan-AI/NOAH ``supernet_train_prompt.py``): no
decay for 1-d tensors, ``.bias`` names and ``model.no_weight_decay()`` (``pos_embed``,
``cls_token`` ...); every other tensor, the head's weight included, is decayed.
Methods whose official optimizer differs override it (rlrr, vpt) and say why with its source.
``decays_backbone(name)`` tells whether a method decays anything besides the head.

A method whose official code picks what trains from a pass over the training data (GPS, SPT) sets
``needs_training_data``; ``bench.train.fit`` then hands its ``select`` the fit's training split (and
only that) once, before the optimizer is built. ``apply`` alone still gives a model that trains.
With ``count_from_data`` (SPT) the selection also decides which tensors exist and so the trainable
count (bounded by the method's budget hyperparameter); ``apply`` then builds a documented,
deterministic placeholder selection, and a fit records the count its selection gave.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

import torch.nn as nn

from .errors import NotMergeable, Unsupported
from .families import layout_of

_REGISTRY: dict[str, "Method"] = {}


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``. ``PluginError`` (one
    line naming where ``cls`` comes from) for a class without the interface's required parts or a
    name registered already, naming both sources (``methods.plugins.check_class``)."""
    from .plugins import check_class  # here: plugins imports this module

    _REGISTRY[cls.name] = check_class(cls)
    return cls


def names() -> list[str]:
    """Sorted names of every registered method."""
    return sorted(_REGISTRY)


def get(name: str) -> "Method":
    """The registered method called ``name``; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(names())}") from None


def decays_backbone(name: str) -> bool:
    """Whether method ``name`` applies weight decay to any trainable tensor besides the head
    (if not, the weight decay acts on the head alone)."""
    return get(name).decays_backbone


GROUPS = ("core", "baselines", "peft", "vision")  # `--methods core` etc.; `all` is every group


def group(name: str) -> list[str]:
    """Sorted names of the registered methods of group ``name`` ('all': every method)."""
    if name != "all" and name not in GROUPS:
        raise ValueError(f"unknown method group {name!r}; known: all, {', '.join(GROUPS)}")
    return [m for m in names() if name == "all" or _REGISTRY[m].group == name]


def supports(name: str, family: str) -> bool:
    """Whether method ``name`` runs on backbones of ``family`` ("vit", "swin")."""
    families = get(name).families
    return families is None or family in families


def count_trainable(model: nn.Module, exclude_head: bool = True) -> int:
    """Number of trainable parameters, without the classifier head by default."""
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if p.requires_grad and not (exclude_head and n.startswith("head."))
    )


class Method:
    """Base class. Subclasses set ``name``, ``defaults``, ``mergeable`` and implement
    ``_adapt`` (and ``_merge`` when mergeable), ``search_space`` and ``_check``."""

    name: str = ""
    mergeable: bool = True
    defaults: dict[str, Any] = {}
    help: dict[str, str] = {}  # hyperparameter -> one-line description
    decays_backbone: bool = True  # does ``decays`` hold for any trainable tensor besides the head?
    group: str = "core"  # core (the design's seven), baselines (the reviewers' rows), peft (HF peft tuners)
    #                      or vision (issue 31: adapter_plus, dtl, gps, spt_lora, spt_adapter)
    families: tuple[str, ...] | None = None  # backbone families it runs on (None: every family)
    identity_at_init: bool = False  # with its defaults the adapted model equals the backbone at init (bench.testing checks it)
    trains_backbone: str = ""  # regex of the backbone tensors the method trains itself (full ".*", bitfit ".*bias.*")
    unsupported_why: str = ""  # said when asked to run on another family
    # torch.compile: a method whose model cannot be compiled sets ``compiles = False`` and says why in
    # one line (``compile_why``); its fits then run eagerly under --compile and their runs record it
    # (``bench.train.compiles``, the ``compile`` tag). tests/test_gpu_path.py compiles every other one.
    compiles: bool = True
    compile_why: str = ""
    # Where the method comes from, one line each, for the generated methods page
    # (docs/reference/methods.md, `python -m bench.reference_docs`; a test requires paper and code
    # of every built-in method). The module docstring keeps the details.
    paper: str = ""  # the paper: authors, short name, venue and year ("Hu et al., LoRA, ICLR 2022")
    code: str = ""  # the official code it follows: "owner/repo@commit path" (the commit where it is
    #                 cited), "huggingface/peft <version> (<tuner class>)" for peft's tuners
    deviations: str = ""  # where it differs from that code, and why ("" for nowhere)

    # -- hyperparameters -------------------------------------------------------------------
    def resolve(self, **hparams: Any) -> dict[str, Any]:
        """Defaults overlaid with ``hparams``, validated; ValueError on unknown or impossible values."""
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"{self.name}: unknown hyperparameter(s) {', '.join(unknown)}; known: {known}")
        hp = {**self.defaults, **hparams}
        self._check(hp)
        return hp

    def _check(self, hp: dict[str, Any]) -> None:
        """Raise ValueError naming the valid range when a value is impossible."""

    def search_space(self, trial) -> dict[str, Any]:
        """Method-specific hyperparameters suggested from an ``optuna.Trial``."""
        return {}

    # hyperparameters that are a width inside the backbone (a rank, a bottleneck): at most the
    # narrowest block width of the backbone (``check_fits``)
    width_bounded: tuple[str, ...] = ()

    def check_fits(self, hp: dict[str, Any], layout) -> None:
        """Raise ValueError naming the bound when a size in ``hp`` (resolved) cannot fit a backbone
        of ``layout`` (``methods.families.Layout``): by default a ``width_bounded`` hyperparameter
        above its narrowest block width. ``apply`` asks it, and `bench run`/`tune` ask it for the
        --hparam values before anything is built or written (``--dry-run`` included)."""
        from ._checks import check_int

        for key in self.width_bounded:
            check_int(self.name, hp, key, 1, layout.min_width, why="at most the backbone's width")

    # -- optimizer -------------------------------------------------------------------------
    decays_all: bool = False  # the official optimizer decays every tensor the method trains (see ``decays``)

    def decays(self, model: nn.Module, name: str, param: nn.Parameter) -> bool:
        """Whether the optimizer applies weight decay to the trainable tensor ``name`` of
        ``model`` (named as in ``model.named_parameters()``). timm's rule by default: not for
        1-d tensors, ``.bias`` names and the model's ``no_weight_decay()`` names. With
        ``decays_all`` (official optimizers with one weight decay for every trainable tensor, biases
        included: VPT's SGD, PETL-ViT's and RepAdapter's AdamW) every tensor but the head's, which
        keeps timm's rule in every method (weight decayed, bias not)."""
        if self.decays_all and not name.startswith("head."):
            return True
        return not (param.ndim <= 1 or name.endswith(".bias") or name in model.no_weight_decay())

    # -- a pass over the training data before training (GPS, SPT) ---------------------------
    # True for methods whose official code chooses what trains from a pass over the training data
    # (GPS's gradient-based selection): ``bench.train.fit`` then calls ``select`` once per fit.
    needs_training_data: bool = False
    # True when ``select`` decides which tensors exist, not only what they stand for (SPT's sensitivity
    # pass: which matrices get a LoRA or adapter, how many single entries train): it may add, replace
    # and remove the method's own modules and tensors, so the trainable count is the selection's,
    # decided by the data and bounded by the method's budget hyperparameter, and may differ between
    # seeds (the same model, data and seed still give the same count). ``apply`` alone builds a
    # documented, deterministic placeholder selection that trains; ``bench methods`` shows its count
    # marked as such; a fit's records hold the count of its model after selection and training.
    count_from_data: bool = False
    # True when ``select`` reads the split in its own order (the official pass uses a
    # ``SequentialSampler``: SPT) rather than in the fit loader's seeded shuffle (GPS's training loader).
    select_in_order: bool = False

    def select(self, model: nn.Module, batches: Iterable, seed: int) -> None:
        """Choose, in place, which parts of ``model`` (as ``apply`` returned it) train, from one pass
        over ``batches``: ``(inputs, labels)`` batches of the fit's TRAINING split, on the model's
        device. ``bench.train.fit`` calls it once per fit (tuning trial or final fit), after moving
        the model to its device and before it builds the optimizer, with the split it trains on and
        nothing else: no validation or test data reaches a selection. ``seed`` is the fit's seed, for
        the pass's own randomness (e.g. augmented views); the same model, batches and seed give the
        same selection. A selection changes no frozen weight. Without ``count_from_data`` it keeps the
        trainable tensors, their shapes and so the trainable count of ``apply`` (the budget): it only
        decides what the trainable tensors stand for (e.g. which weight entries); with it, it rebuilds
        the method's own tensors (new ones on the model's device, in the model's train/eval mode) and
        the count is whatever the selection gives. Only for ``needs_training_data``."""
        raise NotImplementedError(f"{self.name} does not select from training data")

    # -- per-step hooks of the training loop (AdaLoRA) ---------------------------------------
    # For methods whose official training does more than minimise the cross-entropy of the logits:
    # AdaLoRA prunes its ranks after every optimizer step on a schedule that spans the whole fit, and
    # adds an orthogonality regulariser to the loss. ``bench.train.fit`` calls all five hooks for every
    # method (a resumed fit too) and the conformance kit's training step calls the first three; the
    # defaults do nothing (``extra_loss`` None leaves the loss the cross-entropy itself), so a method
    # without them trains exactly as it would without the hooks.
    def begin_fit(self, model: nn.Module, total_steps: int) -> None:
        """Once per fit, after ``select`` and before the optimizer is built or a checkpoint restored:
        ``total_steps`` is the number of optimizer steps the whole fit takes (epochs x steps per
        epoch, the steps a resume skips included), which a schedule over the fit needs (AdaLoRA's
        ``total_step``: where its budget stops shrinking). Resets what a previous fit left behind."""

    def extra_loss(self, model: nn.Module) -> Any:
        """A scalar tensor added to every training step's loss before ``backward`` (AdaLoRA's
        orthogonality regulariser of its singular vectors), or None (the default: nothing added). The
        fit computes it after the forward, outside the compiled step and outside autocast, so it is
        the same fp32 term under ``--compile`` and ``--precision bf16``."""
        return None

    def after_step(self, model: nn.Module, step: int) -> None:
        """After every optimizer step, its gradients still on the tensors: ``step`` counts the fit's
        optimizer steps so far, this one included (1 .. total_steps; a resumed fit goes on counting).
        For updates that are not gradient steps (AdaLoRA's importance scores and rank masking)."""

    def fit_state(self, model: nn.Module) -> dict:
        """What the hooks carry from step to step besides the trainable tensors (AdaLoRA: its
        importance averages and rank pattern), as tensors and plain values: a fit's checkpoint saves
        it after each epoch and ``load_fit_state`` restores it, so a resumed fit continues exactly."""
        return {}

    def load_fit_state(self, model: nn.Module, state: dict) -> None:
        """Restore what ``fit_state`` returned (after ``begin_fit``); ValueError, changing nothing,
        when ``state`` does not belong to this model (the checkpoint is then not used)."""
        if state:
            raise ValueError(f"{self.name} keeps no state between steps, but the checkpoint holds {sorted(state)}")

    # -- adapt / merge ---------------------------------------------------------------------
    def apply(self, model: nn.Module, num_classes: int, **hparams: Any) -> nn.Module:
        """Adapt a copy of ``model``: freeze what the method freezes, insert what it adds and
        put a new trainable ``num_classes`` head on it. The input model is left unchanged."""
        hp = self.resolve(**hparams)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.check_family(model)
        self.check_fits(hp, layout_of(model))  # before the copy: an absurd size allocates nothing
        model = copy.deepcopy(model)
        model.requires_grad_(False)
        # The head first: its init draws the first random numbers after the caller's seed, so it
        # is the same for every method of one seed; the method's own init draws the next ones.
        model.reset_classifier(num_classes)
        self._adapt(model, **hp)
        model.train(model.training)  # inserted modules (dropouts ...) take the model's mode
        model.head.requires_grad_(True)
        model.peft_method = self.name
        model.peft_hparams = hp
        return model

    def check_available(self) -> None:
        """ImportError (one line) when a library the method needs is missing or of an untested
        version; the runner asks before anything is written."""

    def check_family(self, model: nn.Module) -> None:
        """``Unsupported`` unless this method runs on ``model``'s backbone family."""
        family = layout_of(model).family
        if self.families is not None and family not in self.families:
            why = f" ({self.unsupported_why})" if self.unsupported_why else ""
            raise Unsupported(f"{self.name} does not run on {family} backbones{why}; it runs on: "
                              f"{', '.join(self.families)}")

    def _adapt(self, model: nn.Module, **hp: Any) -> None:
        raise NotImplementedError

    def merge(self, model: nn.Module) -> nn.Module:
        """A plain timm model (same class, same state_dict keys as the un-adapted model) whose
        logits equal ``model``'s. Works on a copy; NotMergeable for methods that cannot."""
        if not self.mergeable:
            raise NotMergeable(f"{self.name} adds modules that cannot be merged into the backbone")
        model = copy.deepcopy(model)
        self._merge(model)
        for attr in ("peft_method", "peft_hparams"):
            if hasattr(model, attr):
                delattr(model, attr)
        return model

    def _merge(self, model: nn.Module) -> None:
        """Fold the method's additions into ``model`` in place (it is already a copy)."""
