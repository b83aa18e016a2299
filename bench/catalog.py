"""The suite catalog: reads ``datasets/<suite>.toml`` (data, not code) into small dataclasses."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import UserError

CATALOG_DIR = Path(__file__).resolve().parent.parent / "datasets"


@dataclass(frozen=True)
class Task:
    name: str
    num_classes: int
    group: str = ""
    aliases: tuple[str, ...] = ()
    options: dict = field(default_factory=dict, compare=False)  # everything else in the task's table


@dataclass(frozen=True)
class Splits:
    tune_train: str
    tune_val: str
    final_train: str
    test: str
    all: tuple[str, ...]


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    backbone: str
    needs_data_root: bool
    groups: tuple[str, ...]
    splits: Splits
    recipe: dict
    transform: dict
    tasks: dict[str, Task]

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            raise UserError(f"unknown task {name!r} for suite {self.name}; known: {', '.join(self.tasks)}")
        return self.tasks[name]

    def select(self, names: str | list[str] | None) -> list[Task]:
        """Tasks named in a comma-separated string or list (all tasks when empty), catalog order."""
        if not names:
            return list(self.tasks.values())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        wanted = {self.task(n).name for n in names}
        return [t for t in self.tasks.values() if t.name in wanted]


def suite_names() -> list[str]:
    return sorted(p.stem for p in CATALOG_DIR.glob("*.toml"))


@lru_cache(maxsize=None)
def load_suite(name: str) -> Suite:
    """The suite ``name`` from the catalog; UserError listing the known suites otherwise."""
    path = CATALOG_DIR / f"{name}.toml"
    if not name or "/" in name or not path.is_file():
        raise UserError(f"unknown suite {name!r}; known: {', '.join(suite_names())}")
    raw = tomllib.loads(path.read_text())
    tasks = {}
    for key, spec in raw["tasks"].items():
        spec = dict(spec)
        tasks[key] = Task(
            name=key,
            num_classes=int(spec.pop("num_classes")),
            group=spec.pop("group", ""),
            aliases=tuple(spec.pop("aliases", ())),
            options=spec,
        )
    s = raw["splits"]
    return Suite(
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        backbone=raw["backbone"],
        needs_data_root=bool(raw.get("needs_data_root", False)),
        groups=tuple(raw.get("groups", ())),
        splits=Splits(s["tune_train"], s["tune_val"], s["final_train"], s["test"], tuple(s["all"])),
        recipe=dict(raw["recipe"]),
        transform=dict(raw.get("transform", {})),
        tasks=tasks,
    )
