"""The suite catalog: reads ``bench/catalog_data/<suite>.toml`` (data, not code) into small dataclasses.

The TOML files (and the reference numbers under ``catalog_data/reference``) are package data: they
ship inside the installed distribution and are read through ``importlib.resources``, so a wheel
install finds them wherever it lives (``datasets/README.md`` is the human-facing description).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable

from .errors import UserError

CATALOG_DIR: Traversable = resources.files("bench") / "catalog_data"


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
    protocol: dict  # the suite's protocol defaults ([protocol]: epochs, warm-up, batch, seeds, trials, image size)
    transform: dict
    tasks: dict[str, Task]
    # the weights file the published rows were measured with, and its known SHA-256 digests: only
    # runs on those weights get the paper column and Δ (``bench.report``)
    paper_weights: str = ""
    paper_weights_sha256: tuple[str, ...] = ()

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            raise UserError(f"unknown task {name!r} for suite {self.name}; known: {', '.join(self.tasks)}")
        return self.tasks[name]

    def select(self, names: str | list[str] | None) -> list[Task]:
        """Tasks named in a comma-separated string or list (all tasks when empty), catalog order."""
        if not names:
            return list(self.tasks.values())
        if isinstance(names, str):
            text, names = names, [n.strip() for n in names.split(",") if n.strip()]
            if not names:  # ",,": no task named, not every task and not none
                raise UserError(f"--tasks {text!r} names no task; give names from: {', '.join(self.tasks)}")
        wanted = {self.task(n).name for n in names}
        return [t for t in self.tasks.values() if t.name in wanted]


def suite_names() -> list[str]:
    if not CATALOG_DIR.is_dir():
        return []
    return sorted(p.name[:-len(".toml")] for p in CATALOG_DIR.iterdir() if p.name.endswith(".toml"))


@lru_cache(maxsize=None)
def load_suite(name: str) -> Suite:
    """The suite ``name`` from the catalog; UserError listing the known suites otherwise."""
    if not name or "/" in name or "\\" in name or name not in suite_names():
        raise UserError(f"unknown suite {name!r}; known: {', '.join(suite_names())}")
    raw = tomllib.loads((CATALOG_DIR / f"{name}.toml").read_text(encoding="utf-8"))
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
        protocol=dict(raw["protocol"]),
        transform=dict(raw.get("transform", {})),
        tasks=tasks,
        paper_weights=raw.get("paper_weights", ""),
        paper_weights_sha256=tuple(raw.get("paper_weights_sha256", ())),
    )
