"""The registry of PEFT methods: ``names()``, ``get(name)``, ``NotMergeable``, ``decays_backbone(name)``,
``supports(name, family)``. Where each backbone family keeps its layers: ``methods.families``.

Every module in this package is imported here, so a method registered with ``@register`` in a
new module is available everywhere without touching any other file. Then the methods of other
distributions (entry points of group ``peft_bench.methods``) and of ``BENCH_PLUGINS`` are loaded:
``methods.plugins`` (``PluginError``, ``provenance(name)``).
"""
import importlib
import pkgutil

from .errors import NotMergeable, Unsupported  # noqa: F401
from . import plugins  # noqa: F401  (imports .base)
from .plugins import PluginError, provenance  # noqa: F401
from .base import (  # noqa: F401
    GROUPS,
    Method,
    count_trainable,
    decays_backbone,
    get,
    group,
    names,
    register,
    supports,
)

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and not _info.ispkg:
        importlib.import_module(f"{__name__}.{_info.name}")

plugins.load_installed()  # after the built-ins: a plugin that reuses a built-in name is refused
