"""Paper recipes: the per-(method, task) settings an official repository trained with, as data.

A recipe is one TOML file under ``bench/catalog_data/recipes/`` (package data, like the suite
catalog), named after its source (``rlrr-paper``), with the repository and commit it was
transcribed from. ``bench run --recipe NAME`` skips tuning: these settings go straight to the
final fits. Layout of a file:

- top level: ``name``, ``title``, ``repository``, ``commit``, ``methods`` (the registered methods
  it has settings for), ``notes`` (what still differs from the source; shown in the report);
- ``[<suite>]``: training settings shared by the suite's tasks, and ``source_files``;
- ``[<suite>.methods.<method>]``: that method's hyperparameters (checked by the method) and any
  training setting that differs for it;
- ``[<suite>.tasks.<task>]``: training settings of one task (override the above).

Training settings (``TRAIN_KEYS``): ``lr``, ``weight_decay``, ``batch_size``, ``epochs`` (the
cosine's length), ``warmup_epochs`` (inside the cosine, as timm's ``create_scheduler``),
``warmup_lr``, ``min_lr``, ``cooldown_epochs`` (at ``min_lr`` after the cosine),
``restart_epochs`` (> 0: cosine warm restarts every that many epochs, torch's
``CosineAnnealingWarmRestarts``), ``lr_per_epoch`` (the lr changes once per epoch, as the sources
step their schedulers), ``drop_path_rate`` (timm's stochastic depth: a whole residual branch
dropped per sample), ``residual_dropout`` (element-wise ``nn.Dropout`` on each block's two residual
branches, what RLRR's code calls ``drop_path``; both rise linearly to their rate at the last block
and a setting has at most one of them), ``flip`` (random horizontal flip on VTAB's resize),
``zero_head`` (the new head starts at zero).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
import methods
from methods._checks import check_float, check_int

from .catalog import Suite, load_suite
from .errors import UserError

RECIPES_DIR: Traversable = resources.files("bench") / "catalog_data" / "recipes"

# setting -> (type, low, high, low open, high open); a bool has no range
TRAIN_KEYS: dict[str, tuple] = {
    "lr": (float, 0.0, 1.0, True, False),
    "weight_decay": (float, 0.0, 1.0, False, False),
    "batch_size": (int, 1, 4096, False, False),
    "epochs": (int, 1, 10_000, False, False),
    "warmup_epochs": (int, 0, 10_000, False, False),
    "warmup_lr": (float, 0.0, 1.0, False, False),
    "min_lr": (float, 0.0, 1.0, False, False),
    "cooldown_epochs": (int, 0, 10_000, False, False),
    "restart_epochs": (int, 0, 10_000, False, False),
    "lr_per_epoch": (bool,),
    "drop_path_rate": (float, 0.0, 1.0, False, True),
    "residual_dropout": (float, 0.0, 1.0, False, True),
    "flip": (bool,),
    "zero_head": (bool,),
}
REQUIRED = ("lr", "weight_decay", "batch_size", "epochs")
DEFAULTS = {"warmup_epochs": 0, "warmup_lr": None, "min_lr": 0.0, "cooldown_epochs": 0, "restart_epochs": 0,
            "lr_per_epoch": False, "drop_path_rate": 0.0, "residual_dropout": 0.0, "flip": False,
            "zero_head": False}
_SUITE_META = ("source_files", "tasks", "methods")


@dataclass(frozen=True)
class Setting:
    """What one final fit of (method, task) uses under a recipe."""
    train: dict  # every TRAIN_KEYS entry (defaults filled in)
    hparams: dict  # the method's hyperparameters (the recipe's, over the method's defaults)

    @property
    def epochs_trained(self) -> int:
        """Epochs a fit trains: the cosine's and the cool-down after it."""
        return self.train["epochs"] + self.train["cooldown_epochs"]


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    repository: str
    commit: str
    methods: tuple[str, ...]
    notes: tuple[str, ...]
    suites: dict = field(compare=False)  # suite name -> its raw table

    def setting(self, suite: str, task: str, method: str) -> Setting:
        """The settings of one (suite, task, method); UserError when the recipe has none."""
        if suite not in self.suites:
            raise UserError(f"recipe {self.name} has no settings for suite {suite}; it has: "
                            f"{', '.join(self.suites)}")
        if method not in self.methods:
            raise UserError(f"recipe {self.name} has no settings for method {method}; it has: "
                            f"{', '.join(self.methods)}")
        table = self.suites[suite]
        method_table = table.get("methods", {}).get(method, {})
        task_table = table.get("tasks", {}).get(task, {})
        train = {**DEFAULTS, **_train_part(table), **_train_part(method_table), **_train_part(task_table)}
        hparams = {k: v for k, v in method_table.items() if k not in TRAIN_KEYS}
        return Setting(train, hparams)


def _train_part(table: dict) -> dict:
    return {k: v for k, v in table.items() if k in TRAIN_KEYS}


def recipe_names() -> list[str]:
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(p.name[:-len(".toml")] for p in RECIPES_DIR.iterdir() if p.name.endswith(".toml"))


@lru_cache(maxsize=None)
def load_recipe(name: str) -> Recipe:
    """The recipe ``name``, checked (see ``check``); UserError listing the known ones otherwise."""
    if not name or "/" in name or "\\" in name or name not in recipe_names():
        raise UserError(f"unknown recipe {name!r}; known: {', '.join(recipe_names())}")
    raw = tomllib.loads((RECIPES_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    suites = {k: v for k, v in raw.items() if isinstance(v, dict)}
    recipe = Recipe(name=raw["name"], title=raw.get("title", raw["name"]), repository=raw["repository"],
                    commit=raw["commit"], methods=tuple(raw["methods"]), notes=tuple(raw.get("notes", ())),
                    suites=suites)
    check(recipe)
    return recipe


def check(recipe: Recipe) -> None:
    """ValueError naming the file, place and valid range of the first bad entry: unknown suites,
    tasks, methods or keys, values out of range, hyperparameters a method refuses, a (method,
    task) that lacks a required setting."""
    where = f"recipe {recipe.name}"
    for method in recipe.methods:
        if method not in methods.names():
            raise ValueError(f"{where}: unknown method {method!r}")
    for suite_name, table in recipe.suites.items():
        try:
            suite = load_suite(suite_name)
        except UserError as exc:
            raise ValueError(f"{where}: {exc}") from None
        _check_table(f"{where} [{suite_name}]", table, allowed=set(TRAIN_KEYS) | set(_SUITE_META))
        for task, t in table.get("tasks", {}).items():
            if task not in suite.tasks:
                raise ValueError(f"{where} [{suite_name}.tasks]: unknown task {task!r}")
            _check_table(f"{where} [{suite_name}.tasks.{task}]", t, allowed=set(TRAIN_KEYS))
        for method, m in table.get("methods", {}).items():
            if method not in recipe.methods:
                raise ValueError(f"{where} [{suite_name}.methods]: {method!r} is not among its methods")
            _check_table(f"{where} [{suite_name}.methods.{method}]", _train_part(m), allowed=set(TRAIN_KEYS))
        for method in recipe.methods:
            for task in suite.tasks:
                _check_setting(f"{where} [{suite_name}] {method} on {task}", suite,
                               recipe.setting(suite_name, task, method), method)


def _check_table(where: str, table: dict, allowed: set[str]) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r}")
        if key in TRAIN_KEYS:
            _check_value(where, key, value)


def _check_value(where: str, key: str, value) -> None:
    """The methods' own validators (``methods._checks``), with the place in the file as the name."""
    kind, *bounds = TRAIN_KEYS[key]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
    elif kind is int:
        check_int(where, {key: value}, key, *bounds[:2])
    else:
        lo, hi, lo_open, hi_open = bounds
        check_float(where, {key: value}, key, lo, hi, lo_open=lo_open, hi_open=hi_open)


def _check_setting(where: str, suite: Suite, setting: Setting, method: str) -> None:
    train = setting.train
    missing = [k for k in REQUIRED if k not in train]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)}")
    if train["warmup_epochs"] >= train["epochs"] and train["warmup_epochs"]:
        raise ValueError(f"{where}: warmup_epochs {train['warmup_epochs']} must be below epochs {train['epochs']}")
    if train["min_lr"] >= train["lr"]:
        raise ValueError(f"{where}: min_lr {train['min_lr']} must be below lr {train['lr']}")
    if train["drop_path_rate"] and train["residual_dropout"]:
        raise ValueError(f"{where}: drop_path_rate and residual_dropout both act on the blocks' "
                         f"drop_path1/drop_path2: set one")
    if train["flip"] and suite.transform.get("train") != "resize":
        raise ValueError(f"{where}: flip applies to a plain resize; suite {suite.name} trains with "
                         f"{suite.transform.get('train')!r}")
    try:
        methods.get(method).resolve(**setting.hparams)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
