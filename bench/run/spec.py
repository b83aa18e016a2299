"""What a `bench run` or `bench tune` will do, checked before anything is written: the request
(the flags as plain values), the run spec built from it once (suite, tasks, backbone, methods,
seeds, protocol, stores), and the parsing of each flag. A user error is one ``UserError`` line
(exit 2).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import methods

from .. import backbones, tracking
from ..catalog import Suite, Task, load_suite
from ..errors import UserError
from ..recipes import Recipe, Setting, load_recipe
from ..identity import Experiment
from ..device import resolve_device, resolve_precision


@dataclass(frozen=True)
class RunRequest:
    """What `bench run` / `bench tune` was asked, as plain values (None: the suite's default).

    The command builds it once from its flags; ``build_spec`` turns it into a ``RunSpec``; local
    workers and cluster jobs receive it as JSON (``to_json``) and build the same spec from it,
    never re-parsing a command line."""

    suite: str = "demo"
    methods: str = "all"  # names and sets, as given to --methods
    tasks: str | None = None
    backbone: str | None = None
    seeds: str | None = None
    trials: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    data_root: str | None = None
    pretrained: str | None = None
    device: str = "auto"
    out: str = "runs"
    storage: str | None = None
    tracking_uri: str | None = None
    workers: int = 0
    compile: bool = False
    drop_path_rate: float | None = None
    hparam: tuple[str, ...] = ()
    force: bool = False
    recipe: str | None = None
    precision: str | None = None  # --precision fp32|bf16; None: bf16 on GPU, fp32 on CPU

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> "RunRequest":
        """The request of a parsed command line (flags a command does not have keep their default)."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values.update(overrides)
        values["hparam"] = tuple(values.get("hparam") or ())
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunRequest":
        values = json.loads(text)
        values["hparam"] = tuple(values.get("hparam") or ())
        return cls(**values)


@dataclass
class RunSpec:
    suite: Suite
    tasks: list[Task]
    backbone: str  # a name of ``bench.backbones.BACKBONES``: --backbone, else the suite's
    methods: list[str]
    seeds: list[int]
    trials: int
    epochs: int
    warmup_epochs: int
    batch_size: int
    data_root: str | None
    pretrained: str | None
    random_init: bool
    device: str
    out: Path
    storage: str | None
    tracking_uri: str
    workers: int = 0
    compile: bool = False
    force: bool = False
    fixed: dict[str, dict] = field(default_factory=dict)  # method -> hyperparameters fixed by --hparam
    drop_path_rate: float = 0.0  # --drop-path-rate: timm's stochastic depth for every fit (tuned runs)
    recipe: Recipe | None = None  # --recipe: no tuning, the paper's settings per (method, task)
    epochs_override: int | None = None  # --epochs given with --recipe: a smoke run of that many epochs
    request: RunRequest | None = None  # what it was built from: what workers receive
    precision: str = "fp32"  # --precision: the autocast every fit trains and evaluates in (part of the identity)

    def experiment(self, method: str, weights_sha256: str) -> Experiment:
        """The experiment ``method``'s runs belong to (``bench.identity``). Under a recipe, its name
        (and a smoke run's --epochs) stands for the settings it fixes per task."""
        recipe = self.recipe is not None
        return Experiment(
            suite=self.suite.name, backbone=self.backbone, weights_sha256=weights_sha256, method=method,
            fixed=tuple(self.fixed.get(method, {}).items()), recipe=self.recipe.name if recipe else "",
            epochs=self.epochs_override if recipe else self.epochs,
            warmup_epochs=None if recipe else self.warmup_epochs, batch_size=None if recipe else self.batch_size,
            trials=self.trials, drop_path_rate=None if recipe else self.drop_path_rate,
            precision=self.precision, device_kind=self.device.split(":")[0],
            plugin=methods.plugins.provenance(method) or "")

    def setting(self, method: str, task: Task) -> Setting:
        """The recipe's settings of (method, task); under --epochs N, N epochs and no cool-down."""
        setting = self.recipe.setting(self.suite.name, task.name, method)
        if self.epochs_override:
            n = self.epochs_override
            setting = Setting({**setting.train, "epochs": n, "cooldown_epochs": 0,
                               "warmup_epochs": min(setting.train["warmup_epochs"], n - 1),
                               "restart_epochs": min(setting.train["restart_epochs"], n)}, setting.hparams)
        return setting

    def final_epochs(self, method: str, task: Task) -> int:
        """Epochs one final fit of (method, task) trains: the recipe's cosine and cool-down, or --epochs."""
        if self.recipe is None:
            return self.epochs
        return self.setting(method, task).epochs_trained


MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; torch refuses seeds of 2**64 and above


def parse_int_list(text: str | None, what: str, lo: int | None = None, hi: int | None = None) -> list[int] | None:
    """Comma-separated distinct integers (in [lo, hi] when given), or None for no flag."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise UserError(f"{what} must list distinct integers, got {text!r}")
    if any((lo is not None and v < lo) or (hi is not None and v > hi) for v in values):
        bounds = f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"
        raise UserError(f"{what} must be integers {bounds}, got {text!r}")
    return values


METHOD_SETS = ("all", *methods.GROUPS)


def parse_methods(text: str, family: str | None = None) -> list[str]:
    """``--methods``: comma-separated method names and sets: 'all' (every registered method),
    'core' (the design's seven), 'baselines', 'peft', 'vision'. A set keeps the methods that run on backbones
    of ``family`` (when given); a name is checked to exist."""
    chosen = []
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise UserError(f"--methods is empty; use {', '.join(METHOD_SETS)} or names from: "
                        + ", ".join(methods.names()))
    for token in tokens:
        if token in METHOD_SETS:
            chosen += [m for m in methods.group(token) if family is None or methods.supports(m, family)]
            continue
        try:
            methods.get(token)
        except ValueError as exc:
            raise UserError(f"{exc}; or a set: {', '.join(METHOD_SETS)}") from None
        chosen.append(token)
    return list(dict.fromkeys(chosen))


def parse_value(text: str):
    """A --hparam value as the hyperparameter takes it: an int, else a float, else the string;
    the method's own check then says whether that hyperparameter takes it (``lora.alpha=0.5``
    is a float although alpha's default is the int 8; ``lora.rank=0.5`` is refused by rank's
    check, not by the type of its default)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_fixed(items: list[str], method_names: list[str], backbone: str | None = None) -> dict[str, dict]:
    """``--hparam vpt.mode=shallow`` -> {"vpt": {"mode": "shallow"}}, each value checked by its method
    and, given the ``backbone``'s name, against its sizes (``Method.check_fits``: a rank above its
    width ...), on its shapes alone (built on the meta device: nothing allocated)."""
    fixed: dict[str, dict] = {}
    for item in items:
        target, eq, text = item.partition("=")
        method, dot, name = target.partition(".")
        if not (eq and dot and name):
            raise UserError(f"--hparam takes METHOD.NAME=VALUE, got {item!r}")
        if method not in method_names:
            raise UserError(f"--hparam {item!r}: method {method!r} is not among --methods "
                            f"({', '.join(method_names)})")
        fixed.setdefault(method, {})[name] = parse_value(text)
    layout = None
    if fixed and backbone:
        from methods.families import layout_of

        layout = layout_of(backbones.create_meta(backbone))
    for method, hp in fixed.items():
        try:
            resolved = methods.get(method).resolve(**hp)
            if layout is not None:
                methods.get(method).check_fits(resolved, layout)
        except ValueError as exc:
            raise UserError(f"--hparam: {exc}") from None
    return fixed


def positive(value: int | None, what: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{what} must be >= 1, got {value}")


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output folder {path} is not writable: {exc.strerror or exc}") from None
    return path.resolve()


def check_methods_run_on(name: str, method_names: list[str]) -> backbones.Backbone:
    """The backbone ``name`` if every chosen method runs on its family; else one ``UserError``
    line (before anything is built or written). `bench run`, `tune` and `perf` ask it."""
    spec = backbones.get(name)
    for method in method_names:
        if not methods.supports(method, spec.family):
            why = methods.get(method).unsupported_why
            raise UserError(f"method {method} does not run on {name} ({spec.family} family)"
                            f"{': ' + why if why else ''}; drop it from --methods")
    return spec


def check_backbone(name: str, suite: Suite, method_names: list[str]) -> backbones.Backbone:
    """The backbone ``name`` if the suite's images fit it and every chosen method runs on its
    family; else one ``UserError`` line (before anything is built or written)."""
    spec = check_methods_run_on(name, method_names)
    size = int(suite.protocol["image_size"])
    if size != spec.image_size:
        raise UserError(f"backbone {name} runs on {spec.image_size}px images; suite {suite.name}'s are {size}px")
    return spec


def check_recipe(request: RunRequest, suite: Suite, tasks: list[Task], method_names: list[str]) -> Recipe | None:
    """--recipe NAME: the recipe, if it has settings for the suite, every chosen method and task;
    flags that a recipe decides itself (--trials, --batch-size, --hparam) are refused."""
    if not request.recipe:
        return None
    recipe = load_recipe(request.recipe)
    for flag, value in (("--trials", request.trials), ("--batch-size", request.batch_size),
                        ("--hparam", request.hparam), ("--drop-path-rate", request.drop_path_rate)):
        if value:
            raise UserError(f"--recipe {request.recipe} sets the hyperparameters and batch size of every fit and "
                            f"runs no trials: drop {flag}")
    for method in method_names:
        for task in tasks:
            recipe.setting(suite.name, task.name, method)  # UserError: no such suite or method
    return recipe


def chosen_methods(request: RunRequest, family: str) -> list[str]:
    """``--methods`` on a backbone of ``family``; under a recipe, a set keeps the methods the
    recipe has settings for."""
    names = parse_methods(request.methods, family)
    if request.recipe and request.methods.strip() in METHOD_SETS:
        names = [m for m in names if m in load_recipe(request.recipe).methods]
    return names


def build_spec(request: RunRequest) -> RunSpec:
    """The one place a request becomes a spec: every flag validated before anything is written."""
    suite = load_suite(request.suite)
    tasks = suite.select(request.tasks)
    backbone = request.backbone or suite.backbone
    method_names = chosen_methods(request, backbones.get(backbone).family)
    check_backbone(backbone, suite, method_names)
    for method in method_names:
        try:
            methods.get(method).check_available()
        except ImportError as exc:  # e.g. peft missing or of another series: one line, before anything is written
            raise UserError(str(exc)) from None
    for value, what in ((request.trials, "--trials"), (request.epochs, "--epochs"), (request.batch_size, "--batch-size")):
        positive(value, what)
    if request.workers < 0:
        raise UserError(f"--workers must be >= 0, got {request.workers}")
    seeds = parse_int_list(request.seeds, "--seeds", 0, MAX_SEED) or list(suite.protocol["seeds"])
    if suite.needs_data_root and not request.data_root:
        raise UserError(f"suite {suite.name} reads data from disk: pass --data-root DIR")
    if request.data_root and not Path(request.data_root).is_dir():
        raise UserError(f"--data-root {request.data_root} does not exist or is not a folder")
    pretrained, random_init = request.pretrained, request.pretrained == tracking.RANDOM_INIT
    if random_init:
        pretrained = None  # asked for explicitly: a randomly initialised backbone
    elif pretrained is None and backbones.get(backbone).default_weights is None:
        raise UserError(f"suite {suite.name} on {backbone} needs its pretrained weights: pass --pretrained FILE "
                        "(or --pretrained none to train a randomly initialised backbone on purpose); "
                        f"{backbone} reads {backbones.get(backbone).weights}")
    elif pretrained and not Path(pretrained).is_file():
        raise UserError(f"pretrained weights file not found: {pretrained}")
    recipe = check_recipe(request, suite, tasks, method_names)
    drop_path_rate = request.drop_path_rate or 0.0
    if not 0.0 <= drop_path_rate < 1.0:
        raise UserError(f"--drop-path-rate must be in [0, 1), got {drop_path_rate}")
    device = resolve_device(request.device)
    epochs = request.epochs or suite.protocol["epochs"]
    out = Path(request.out)
    tracking_uri = request.tracking_uri or tracking.default_tracking_uri(out)
    if not request.storage:  # the default Optuna storage's URL names --out: one no URL carries is refused now
        from .study import default_storage_url

        default_storage_url(out)
    if "://" not in tracking_uri and not tracking_uri.startswith("databricks"):
        raise UserError(f"malformed --tracking-uri {tracking_uri!r}; expected e.g. sqlite:///path/mlflow.db "
                        "or http://host:5000")
    return RunSpec(
        suite=suite, tasks=tasks, backbone=backbone, methods=method_names, seeds=seeds,
        trials=0 if recipe else request.trials or suite.protocol["trials"], epochs=epochs,
        warmup_epochs=min(suite.protocol["warmup_epochs"], max(epochs - 1, 0)),
        batch_size=request.batch_size or suite.protocol["batch_size"], data_root=request.data_root,
        pretrained=pretrained, random_init=random_init, device=device, out=out, storage=request.storage,
        tracking_uri=tracking_uri, workers=request.workers, compile=request.compile, force=request.force,
        precision=resolve_precision(request.precision, device),
        fixed=parse_fixed(list(request.hparam), method_names, backbone), drop_path_rate=drop_path_rate,
        recipe=recipe, epochs_override=request.epochs if recipe else None, request=request)


def build_backbone(spec: RunSpec):
    """The run's backbone: from ``--pretrained FILE``, the demo's committed checkpoint, or
    randomly initialised when the user asked for it (``--pretrained none``)."""
    if spec.random_init:
        return backbones.get(spec.backbone).build(0)
    return backbones.create_backbone(spec.backbone, spec.pretrained)


def weights_file(spec: RunSpec) -> Path | None:
    """The weights file the backbone was loaded from (None: random initialisation)."""
    if spec.random_init:
        return None
    return Path(spec.pretrained) if spec.pretrained else backbones.get(spec.backbone).default_weights
