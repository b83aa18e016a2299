"""Every use of Hugging Face peft, in one small adapter module (issue 26).

The rest of the project (``methods/peft_tuners.py``, ``bench perf``) reaches peft only through the
functions here, so what we rely on is listed in one place and ``tests/test_peft_tuners.py`` checks
each item against the installed peft (a release that changes one fails there, loudly, not in a run):

public API (peft's documented names)
  - ``peft.PeftType``: the tuner types of the release (``peft_types``);
  - the config classes, exported as ``peft.<Name>Config``, and the tuner model classes, exported as
    ``peft.<Name>Model`` (the same name with ``Model`` for ``Config``; ``tuner_class``);
  - ``peft.inject_adapter_in_model(config, model, adapter_name)``: injects the tuner layers into a
    plain ``nn.Module`` in place (no ``PeftModel`` wrapper);
  - ``peft.tuners.tuners_utils.BaseTunerLayer``: the class of every injected layer, with
    ``merge(safe_merge=...)`` and ``get_base_layer()``.

internals (no public API does it; each is one line below)
  - tuners with state shared by all their layers (``<Name>Model.uses_shared_state``: VeRA's
    projections, VB-LoRA's vector bank ...) are refused by ``inject_adapter_in_model``; they are
    injected by instantiating their tuner model class on the model (what ``get_peft_model`` does
    inside its ``PeftModel``), whose object is then dropped: every layer holds references to the
    shared tensors;
  - injection leaves the tuner's configs on the model as an attribute ``peft_config``; merge removes
    it, so that the merged model is a plain timm model (``forget_config``);
  - AdaLoRA (``adalora_*`` below): its rank allocator lives on its tuner model object
    (``AdaLoraModel.rankallocator``), so that object is kept, outside the module tree
    (``model.__dict__["peft_tuner"]``: its ``.model`` is the model itself), and its documented
    ``update_and_allocate(global_step)`` called after each step (``ranknum`` kept frozen on the meta
    device too: ``adalora_frozen_ranknum``); the allocator's state (its
    ``ipt``, ``exp_avg_ipt``, ``exp_avg_unc`` dicts and the config's ``rank_pattern``) is read and
    restored for checkpoints; and the orthogonality regulariser that ``AdaLoraModel.forward`` adds
    only to a transformers output's ``.loss`` is computed here by the same formula (``adalora_orth_reg``);
  - BOFT's CUDA kernel: peft JIT-compiles it (``torch.utils.cpp_extension.load``, minutes, into the
    user's cache) the first time a BOFT layer is built, and where that fails it silently sets the
    butterfly factor to 1. ``no_boft_kernel`` tells peft the kernel is unavailable before it tries
    (``peft.tuners.boft.layer._FBD_CUDA = False``): our BOFT uses butterfly factor 1, whose pure
    PyTorch path computes the same block-diagonal rotation on every machine, and no compiler runs.

peft is imported lazily (``import methods`` and ``bench --help`` stay fast) and only in the tested
range pinned in pyproject.toml; outside it, or without peft, ``import_peft`` raises one ImportError
line saying what to install.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .surgery import replace_module

PEFT_REQUIREMENT = "peft>=0.21,<0.22"  # the tested range; pyproject.toml pins the same
PEFT_SERIES = (0, 21)  # the (major, minor) series that range allows
ADAPTER = "default"  # peft's adapter name; its tensors are called e.g. ``lora_A.default.weight``
TUNER = "peft_tuner"  # where a kept tuner object lives on the model (in its __dict__: not a submodule)


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


def peft_types(peft) -> list[str]:
    """The names of every tuner type of the installed peft (``peft.PeftType``), in peft's order."""
    return [t.name for t in peft.PeftType]


def config_class(peft, name: str) -> type:
    """peft's exported config class ``name`` (e.g. ``"OFTConfig"``)."""
    return getattr(peft, name)


def tuner_class(peft, config) -> type:
    """The tuner model class of ``config`` (``OFTConfig`` -> ``peft.OFTModel``)."""
    return getattr(peft, type(config).__name__.removesuffix("Config") + "Model")


def _base_tuner_layer() -> type | None:
    import sys

    utils = sys.modules.get("peft.tuners.tuners_utils")
    return None if utils is None else utils.BaseTunerLayer


def is_tuner_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer peft injected (``BaseTunerLayer``); False without peft loaded."""
    cls = _base_tuner_layer()
    return cls is not None and isinstance(module, cls)


def tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, layer) of every peft layer in ``model`` (outermost only: a layer's base is not listed)."""
    found = []
    for name, module in model.named_modules():
        if name and is_tuner_layer(module) and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


def inject(peft, model: nn.Module, config, keep_tuner: bool = False) -> list[str]:
    """Inject ``config``'s tuner layers into ``model`` in place; the sorted paths of the modules peft
    wrapped. ``keep_tuner``: keep peft's tuner model object on ``model`` (AdaLoRA's rank allocator)."""
    cls = tuner_class(peft, config)
    if cls.uses_shared_state or keep_tuner:  # refused by inject_adapter_in_model: the tuner class itself (see above)
        tuner = cls(model, config, adapter_name=ADAPTER)
        if keep_tuner:  # not setattr: a Module attribute would make the model its own grandchild
            model.__dict__[TUNER] = tuner
    else:
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return sorted(name for name, _ in tuner_layers(model))


def forget_config(model: nn.Module) -> None:
    """Remove the ``peft_config`` attribute injection put on ``model`` (and a kept tuner object)."""
    model.__dict__.pop("peft_config", None)
    model.__dict__.pop(TUNER, None)


def merge_and_unload(model: nn.Module) -> None:
    """peft's own merge, in place: each tuner layer folds its update into its base layer
    (``merge(safe_merge=True)``: NaN/inf in a merged weight is an error, not a model) and is replaced
    by that base layer; the ``peft_config`` attribute goes too."""
    for name, layer in tuner_layers(model):
        layer.merge(safe_merge=True)
        replace_module(model, name, layer.get_base_layer())
    forget_config(model)


def no_boft_kernel(peft) -> None:
    """Make peft take BOFT's pure PyTorch path without trying to JIT-compile its CUDA kernel (see above)."""
    import importlib

    importlib.import_module("peft.tuners.boft.layer")._FBD_CUDA = False


# -- AdaLoRA: the rank allocator of the kept tuner object ---------------------------------------

def _adalora(model: nn.Module):
    tuner = model.__dict__.get(TUNER)
    if tuner is None or not hasattr(tuner, "rankallocator"):
        raise RuntimeError("not an AdaLoRA model built by apply (no AdaLoraModel with a rank allocator on it)")
    return tuner


def adalora_frozen_ranknum(model: nn.Module) -> None:
    """Keep every AdaLoRA layer's ``ranknum`` (its init_r, a constant) frozen: on the meta device
    peft's move of the adapter to the base layer's device re-wraps it as a new, trainable Parameter
    (on a real device the move returns the frozen one), which ``bench methods`` would count."""
    for name, p in model.named_parameters():
        if f".ranknum.{ADAPTER}" in name:
            p.requires_grad_(False)


def adalora_config(model: nn.Module):
    """The ``AdaLoraConfig`` the model's rank allocator follows (``total_step``, ``tinit`` ...)."""
    return _adalora(model).peft_config[ADAPTER]


def adalora_schedule(model: nn.Module, total_step: int, tinit: int, tfinal: int) -> None:
    """Set the budget schedule of a new fit (peft's config fields, which its allocator reads) and
    forget what a previous fit left: importance scores and rank pattern."""
    tuner = _adalora(model)
    config = tuner.peft_config[ADAPTER]
    config.total_step, config.tinit, config.tfinal, config.rank_pattern = total_step, tinit, tfinal, None
    tuner.rankallocator.reset_ipt()


def adalora_update(model: nn.Module, global_step: int) -> None:
    """peft's ``AdaLoraModel.update_and_allocate(global_step)``: importance scores from the
    gradients, then the budget's masking of the singular values (``lora_E``) as scheduled."""
    _adalora(model).update_and_allocate(global_step)


def adalora_orth_reg(model: nn.Module) -> torch.Tensor:
    """``orth_reg_weight`` x the mean over every ``lora_A`` and ``lora_B`` of ||P P^T - I||_F
    (A: P P^T; B: P^T P): the term ``AdaLoraModel.forward`` adds to a transformers output's loss,
    by the same formula in the same order (a test compares the two)."""
    weight = adalora_config(model).orth_reg_weight
    total, count = 0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and ADAPTER in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            total += torch.norm(cov - torch.eye(*cov.size(), out=torch.empty_like(cov)), p="fro")
            count += 1
    return weight * (total / count)


_SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # the allocator's dicts: parameter name -> tensor


def adalora_state(model: nn.Module) -> dict:
    """The allocator's state between steps, as tensors and plain values (on the CPU)."""
    tuner = _adalora(model)
    allocator = tuner.rankallocator
    state = {key: {n: t.detach().cpu() for n, t in getattr(allocator, key).items()} for key in _SCORES}
    state["rank_pattern"] = tuner.peft_config[ADAPTER].rank_pattern
    return state


def load_adalora_state(model: nn.Module, state: dict) -> None:
    """Restore ``adalora_state``; ValueError, changing nothing, when it does not fit ``model``."""
    tuner = _adalora(model)
    params = dict(model.named_parameters())
    if set(state) != {*_SCORES, "rank_pattern"}:
        raise ValueError(f"AdaLoRA state with keys {sorted(state)}")
    for key in _SCORES:
        scores = state[key]
        if not isinstance(scores, dict) or any(n not in params or not isinstance(t, torch.Tensor)
                                               or t.shape != params[n].shape for n, t in scores.items()):
            raise ValueError(f"AdaLoRA {key} of other tensors")
    pattern = state["rank_pattern"]
    if pattern is not None and not (isinstance(pattern, dict) and all(
            n in params and isinstance(r, list) and len(r) == params[n].shape[0] for n, r in pattern.items())):
        raise ValueError("an AdaLoRA rank pattern of other tensors")
    for key in _SCORES:
        setattr(tuner.rankallocator, key, {n: t.to(params[n].device) for n, t in state[key].items()})
    tuner.peft_config[ADAPTER].rank_pattern = pattern
