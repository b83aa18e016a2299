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

import torch.nn as nn

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


def inject(peft, model: nn.Module, config) -> list[str]:
    """Inject ``config``'s tuner layers into ``model`` in place; the sorted paths of the modules peft
    wrapped."""
    cls = tuner_class(peft, config)
    if cls.uses_shared_state:  # refused by inject_adapter_in_model: the tuner class itself (see above)
        cls(model, config, adapter_name=ADAPTER)
    else:
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    return sorted(name for name, _ in tuner_layers(model))


def forget_config(model: nn.Module) -> None:
    """Remove the ``peft_config`` attribute injection put on ``model``."""
    model.__dict__.pop("peft_config", None)


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
