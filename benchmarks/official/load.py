"""Load files of another project's checkout by path, as modules, without installing it.

The comparison scripts of this package import official code from a checkout the user gives
(``--repo DIR``); nothing of it is copied into this repository.

- ``require(repo, relpaths, expected)``: ``repo`` resolved, or one line on stderr and exit 2 when a
  file the script needs is not there (``repo`` is not a checkout of ``expected``);
- ``load_module(repo, relpath, name, path=..., absent=...)``: execute one file as module ``name``;
  ``path``: folders of the checkout on ``sys.path`` while it runs (for its flat ``from layer import``
  style imports; what they load is taken out of ``sys.modules`` again); ``absent``: top-level packages
  the file imports but the script does not use: when they are not installed, stand-ins let the file
  import, and any use of a name from them raises (``module.__absent__`` lists what was stood in);
  ``replace``: {module: {name: object}}, modules the file imports, which it sees while it runs as
  the installed module with those names replaced or added (or, when not installed, as a module with
  only those names); after it ran, ``sys.modules`` holds what it held before (e.g. timm's
  ``register_model`` as the identity, so that loading a model file does not re-register timm's
  model names; a name an old timm API had in a module that is gone; a logging helper of the
  checkout; ``module.__replaced__`` lists them); failures raise ``LoadError`` (one line);
- ``exec_source(repo, relpath, namespace, names=..., branch=...)``: execute parts of one file of the
  checkout (read with ``ast``, run from the file itself, never copied) in ``namespace``, a dict the
  caller fills with what those parts use, for code that cannot run as a module or sits inside a
  function: ``names``, top-level definitions (``def``, ``class``, an assignment) by name, in the
  file's order; ``branch=(function, test, taken)``: the statements of one branch of the ``if`` in
  top-level ``function`` (at any depth) whose condition reads ``test`` (as ``ast.unparse`` writes
  it; the first such ``if`` in the file's order), its body when ``taken``, else its ``else``;
  tracebacks point at the file's own lines; a part not found, or an error while it runs, raises
  ``LoadError``; returns ``namespace``;
- ``commit_of(repo)``: the checkout's ``HEAD`` commit, or ``None`` (not a git checkout, no git).
"""
from __future__ import annotations

import ast
import importlib.abc
import importlib.util
import subprocess
import sys
import types
from pathlib import Path
from typing import Iterable, Mapping, NoReturn, Sequence


class LoadError(RuntimeError):
    """A file of the checkout could not be executed (an import it needs, an error in it)."""


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def require(repo: Path | str, relpaths: Iterable[str], expected: str) -> Path:
    repo = Path(repo).expanduser().resolve()
    if not repo.is_dir():
        fail(f"{repo} is not a directory (expected a checkout of {expected})")
    missing = [p for p in relpaths if not (repo / p).is_file()]
    if missing:
        fail(f"{repo} is not a checkout of {expected}: no {', '.join(missing)}")
    return repo


def commit_of(repo: Path | str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


class _Missing:
    """What a name imported from an absent package is: any use raises."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise LoadError(f"{self._name} is not installed (stood in while its file was loaded)")


class _StubModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Missing(f"{self.__name__}.{attr}")


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: answers only for ``roots`` no other finder found."""

    def __init__(self, roots: Sequence[str]):
        self.roots, self.used = set(roots), []

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] not in self.roots:
            return None
        self.used.append(fullname)
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


_NOT_LOADED = object()


def _replacement(module: str, names: Mapping[str, object]) -> types.ModuleType:
    try:
        installed = importlib.import_module(module)
    except ImportError:
        installed = None
    replaced = types.ModuleType(module)
    if installed is not None:
        replaced.__dict__.update(installed.__dict__)
    replaced.__dict__.update(names)
    return replaced


def load_module(repo: Path | str, relpath: str, name: str, *, path: Sequence[str] = (),
                absent: Sequence[str] = (), replace: Mapping[str, Mapping[str, object]] | None = None
                ) -> types.ModuleType:
    repo = Path(repo)
    file = repo / relpath
    if not file.is_file():
        fail(f"{repo} has no {relpath}")
    folders = [str((repo / p).resolve()) for p in path]
    replace = dict(replace or {})
    replacements = {m: _replacement(m, names) for m, names in replace.items()}  # before the checkout's folders
    before = set(sys.modules)
    held = {m: sys.modules.get(m, _NOT_LOADED) for m in replacements}
    sys.modules.update(replacements)
    stubs = _Absent(absent)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path[:0] = folders
    sys.meta_path.append(stubs)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the official file's own failure, reported in one line
        del sys.modules[name]
        raise LoadError(f"{relpath}: {type(exc).__name__}: {exc}") from exc
    finally:
        for m, previous in held.items():
            if previous is _NOT_LOADED:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = previous
        sys.meta_path.remove(stubs)
        for folder in folders:
            sys.path.remove(folder)
        for added in set(sys.modules) - before - {name}:  # the flat imports and the stand-ins
            mod = sys.modules[added]
            if isinstance(mod, _StubModule) or any(str(getattr(mod, "__file__", "") or "").startswith(f)
                                                   for f in folders):
                del sys.modules[added]
    module.__absent__ = sorted(stubs.used)
    module.__replaced__ = sorted(f"{m}.{n}" for m, names in replace.items() for n in names)
    return module


def _defines(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def exec_source(repo: Path | str, relpath: str, namespace: dict, *, names: Sequence[str] = (),
                branch: tuple[str, str, bool] | None = None) -> dict:
    repo = Path(repo)
    file = repo / relpath
    if not file.is_file():
        fail(f"{repo} has no {relpath}")
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    chosen: list[ast.stmt] = []
    if names:
        wanted, found = set(names), set()
        for node in tree.body:
            if _defines(node) & wanted:
                chosen.append(node)
                found |= _defines(node) & wanted
        if wanted - found:
            raise LoadError(f"{relpath}: no top-level definition of {', '.join(sorted(wanted - found))}")
    if branch is not None:
        function, test, taken = branch
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == function]
        if not defs:
            raise LoadError(f"{relpath}: no top-level function {function}")
        ifs = sorted((n for n in ast.walk(defs[0]) if isinstance(n, ast.If) and ast.unparse(n.test) == test),
                     key=lambda n: (n.lineno, n.col_offset))
        if not ifs:
            raise LoadError(f"{relpath}: no `if {test}:` in {function}")
        body = ifs[0].body if taken else ifs[0].orelse
        if not body:
            raise LoadError(f"{relpath}: the `if {test}:` in {function} has no {'body' if taken else 'else'}")
        chosen += body
    code = compile(ast.Module(body=chosen, type_ignores=[]), str(file), "exec")
    try:
        exec(code, namespace)
    except Exception as exc:  # the official code's own failure, reported in one line
        raise LoadError(f"{relpath}: {type(exc).__name__}: {exc}") from exc
    return namespace
