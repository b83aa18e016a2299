"""Methods from outside the project (plugins), and the check every registered class passes.

A plugin is a module that registers one or more ``Method`` subclasses with ``@methods.register``.
It is found in three ways:

- an entry point of group ``peft_bench.methods`` in an installed distribution
  (``[project.entry-points."peft_bench.methods"] mlp_scale = "mlp_scale.method"``): loaded when the
  registry (``methods``) is first imported. An entry point may also name the class itself
  (``"mlp_scale.method:MLPScale"``), which is then registered if its module did not;
- ``--plugin PATH_OR_MODULE`` (``bench run``, ``tune``, ``methods``, ``check-method``, ``perf``): a
  ``.py`` file or an importable module name, repeatable; ``load`` also adds it to
  ``BENCH_PLUGINS``, so worker processes the command starts load it too;
- the environment variable ``BENCH_PLUGINS``: ``os.pathsep``-separated files or module names, read
  when the registry is first imported (workers started by a scheduler set it).

Each registered method remembers where it came from: ``provenance(name)`` is part of the
experiment identity (``bench.identity.Experiment.plugin``), so a changed plugin is a new
experiment: ``"<distribution>==<version>"`` for an entry point, ``"file:sha256:<hex>"`` (the file's
bytes) for a file, ``"module:<name>:sha256:<hex>"`` (the module's file) for a module name; ``None``
for a built-in method.

Anything wrong with a plugin is one ``PluginError`` line naming the plugin (``bench`` prints it and
exits with code 2 before writing anything): a plugin that fails to import (with its error), a
method name that clashes with a built-in or another plugin (naming both), a class without the
parts of the interface (``check_class``), a plugin that registers nothing, an entry point to a
module that does not exist. A failed plugin leaves nothing registered.

This module imports nothing of ``bench``: the registry stays usable without the harness.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .base import _REGISTRY, GROUPS, Method

GROUP = "peft_bench.methods"  # the entry-point group
ENV = "BENCH_PLUGINS"  # os.pathsep-separated files or module names
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # a method name: in --methods lists, --hparam NAME.KEY=V, study names
RESERVED = ("all", *GROUPS)  # the method sets of --methods


class PluginError(ValueError):
    """A plugin method that cannot be loaded or registered; the message is one line that names the
    plugin and what is wrong. ``bench`` reports it like a user error (one line, exit code 2)."""


@dataclass(frozen=True)
class Source:
    """One loaded plugin: ``label`` names it in messages, ``provenance`` goes into the experiment
    identity, ``key`` tells two loads of the same plugin apart from two plugins."""

    label: str
    provenance: str
    key: str


_BY_METHOD: dict[str, Source] = {}  # method name -> the plugin that registered it
_LOADED: dict[str, Source] = {}  # Source.key -> the plugin, once loaded
_loading: Source | None = None  # the plugin being imported (``register`` names it in its errors)


# --------------------------------------------------------------------------- queries
def provenance(name: str) -> str | None:
    """What identifies the code of method ``name``: ``"dist==version"``, ``"file:sha256:..."`` or
    ``"module:NAME:sha256:..."`` for a plugin method, ``None`` for a built-in one."""
    src = _BY_METHOD.get(name)
    return src.provenance if src else None


def source(name: str) -> str:
    """Where registered method ``name`` comes from, for messages: "built-in method 'lora'
    (methods.lora)" or "method 'x' of plugin /path/x.py"."""
    src = _BY_METHOD.get(name)
    if src is not None:
        return f"method {name!r} of {src.label}"
    module = type(_REGISTRY[name]).__module__ if name in _REGISTRY else "?"
    if module.partition(".")[0] == "methods":
        return f"built-in method {name!r} ({module})"
    return f"method {name!r} of {module}"


def loaded() -> list[Source]:
    """The plugins loaded in this process, in load order."""
    return list(_LOADED.values())


# --------------------------------------------------------------------------- the interface check
def _first_line(exc: BaseException, limit: int = 200) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def _where(cls) -> str:
    """Who is registering ``cls``: the plugin being loaded, else the class's module."""
    if _loading is not None:
        return _loading.label
    return f"module {getattr(cls, '__module__', '?')}"


def check_class(cls) -> Method:
    """The instance ``register`` stores for ``cls``, once ``cls`` has the parts of the interface;
    ``PluginError`` naming the first missing or wrong part otherwise: a ``Method`` subclass with a
    ``name`` (letters, digits, ``_``, ``-``; not a method set) not registered yet, ``_adapt``
    implemented, ``defaults`` a dict of str keys, ``help`` a dict of some of those keys,
    ``mergeable`` a bool, ``families`` None or a tuple of family names, ``group`` one of
    ``GROUPS``; it instantiates without arguments and its defaults pass its own checks."""
    where = _where(cls)

    def fail(message: str):
        raise PluginError(f"{where}: {message}")

    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        fail(f"@register takes a subclass of methods.Method, not {cls!r}")
    label = cls.__qualname__
    name = cls.name
    if not isinstance(name, str) or not name:
        fail(f"method class {label} has no `name` (set name = \"...\", the name --methods takes)")
    if not NAME.fullmatch(name) or name in RESERVED:
        fail(f"method class {label}: name {name!r} is not usable (letters, digits, '_' and '-', starting with "
             f"a letter or '_'; not one of the sets {', '.join(RESERVED)})")
    if name in _REGISTRY:
        new = f"method {name!r} of {where}" if _loading is not None else f"method {name!r} ({cls.__module__}.{label})"
        raise PluginError(f"{new} clashes with {source(name)}: the name is registered twice; rename one of them")
    if cls._adapt is Method._adapt:
        fail(f"method {name!r} ({label}) does not implement _adapt(self, model, **hparams)")
    if not isinstance(cls.defaults, dict) or not all(isinstance(k, str) for k in cls.defaults):
        fail(f"method {name!r}: `defaults` must be a dict of hyperparameter name -> default value, "
             f"not {type(cls.defaults).__name__}")
    if not isinstance(cls.help, dict) or set(cls.help) - set(cls.defaults):
        extra = sorted(set(cls.help) - set(cls.defaults)) if isinstance(cls.help, dict) else None
        fail(f"method {name!r}: `help` must be a dict of one-line descriptions of hyperparameters in `defaults`"
             + (f" (not in defaults: {', '.join(extra)})" if extra else f", not {type(cls.help).__name__}"))
    if not isinstance(cls.mergeable, bool):
        fail(f"method {name!r}: `mergeable` must be True or False, not {cls.mergeable!r}")
    families = cls.families
    if families is not None and not (isinstance(families, tuple) and families
                                     and all(isinstance(f, str) for f in families)):
        fail(f"method {name!r}: `families` must be None (every family) or a tuple of family names such as "
             f"(\"vit\", \"swin\"), not {families!r}")
    if cls.group not in GROUPS:
        fail(f"method {name!r}: `group` must be one of {', '.join(GROUPS)}, not {cls.group!r}")
    for attr in ("search_space", "_check", "_merge"):
        if not callable(getattr(cls, attr, None)):
            fail(f"method {name!r}: `{attr}` must be a method")
    try:
        instance = cls()
    except Exception as exc:
        fail(f"method {name!r}: {label}() failed: {type(exc).__name__}: {_first_line(exc)}")
    try:
        instance.resolve()
    except Exception as exc:
        fail(f"method {name!r}: its defaults fail its own checks: {type(exc).__name__}: {_first_line(exc)}")
    return instance


# --------------------------------------------------------------------------- loading
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(src: Source, do: Callable[[], None], *, expect_new: bool, modules: tuple[str, ...] = ()) -> list[str]:
    """Run ``do`` (an import) as plugin ``src``: the method names it registered, recorded as
    ``src``'s; on any failure nothing it registered stays (nor the ``modules`` it imported) and
    the error is one ``PluginError`` line."""
    global _loading
    before = dict(_REGISTRY)
    previous, _loading = _loading, src

    def undo():
        for name in set(_REGISTRY) - set(before):
            del _REGISTRY[name]
        for module in modules:
            sys.modules.pop(module, None)

    try:
        do()
    except PluginError:  # raised by register() (clash, interface): it names the plugin already
        undo()
        raise
    except Exception as exc:
        undo()
        raise PluginError(f"{src.label} failed to import: {type(exc).__name__}: {_first_line(exc)}") from exc
    finally:
        _loading = previous
    new = sorted(set(_REGISTRY) - set(before))
    if not new and expect_new:
        undo()
        raise PluginError(f"{src.label} registers no method (decorate a methods.Method subclass with "
                          f"@methods.register)")
    for name in new:
        _BY_METHOD[name] = src
    _LOADED[src.key] = src
    return new


def _entry_points():
    return importlib.metadata.entry_points(group=GROUP)


def load_entry_points() -> list[str]:
    """Import every entry point of group ``peft_bench.methods`` not loaded yet; the method names
    they registered."""
    from .base import register

    names: list[str] = []
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        dist_name, version = (dist.name, dist.version) if dist is not None else ("?", "?")
        key = f"entry-point:{dist_name}:{ep.name}"
        if key in _LOADED:
            continue
        src = Source(label=f"plugin entry point {ep.name} = {ep.value} (distribution {dist_name} {version})",
                     provenance=f"{dist_name}=={version}" if dist is not None else f"entry-point:{ep.value}",
                     key=key)
        module = ep.value.partition(":")[0].strip()

        def do(ep=ep):
            obj = ep.load()
            if inspect.isclass(obj) and issubclass(obj, Method) and not any(
                    type(m) is obj for m in _REGISTRY.values()):
                register(obj)

        names += _load(src, do, expect_new=module not in sys.modules)
    return names


def _is_file(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or "/" in spec


def load(spec: str, export: bool = True) -> list[str]:
    """Load plugin ``spec`` (a ``.py`` file or an importable module name) unless it is loaded
    already; the method names it registered. ``export``: also add it to ``BENCH_PLUGINS``, so
    that processes this one starts load it too."""
    spec = spec.strip()
    if not spec:
        raise PluginError("--plugin needs a .py file or a module name")
    if _is_file(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"plugin {spec}: no such file")
        key, item = f"file:{path}", str(path)
        if key not in _LOADED:
            try:
                digest = _sha256(path)
            except OSError as exc:
                raise PluginError(f"plugin {path}: cannot read it ({exc.strerror or exc})") from None
            stem = re.sub(r"\W", "_", path.stem)
            module = f"bench_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
            src = Source(label=f"plugin {path}", provenance=f"file:sha256:{digest}", key=key)

            def do():
                loader_spec = importlib.util.spec_from_file_location(module, path)
                mod = importlib.util.module_from_spec(loader_spec)
                sys.modules[module] = mod  # before it runs: dataclasses and pickling look it up
                loader_spec.loader.exec_module(mod)

            names = _load(src, do, expect_new=True, modules=(module,))
        else:
            names = []
    else:
        if not all(part.isidentifier() for part in spec.split(".")):
            raise PluginError(f"plugin {spec!r} is neither a .py file nor a module name")
        key, item = f"module:{spec}", spec
        names = []
        if key not in _LOADED:
            label = f"plugin module {spec}"
            already = spec in sys.modules
            try:
                found = importlib.util.find_spec(spec)
            except Exception as exc:  # a parent package that fails to import
                raise PluginError(f"{label} failed to import: {type(exc).__name__}: {_first_line(exc)}") from exc
            if found is None:
                raise PluginError(f"{label} failed to import: ModuleNotFoundError: No module named {spec!r}")
            origin = Path(found.origin) if found.origin and found.origin not in ("built-in", "frozen") else None
            digest = _sha256(origin) if origin is not None and origin.is_file() else "unknown"
            src = Source(label=label, provenance=f"module:{spec}:sha256:{digest}", key=key)
            names = _load(src, lambda: importlib.import_module(spec), expect_new=not already,
                          modules=() if already else (spec,))
    if export:
        items = [i for i in os.environ.get(ENV, "").split(os.pathsep) if i]
        if item not in items:
            os.environ[ENV] = os.pathsep.join([*items, item])
    return names


def load_env() -> list[str]:
    """Load the plugins ``BENCH_PLUGINS`` names (files or modules, ``os.pathsep``-separated)."""
    return [n for item in os.environ.get(ENV, "").split(os.pathsep) if item.strip() for n in load(item, export=False)]


def load_installed() -> list[str]:
    """What the registry loads when it is first imported: the entry points, then ``BENCH_PLUGINS``."""
    return load_entry_points() + load_env()
