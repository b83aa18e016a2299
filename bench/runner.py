"""`bench run` and `bench tune`: the protocol, in code.

For every (method, task): an Optuna study trains on the tuning split (train800 / FGVC train) and
scores on the validation split; then the best hyperparameters are refitted on the final training
split (train800val200 / train+val) for each seed and the LAST-epoch test accuracy is reported.
The test split is opened only inside a final fit (``SplitGuard``). Every trial and final fit is
an MLflow run; finished ones are skipped on a rerun, and claims in the Optuna storage make each
final fit happen exactly once across concurrent workers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna

import methods

from . import backbones, tracking
from .catalog import Suite, Task, load_suite
from .errors import UserError
from .recipes import Recipe, Setting, load_recipe
from .train import Diverged, PaperSchedule, TrainConfig, fit, head_only, resolve_device, seed_everything
from .tune import (COMMON_DEFAULTS, Claims, best_params, common_search_space, enqueue_defaults, open_storage,
                   open_study, owner_alive, owner_id, study_name)


class ProtocolError(RuntimeError):
    """Code tried to read the test split outside a final fit: a bug, never a user error."""


# --------------------------------------------------------------------------- the run's spec
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

    def protocol(self) -> dict:
        """The protocol part of an experiment's identity (see ``Runner.experiment``). Under a recipe
        its name (and a smoke run's --epochs) stands for every setting, which the run key holds."""
        if self.recipe is not None:
            return {"suite": self.suite.name, "recipe": self.recipe.name, "epochs_override": self.epochs_override}
        protocol = {"suite": self.suite.name, "epochs": self.epochs, "warmup_epochs": self.warmup_epochs,
                    "batch_size": self.batch_size, "trials": self.trials}
        if self.drop_path_rate:  # only when set, so that the identities of earlier runs stay the same
            protocol["drop_path_rate"] = self.drop_path_rate
        return protocol

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


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise UserError(f"{what} must list distinct integers, got {text!r}")
    return values


METHOD_SETS = ("all", *methods.GROUPS)


def parse_methods(text: str, family: str | None = None) -> list[str]:
    """``--methods``: comma-separated method names and sets: 'all' (every registered method),
    'core' (the design's seven), 'baselines', 'peft'. A set keeps the methods that run on backbones
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


def parse_fixed(items: list[str], method_names: list[str]) -> dict[str, dict]:
    """``--hparam vpt.mode=shallow`` -> {"vpt": {"mode": "shallow"}}, each value checked by its method."""
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
    for method, hp in fixed.items():
        try:
            methods.get(method).resolve(**hp)
        except ValueError as exc:
            raise UserError(f"--hparam: {exc}") from None
    return fixed


def _positive(value: int | None, what: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{what} must be >= 1, got {value}")


def _writable_dir(path: Path) -> Path:
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
    size = int(suite.recipe["image_size"])
    if size != spec.image_size:
        raise UserError(f"backbone {name} runs on {spec.image_size}px images; suite {suite.name}'s are {size}px")
    return spec


def check_recipe(args: argparse.Namespace, suite: Suite, tasks: list[Task], method_names: list[str]) -> Recipe | None:
    """--recipe NAME: the recipe, if it has settings for the suite, every chosen method and task;
    flags that a recipe decides itself (--trials, --batch-size, --hparam) are refused."""
    name = getattr(args, "recipe", None)
    if not name:
        return None
    recipe = load_recipe(name)
    for flag, value in (("--trials", args.trials), ("--batch-size", args.batch_size), ("--hparam", args.hparam),
                        ("--drop-path-rate", getattr(args, "drop_path_rate", None))):
        if value:
            raise UserError(f"--recipe {name} sets the hyperparameters and batch size of every fit and runs no "
                            f"trials: drop {flag}")
    for method in method_names:
        for task in tasks:
            recipe.setting(suite.name, task.name, method)  # UserError: no such suite or method
    return recipe


def spec_from_args(args: argparse.Namespace, method_names: list[str]) -> RunSpec:
    """Validate every flag before anything is written."""
    suite = load_suite(args.suite)
    tasks = suite.select(args.tasks)
    backbone = getattr(args, "backbone", None) or suite.backbone  # callers without the flag: the suite's
    check_backbone(backbone, suite, method_names)
    for method in method_names:
        try:
            methods.get(method).check_available()
        except ImportError as exc:  # e.g. peft missing or of another series: one line, before anything is written
            raise UserError(str(exc)) from None
    for value, what in ((args.trials, "--trials"), (args.epochs, "--epochs"), (args.batch_size, "--batch-size")):
        _positive(value, what)
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    seeds = parse_int_list(args.seeds, "--seeds") or list(suite.recipe["seeds"])
    if suite.needs_data_root and not args.data_root:
        raise UserError(f"suite {suite.name} reads data from disk: pass --data-root DIR")
    if args.data_root and not Path(args.data_root).is_dir():
        raise UserError(f"--data-root {args.data_root} does not exist or is not a folder")
    pretrained, random_init = args.pretrained, args.pretrained == tracking.RANDOM_INIT
    if random_init:
        pretrained = None  # asked for explicitly: a randomly initialised backbone
    elif pretrained is None and backbones.get(backbone).default_weights is None:
        raise UserError(f"suite {suite.name} on {backbone} needs its pretrained weights: pass --pretrained FILE "
                        "(or --pretrained none to train a randomly initialised backbone on purpose); "
                        f"{backbone} reads {backbones.get(backbone).weights}")
    elif pretrained and not Path(pretrained).is_file():
        raise UserError(f"pretrained weights file not found: {pretrained}")
    recipe = check_recipe(args, suite, tasks, method_names)
    drop_path_rate = getattr(args, "drop_path_rate", None) or 0.0
    if not 0.0 <= drop_path_rate < 1.0:
        raise UserError(f"--drop-path-rate must be in [0, 1), got {drop_path_rate}")
    device = resolve_device(args.device)
    epochs = args.epochs or suite.recipe["epochs"]
    out = Path(args.out)
    tracking_uri = args.tracking_uri or tracking.default_tracking_uri(out)
    if "://" not in tracking_uri and not tracking_uri.startswith("databricks"):
        raise UserError(f"malformed --tracking-uri {tracking_uri!r}; expected e.g. sqlite:///path/mlflow.db "
                        "or http://host:5000")
    return RunSpec(
        suite=suite, tasks=tasks, backbone=backbone, methods=method_names, seeds=seeds,
        trials=0 if recipe else args.trials or suite.recipe["trials"], epochs=epochs,
        warmup_epochs=min(suite.recipe["warmup_epochs"], max(epochs - 1, 0)),
        batch_size=args.batch_size or suite.recipe["batch_size"], data_root=args.data_root,
        pretrained=pretrained, random_init=random_init, device=device, out=out, storage=args.storage,
        tracking_uri=tracking_uri, workers=args.workers, compile=args.compile, force=args.force,
        fixed=parse_fixed(args.hparam, method_names), drop_path_rate=drop_path_rate, recipe=recipe,
        epochs_override=args.epochs if recipe else None)


def _per_epoch(metrics: dict) -> dict:
    """Per-epoch metrics to log; the eval accuracy is logged under its split's name instead."""
    return {k: v for k, v in metrics.items() if k != "eval_acc"}


# --------------------------------------------------------------------------- data access guard
class SplitGuard:
    """Opens splits for the runner and refuses the test split outside a final fit."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.phase = "tune"
        self.cache_dir = str(spec.out / "cache")

    def open(self, task: str, split: str, train: bool = False, flip: bool = False):
        from .data import open_split

        if split == self.spec.suite.splits.test and self.phase != "final":
            raise ProtocolError(f"the test split of {task} was requested during {self.phase}")
        backbone = backbones.get(self.spec.backbone)  # images normalised as its weights expect
        return open_split(self.spec.suite, task, split, data_root=self.spec.data_root, train=train,
                          cache_dir=self.cache_dir, mean=backbone.mean, std=backbone.std, flip=flip)


# --------------------------------------------------------------------------- the runner
def open_stores(spec: RunSpec):
    """(out dir, MLflow client, experiment id, Optuna storage). If a store cannot be opened, an
    output folder that this call created is removed again: a failed start leaves nothing behind."""
    import shutil

    created = not spec.out.exists()
    out = _writable_dir(spec.out)
    try:
        storage = open_storage(spec.storage, out)
        client = tracking.connect(spec.tracking_uri)
        exp_id = tracking.experiment_id(client, spec.suite.name, out / "artifacts")
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out, client, exp_id, storage


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


def study_suite(spec: RunSpec) -> str:
    """The suite part of the run's Optuna study names: the suite's name on its own backbone (the
    names of every earlier run), ``suite@backbone`` on another, so that a study tuned on one
    backbone never hands its trials or its best hyperparameters to another."""
    return spec.suite.name if spec.backbone == spec.suite.backbone else f"{spec.suite.name}@{spec.backbone}"


def study_variant(spec: RunSpec, method: str) -> dict:
    """What sets a study apart from the method's default one: its --hparam values and a
    --drop-path-rate (hyperparameters tuned without drop-path are not the best with it)."""
    variant = dict(spec.fixed.get(method, {}))
    if spec.drop_path_rate:
        variant["drop_path_rate"] = spec.drop_path_rate
    return variant


class Runner:
    """Holds what one `bench run` shares: backbone, stores, provenance."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.backbone = build_backbone(spec)
        self.out, self.client, self.exp_id, self.storage = open_stores(spec)
        self.claims = Claims(self.storage)
        self.guard = SplitGuard(spec)
        weights = weights_file(spec)
        self.provenance = {
            "backbone": spec.backbone,
            "weights_file": str(weights) if weights else "random-init",
            "weights_sha256": backbones.file_sha256(weights) if weights else tracking.RANDOM_INIT,
            "git_commit": tracking.git_commit(),
            "device": spec.device,
            **tracking.package_versions(),
        }
        self._data_hashes: dict[str, str] = {}
        self._force_done: set[str] = set()
        self._augment: dict[str, bool] = {}

    # -- helpers -----------------------------------------------------------------------------
    def data_hash(self, task: str) -> str:
        if task not in self._data_hashes:
            from .data import manifest_hash

            self._data_hashes[task] = manifest_hash(self.spec.suite, task, self.spec.data_root)
        return self._data_hashes[task]

    def _config(self, params: dict, seed: int, desc: str, checkpoint: str | None = None) -> TrainConfig:
        s = self.spec
        return TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=params["lr"],
                           weight_decay=params["weight_decay"], warmup_epochs=s.warmup_epochs, seed=seed,
                           device=s.device, workers=s.workers, compile=s.compile, desc=desc,
                           checkpoint=checkpoint, drop_path_rate=s.drop_path_rate)

    def _recipe_config(self, setting: Setting, seed: int, desc: str, checkpoint: str | None) -> TrainConfig:
        """A final fit's training as the recipe's source trained (``bench.recipes``): its lr, weight
        decay, batch, schedule (cosine + cool-down or warm restarts, stepped per epoch), drop-path
        and zero head."""
        t = setting.train
        schedule = PaperSchedule(cosine_epochs=t["epochs"], warmup_epochs=t["warmup_epochs"],
                                 warmup_lr=t["warmup_lr"] or 0.0, min_lr=t["min_lr"],
                                 restart_epochs=t["restart_epochs"], per_epoch=t["lr_per_epoch"])
        s = self.spec
        return TrainConfig(epochs=setting.epochs_trained, batch_size=t["batch_size"], lr=t["lr"],
                           weight_decay=t["weight_decay"], warmup_epochs=t["warmup_epochs"], seed=seed,
                           device=s.device, workers=s.workers, compile=s.compile, desc=desc, checkpoint=checkpoint,
                           paper_schedule=schedule, drop_path_rate=t["drop_path_rate"], zero_head=t["zero_head"])

    def _fit_protocol(self, method: str, task: Task) -> dict:
        """The protocol fields logged with a run (the report reads them): the spec's, or under a
        recipe the recipe's name and what this (method, task) trains with."""
        if self.spec.recipe is None:
            return self.spec.protocol()
        setting = self.spec.setting(method, task)
        return {"suite": self.spec.suite.name, "recipe": self.spec.recipe.name,
                "epochs": setting.epochs_trained, "warmup_epochs": setting.train["warmup_epochs"],
                "batch_size": setting.train["batch_size"], "trials": self.spec.trials}

    def _model(self, method: str, task: Task, method_params: dict, seed: int):
        seed_everything(seed)  # the new head's init depends on the seed only, the same for every method
        return methods.get(method).apply(self.backbone, num_classes=task.num_classes, **method_params)

    def experiment(self, method: str) -> dict:
        """The experiment a method's runs belong to: the protocol, the backbone and its weights,
        and the hyperparameters fixed with --hparam (a variant). One leaderboard cell only ever
        aggregates runs of one experiment (and one data hash); logged as the tag ``experiment``."""
        return {**self.spec.protocol(), "backbone": self.provenance["backbone"],
                "weights_sha256": self.provenance["weights_sha256"], "fixed": self.spec.fixed.get(method, {})}

    def _tags(self, phase: str, method: str, task: Task, seed: int) -> dict:
        return {"phase": phase, "suite": self.spec.suite.name, "method": method, "task": task.name,
                "group": task.group, "seed": seed, "git_commit": self.provenance["git_commit"],
                "owner": owner_id(), tracking.EXPERIMENT_TAG: json.dumps(self.experiment(method), sort_keys=True)}

    def _reap(self, tags: dict) -> None:
        """Mark FAILED the RUNNING runs matching ``tags`` whose worker process is gone."""
        for run in tracking.find_runs(self.client, self.exp_id, tags, statuses=("RUNNING",)):
            if not owner_alive(run.data.tags.get("owner", "")):
                self.client.set_tag(run.info.run_id, "failure_reason", "worker died (found RUNNING on restart)")
                self.client.set_terminated(run.info.run_id, "FAILED")

    def _augments(self, method: str) -> bool:
        """Whether the method trains on the suite's training transform. Not the linear probe: it
        trains on features computed once per split, and features of one random crop reused every
        epoch would pretend to be augmentation, so it reads the eval transform (FGVC: center crop)."""
        if method not in self._augment:
            probe = methods.get(method).apply(self.backbone, num_classes=1,
                                              **self._split_params(self.defaults(method))[1])
            self._augment[method] = not head_only(probe)
        return self._augment[method]

    def defaults(self, method: str) -> dict:
        """The recipe's common defaults, the method's defaults and what --hparam fixed."""
        return {**COMMON_DEFAULTS, **methods.get(method).defaults, **self.spec.fixed.get(method, {})}

    @staticmethod
    def _split_params(params: dict) -> tuple[dict, dict]:
        """(common, method-specific) from a flat Optuna params dict."""
        common = {k: params.get(k, v) for k, v in COMMON_DEFAULTS.items()}
        specific = {k: v for k, v in params.items() if k not in COMMON_DEFAULTS}
        return common, specific

    # -- tuning --------------------------------------------------------------------------------
    def _study(self, method: str, task: Task):
        name = study_name(study_suite(self.spec), method, task.name, study_variant(self.spec, method))
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        return open_study(self.storage, name, seed=seed, warmup_epochs=self.spec.warmup_epochs,
                          force=self.spec.force and not self._forced(name))

    def _forced(self, name: str) -> bool:
        """--force restarts a study once per process, not again when the second pass reopens it."""
        done = name in self._force_done
        self._force_done.add(name)
        return done

    def tune(self, method: str, task: Task) -> None:
        """Run the study's unclaimed trial slots (other workers may be running the rest)."""
        s = self.spec
        study = self._study(method, task)
        self._reap({"phase": tracking.PHASE_TRIAL, "method": method, "task": task.name})
        self.guard.phase = "tune"
        augment = self._augments(method)
        train_ds = val_ds = None
        for slot, key in enumerate(self._slot_keys(study)):
            if not self.claims.acquire(key, force=s.force):
                continue
            try:
                if slot == 0:  # the first slot's owner alone enqueues the recipe defaults
                    enqueue_defaults(study, self.defaults(method))
                if train_ds is None:
                    train_ds = self.guard.open(task.name, s.suite.splits.tune_train, train=augment)
                    val_ds = self.guard.open(task.name, s.suite.splits.tune_val)
                trial = study.ask()
                trial.set_user_attr("owner", owner_id())
                trial.set_user_attr("slot", slot)
                start = time.perf_counter()
                try:
                    value = self._trial(study, trial, method, task, train_ds, val_ds, key)
                except (optuna.TrialPruned, Diverged) as exc:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    outcome = f"pruned ({exc})"
                except BaseException:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    raise
                else:
                    study.tell(trial, value)
                    outcome = f"val acc {value:.1f}"
                say(f"tune  {method}/{task.name} trial {trial.number}: {outcome} "
                    f"({time.perf_counter() - start:.1f}s)")
            except BaseException:
                self.claims.release(key)
                raise
            self.claims.done(key)

    def best(self, method: str, task: Task, poll_s: float = 2.0) -> tuple[dict, str]:
        """Best params once every trial slot is done, running slots whose worker died."""
        study = self._study(method, task)
        keys = self._slot_keys(study)
        while not all(self.claims.is_done(k) for k in keys):
            self.tune(method, task)  # takes over stale slots, if any
            if not all(self.claims.is_done(k) for k in keys):
                time.sleep(poll_s)
        return best_params(study)  # the study reads its trials from the storage: no need to reopen it

    def _slot_keys(self, study) -> list[str]:
        """The claim keys of a study's trial budget, one per slot."""
        return [f"{study.study_name}/trial{slot}" for slot in range(self.spec.trials)]

    def _trial(self, study, trial, method: str, task: Task, train_ds, val_ds, claim: str) -> float:
        params = {**common_search_space(trial), **methods.get(method).search_space(trial),
                  **self.spec.fixed.get(method, {})}
        common, specific = self._split_params(params)
        try:
            model = self._model(method, task, specific, seed=trial.number)
        except ValueError as exc:  # an impossible combination drawn from the space
            trial.set_user_attr("failure_reason", str(exc))
            raise optuna.TrialPruned(str(exc)) from None
        tags = {**self._tags(tracking.PHASE_TRIAL, method, task, trial.number),
                "study": study.study_name, "trial_number": trial.number}
        desc = f"{method}/{task.name} trial {trial.number}"
        pruned = None
        with tracking.TrackedRun(self.client, self.exp_id, desc, tags,
                                 {**params, "drop_path_rate": self.spec.drop_path_rate, **self.provenance,
                                  "method": method, "task": task.name,
                                  "data_sha256": self.data_hash(task.name), **self.spec.protocol()}) as run:
            def on_epoch(epoch: int, metrics: dict) -> None:
                run.log_metrics({**_per_epoch(metrics), tracking.VAL_ACC: metrics["eval_acc"]}, step=epoch)
                trial.report(metrics["eval_acc"], epoch)
                self.claims.beat(claim)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

            try:
                result = fit(model, train_ds, self._config(common, trial.number, desc), eval_ds=val_ds,
                             eval_every_epoch=True, on_epoch=on_epoch)
            except optuna.TrialPruned as exc:
                run.set_tag("trial_state", "PRUNED")
                pruned = exc
            except Diverged as exc:
                trial.set_user_attr("failure_reason", f"diverged: {exc}")
                run.set_tag("trial_state", "DIVERGED")
                raise
            else:
                run.log_metrics(self._summary(model, result, tracking.VAL_ACC))
        if pruned is not None:
            raise pruned
        return result.eval_acc

    @staticmethod
    def _summary(model, result, acc_metric: str) -> dict:
        summary = {acc_metric: result.eval_acc,
                   tracking.PARAMS_BACKBONE: methods.count_trainable(model, exclude_head=True),
                   tracking.PARAMS_TOTAL: methods.count_trainable(model, exclude_head=False),
                   tracking.TRAIN_IMG_PER_S: result.train_img_per_s,
                   tracking.EVAL_IMG_PER_S: result.eval_img_per_s,
                   tracking.PEAK_MEM_MB: result.peak_mem_mb,
                   tracking.WALL_S: result.wall_s}
        return {k: v for k, v in summary.items() if v is not None}

    # -- final fits ------------------------------------------------------------------------------
    def run_key(self, method: str, task: Task, seed: int, hparams: dict) -> str:
        """What a final fit is: its experiment, method, task, data, seed and every hyperparameter it
        trains with. A re-tune that picks other hyperparameters is another fit (and checkpoint)."""
        ident = {**self.experiment(method), "method": method, "task": task.name, "seed": seed,
                 "data_sha256": self.data_hash(task.name), "hparams": hparams}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def final(self, method: str, task: Task, seed: int, params: dict, source: str,
              setting: Setting | None = None) -> float | None:
        """One final fit; returns its test accuracy, or None when it was done before or elsewhere.
        ``setting``: a recipe's, whose training settings all join the fit's hyperparameters."""
        common, specific = self._split_params(params)
        hparams = {**common, **methods.get(method).resolve(**specific)}
        if setting is not None:
            hparams = {**setting.train, **hparams}
        key = self.run_key(method, task, seed, hparams)
        if not self.spec.force and tracking.find_runs(self.client, self.exp_id, {"run_key": key}):
            return None
        # MLflow is the record of what is done; a claim only stops two workers doing it at once.
        # A claim marked done whose run this tracking store lacks (another store, a deleted run) is
        # redone: the owner sets the run FINISHED before the claim done, so no race hides here.
        done_elsewhere = self.claims.is_done(key) and not tracking.find_runs(self.client, self.exp_id,
                                                                            {"run_key": key})
        if not self.claims.acquire(key, force=self.spec.force or done_elsewhere):
            return None
        self._reap({"run_key": key})
        self.guard.phase = "final"
        try:
            model = self._model(method, task, specific, seed)
            augment = self._augments(method)
            train_ds = self.guard.open(task.name, self.spec.suite.splits.final_train, train=augment,
                                       flip=augment and setting is not None and setting.train["flip"])
            test_ds = self.guard.open(task.name, self.spec.suite.splits.test)
            tags = {**self._tags(tracking.PHASE_FINAL, method, task, seed), "run_key": key,
                    "best_params_from": source}
            if self.spec.recipe is not None:
                tags["recipe"] = self.spec.recipe.name
            desc = f"{method}/{task.name} seed {seed}"
            # real suites checkpoint every epoch, so a preempted job resumes mid-run
            ckpt = str(self.out / "checkpoints" / f"{key}.pt") if self.spec.suite.needs_data_root else None
            cfg = (self._config(common, seed, desc, ckpt) if setting is None
                   else self._recipe_config(setting, seed, desc, ckpt))
            with tracking.TrackedRun(self.client, self.exp_id, desc, tags,
                                     {**hparams, "drop_path_rate": cfg.drop_path_rate, **self.provenance,
                                      "method": method, "task": task.name, "seed": seed,
                                      "data_sha256": self.data_hash(task.name),
                                      **self._fit_protocol(method, task)}) as run:
                def on_epoch(epoch: int, metrics: dict) -> None:
                    run.log_metrics(_per_epoch(metrics), step=epoch)
                    self.claims.beat(key)

                result = fit(model, train_ds, cfg, eval_ds=test_ds, on_epoch=on_epoch)
                run.log_metrics(self._summary(model, result, tracking.TEST_ACC))
        except BaseException:
            self.claims.release(key)
            raise
        finally:
            self.guard.phase = "tune"
        self.claims.done(key)
        say(f"final {method}/{task.name} seed {seed}: test acc {result.eval_acc:.1f} "
            f"({result.wall_s:.1f}s, params from {source})")
        return result.eval_acc

    # -- the whole plan -----------------------------------------------------------------------
    def run(self) -> None:
        """Two passes so that concurrent workers spread out: first every study's free trial
        slots, then, per (method, task) once its study is complete, the unclaimed final fits."""
        s = self.spec
        pairs = [(m, t) for t in s.tasks for m in s.methods]
        if s.recipe is not None:
            self.run_recipe(pairs)
            return
        for method, task in pairs:
            self.tune(method, task)
        for method, task in pairs:
            params, source = self.best(method, task)
            params = {**self.defaults(method), **params, **self.spec.fixed.get(method, {})}
            for seed in s.seeds:
                try:
                    self.final(method, task, seed, params, source)
                except Diverged as exc:
                    say(f"final {method}/{task.name} seed {seed}: diverged ({exc}); recorded as FAILED")


    def run_recipe(self, pairs: list[tuple[str, Task]]) -> None:
        """--recipe: no study; each (method, task)'s final fits train with the recipe's settings."""
        source = f"recipe {self.spec.recipe.name}"
        for method, task in pairs:
            setting = self.spec.setting(method, task)
            params = {"lr": setting.train["lr"], "weight_decay": setting.train["weight_decay"], **setting.hparams}
            for seed in self.spec.seeds:
                try:
                    self.final(method, task, seed, params, source, setting)
                except Diverged as exc:
                    say(f"final {method}/{task.name} seed {seed}: diverged ({exc}); recorded as FAILED")


def say(line: str) -> None:
    """One progress line per trial and final fit (tqdm's bars show the steps in between)."""
    from tqdm.auto import tqdm

    tqdm.write(line)
    sys.stdout.flush()


# --------------------------------------------------------------------------- CLI entry points
def parse_jobs(text: str, device: str, force: bool = False) -> int:
    """Local workers: one per core on CPU, one on GPU, one with --force (each worker would redo
    what the others just redid)."""
    if text == "auto":
        return (os.cpu_count() or 1) if device == "cpu" and not force else 1
    try:
        jobs = int(text)
    except ValueError:
        raise UserError(f"--jobs must be 'auto' or a positive integer, got {text!r}") from None
    _positive(jobs, "--jobs")
    if force and jobs > 1:
        raise UserError("--force redoes finished work and runs in one worker: drop --jobs or use --jobs 1")
    return jobs


def run_local_workers(spec: RunSpec, argv: list[str], jobs: int) -> int:
    """Start ``jobs`` copies of this command, one CPU thread each, sharing the run's stores; the
    claims divide the work. Many small processes beat one process with many threads on the small
    demo model (and two processes that each use every core slow each other down many times)."""
    import subprocess

    # check the weights and create the stores once, here, so that the workers never race to
    # initialise them and a user error shows once
    build_backbone(spec)
    open_stores(spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "BENCH_WORKER": "1"}
    cmd = [sys.executable, "-m", "bench.cli", *argv, "--jobs", "1", "--no-report"]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(jobs)]
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    return next((c if c > 0 else 1 for c in codes if c), 0)


def backbone_family(args: argparse.Namespace) -> str:
    """The family of the backbone a `bench run`/`tune` command asks for (the suite's by default)."""
    return backbones.get(args.backbone or load_suite(args.suite).backbone).family


def main_run(args: argparse.Namespace) -> int:
    names = parse_methods(args.methods, backbone_family(args))
    recipe = getattr(args, "recipe", None)
    if recipe and args.methods.strip() in METHOD_SETS:  # those of the set the recipe has settings for
        names = [m for m in names if m in load_recipe(recipe).methods]
    spec = spec_from_args(args, names)
    jobs = parse_jobs(args.jobs, spec.device, args.force)
    if args.dry_run:
        from .plan import print_plan

        print_plan(spec)
        return 0
    start = time.perf_counter()
    if os.environ.get("BENCH_WORKER"):  # one of the workers below: just work
        Runner(spec).run()
        return 0
    studies = len(spec.methods) * len(spec.tasks)
    family = backbones.get(spec.backbone).family
    sets = [t.strip() for t in args.methods.split(",") if t.strip() in METHOD_SETS]
    skipped = sorted({m for t in sets for m in methods.group(t) if not methods.supports(m, family)})
    if skipped:
        print(f"bench run: --methods {args.methods} on {spec.backbone} leaves out {', '.join(skipped)} "
              f"(not on {family} backbones)", flush=True)
    work = (f"no tuning (recipe {spec.recipe.name}), {studies * len(spec.seeds)} final fits (seeds "
            f"{', '.join(map(str, spec.seeds))}) with its settings per task" if spec.recipe else
            f"{studies} studies of {spec.trials} trials, then {studies * len(spec.seeds)} final fits (seeds "
            f"{', '.join(map(str, spec.seeds))}); {spec.epochs} epochs")
    print(f"bench run: suite {spec.suite.name} on {spec.backbone}, {len(spec.methods)} methods x "
          f"{len(spec.tasks)} tasks{': ' if spec.recipe else ' = '}{work}; device {spec.device}; {jobs} worker{'s' if jobs > 1 else ''}",
          flush=True)
    if jobs > 1:
        code = run_local_workers(spec, args.argv, jobs)
        if code:
            return code
    else:
        Runner(spec).run()
    print(f"bench run: done in {time.perf_counter() - start:.0f}s; MLflow: {spec.tracking_uri}", flush=True)
    if not args.no_report:
        from . import report

        report.main(argparse.Namespace(suite=spec.suite.name, tracking_uri=spec.tracking_uri,
                                       out=args.report_dir or str(spec.out), debug=False))
    return 0


def main_tune(args: argparse.Namespace) -> int:
    args.tasks = args.task
    spec = spec_from_args(args, parse_methods(args.method))
    if len(spec.methods) != 1 or len(spec.tasks) != 1:
        raise UserError("bench tune takes one --method and one --task")
    runner = Runner(spec)
    runner.tune(spec.methods[0], spec.tasks[0])
    params, source = runner.best(spec.methods[0], spec.tasks[0])
    print(json.dumps({"study": study_name(study_suite(spec), spec.methods[0], spec.tasks[0].name,
                                          study_variant(spec, spec.methods[0])),
                      "best_from": source, "params": params}, indent=2, sort_keys=True))
    return 0
