"""The shape of the code (issue 26): no import cycle between modules, every package says in its
``__init__`` docstring what lives there, and no module grows past about 400 lines unless it is
one job that reads top to bottom (listed here with why)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods")
MAX_LINES = 400
ONE_JOB = {  # module -> why it may be longer
    "bench/testing.py": "the conformance kit: one check per function, in the order it runs them",
    "methods/peft_tuners.py": "the peft bridge and its table: one row per tuner",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for root in PACKAGES:
        for path in (ROOT / root).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports when it is imported (top level: an import inside a
    function runs later and cannot close a cycle at import time)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(next((c for c in (f"{target}.{alias.name}", target) if c in mods), ""))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in mods)
    return found - {"", name}


def test_no_import_cycle():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [node, dep]))
            elif dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    (tmp_path / "bench").mkdir()
    (tmp_path / "methods").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "methods" / "__init__.py").write_text("")
    (tmp_path / "bench" / "a.py").write_text("from .b import x\n")
    (tmp_path / "bench" / "b.py").write_text("from bench import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="bench.a -> bench.b -> bench.a|bench.b -> bench.a -> bench.b"):
        test_no_import_cycle()


@pytest.mark.parametrize("package", sorted({str(p.parent.relative_to(ROOT)) for root in PACKAGES
                                            for p in (ROOT / root).rglob("__init__.py")}))
def test_every_package_says_what_lives_there(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc and len(doc) > 40, f"{package}/__init__.py needs a docstring that says what lives there"


def test_modules_stay_small():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and str(p.relative_to(ROOT)) not in ONE_JOB}
    assert not long, f"modules over {MAX_LINES} lines (split them by job, or say in ONE_JOB why not): {long}"
