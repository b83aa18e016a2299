"""The tracking schema: every tag, param and metric a trial or final run records in MLflow, and
every user attribute of the Optuna studies and trials, declared once as data (a ``Field`` each:
store, name, which runs, meaning, when it is there). ``python -m bench.reference_docs`` renders it
as docs/reference/tracking.md; tests/test_docs.py checks a real run against it both ways. The
names themselves are ``bench.tracking``'s constants."""
from __future__ import annotations

from dataclasses import dataclass

from .tracking import (COMPILE_TAG, DATA_WAIT_FRAC, DEVICE_NAME_PARAM, EVAL_IMG_PER_S, EXPERIMENT_KEY_TAG,
                       EXPERIMENT_TAG, IDENTITY_ATTR, LR, PARAMS_BACKBONE, PARAMS_TOTAL, PEAK_MEM_MB,
                       PHASE_FINAL, PHASE_TRIAL, RANDOM_INIT, ROLE_ATTR, TEST_ACC, TRAIN_IMG_PER_S,
                       TRAIN_LOSS, VAL_ACC, VERSIONED_PACKAGES, WALL_S)


MLFLOW_TAG, MLFLOW_PARAM, MLFLOW_METRIC = "MLflow tag", "MLflow param", "MLflow metric"
OPTUNA_STUDY, OPTUNA_TRIAL = "Optuna study user attribute", "Optuna trial user attribute"
STORES = (MLFLOW_TAG, MLFLOW_PARAM, MLFLOW_METRIC, OPTUNA_STUDY, OPTUNA_TRIAL)
BOTH = "both"
HPARAMS, RECIPE_SETTINGS = "hyperparameters", "recipe settings"  # the groups of params


@dataclass(frozen=True)
class Field:
    """One name a `bench run` records. ``runs``: ``PHASE_TRIAL`` (tuning trials; for Optuna, the
    tuning study and its trials), ``PHASE_FINAL`` (final fits; the final-fit study) or ``BOTH``.
    ``when``: "" if every finished run (study, trial) of those phases has it, else when it is there.
    ``group``: "" for one name; else a family of names (``group_names``) that ``name`` describes."""
    store: str
    name: str
    runs: str
    meaning: str
    when: str = ""
    group: str = ""


def _tag(name, runs, meaning, when=""):
    return Field(MLFLOW_TAG, name, runs, meaning, when)


def _param(name, runs, meaning, when=""):
    return Field(MLFLOW_PARAM, name, runs, meaning, when)


def _metric(name, runs, meaning, when=""):
    return Field(MLFLOW_METRIC, name, runs, meaning, when)


_T, _F = PHASE_TRIAL, PHASE_FINAL
SCHEMA: tuple[Field, ...] = (
    # MLflow tags (bench.run.records, tuning, finals; TrackedRun)
    _tag("phase", BOTH, f'"{PHASE_TRIAL}" (a tuning trial: tuning split, scored on the validation split) or '
                        f'"{PHASE_FINAL}" (a final fit: final training split, scored on the test split)'),
    _tag("suite", BOTH, "the suite"),
    _tag("method", BOTH, "the method's registered name"),
    _tag("task", BOTH, "the task"),
    _tag("group", BOTH, "the task's group in its suite (VTAB-1k: natural, specialized, structured)"),
    _tag("seed", BOTH, "the seed it trained with: a trial's position in its study's budget, a final fit's run seed"),
    _tag("git_commit", BOTH, "HEAD of the project checkout (`-dirty` with uncommitted changes; `unknown` outside one)"),
    _tag("owner", BOTH, "`host:pid` of the worker; a RUNNING run whose owner is gone is marked FAILED"),
    _tag(EXPERIMENT_TAG, BOTH, "the experiment identity as JSON (`bench.identity.Experiment.to_json`): the only "
                               "record `bench report` reads back"),
    _tag(EXPERIMENT_KEY_TAG, BOTH, "its short hash"),
    _tag("mlflow.runName", BOTH, "MLflow's run name: `<method>/<task> trial <n>` or `<method>/<task> seed <seed>`"),
    _tag("study", _T, "the Optuna tuning study of the trial"),
    _tag("trial_number", _T, "the trial's number in that study"),
    _tag("trial_state", _T, "`PRUNED` (the pruner stopped it) or `DIVERGED` (its loss was not finite)",
         "pruned or diverged trials"),
    _tag("run_key", _F, "what the fit is: a hash of its cell, seed and every hyperparameter (a fit that MLflow "
                        "holds FINISHED is not trained again)"),
    _tag("best_params_from", _F, "where its hyperparameters come from: `trial <n>` of the tuning study, "
                                 "`recipe <name>`, or why the defaults were used"),
    _tag("optuna_study", _F, "the final-fit study that queued it"),
    _tag("optuna_trial", _F, "its trial's number in that study"),
    _tag("recipe", _F, "the recipe's name", "under --recipe"),
    _tag(COMPILE_TAG, BOTH, "`compiled`, or `eager: <why>` for a method that declares `compiles = False` "
                            "(`Method.compile_why`): its fit ran eagerly", "under --compile"),
    _tag("failure_reason", BOTH, "why it failed: the exception, or that its worker died", "FAILED runs"),
    # MLflow params (Records._params: hyperparameters, Experiment.params, provenance, task, data)
    _param("lr", BOTH, "the learning rate it trained with"),
    _param("weight_decay", BOTH, "the weight decay it trained with (where the method decays: `Method.decays`)"),
    Field(MLFLOW_PARAM, "every hyperparameter of the method", BOTH,
          "its resolved hyperparameters (the defaults, the trial's draws or the fit's tuned values, --hparam "
          "values; derived ones included), by the names of `Method.defaults`", "methods with hyperparameters",
          HPARAMS),
    Field(MLFLOW_PARAM, "every other training setting of the recipe", _F,
          "the recipe's setting for the task, by the names of `bench.recipes.TRAIN_KEYS`", "under --recipe",
          RECIPE_SETTINGS),
    _param("suite", BOTH, "the experiment's suite"),
    _param("backbone", BOTH, "the backbone (a `bench.backbones` name)"),
    _param("weights_sha256", BOTH, f"SHA-256 of the weights file (`{RANDOM_INIT}`: a randomly initialised backbone)"),
    _param("method", BOTH, "the method"),
    _param("recipe", BOTH, "the recipe's name (empty without --recipe)"),
    _param("plugin", BOTH, "a plugin method's provenance (`methods.plugins.provenance`)", "plugin methods"),
    _param("epochs", BOTH, "epochs of training: the protocol's (under --recipe: the recipe's for the task)"),
    _param("warmup_epochs", BOTH, "lr warm-up epochs: the protocol's (under --recipe: the recipe's)"),
    _param("batch_size", BOTH, "batch size: the protocol's (under --recipe: the recipe's)"),
    _param("trials", BOTH, "the tuning budget of the study (0 under --recipe)"),
    _param("drop_path_rate", BOTH, "stochastic depth of the backbone: --drop-path-rate (under --recipe: the recipe's)"),
    _param("precision", BOTH, "`fp32` or `bf16`"),
    _param("device_kind", BOTH, "`cpu`, `cuda` or `mps`"),
    _param("task", BOTH, "the task"),
    _param("data_sha256", BOTH, "SHA-256 of the task's data manifest"),
    _param("seed", _F, "the run seed"),
    _param("weights_file", BOTH, "the weights file (`random-init` without one)"),
    _param("git_commit", BOTH, "as the tag"),
    _param("device", BOTH, "the device it ran on (--device)"),
    _param(DEVICE_NAME_PARAM, BOTH, "the device class its throughput and memory come from: `CPU` or the GPU's name "
                                    "(e.g. `NVIDIA H100 80GB HBM3`); the leaderboard's columns say it"),
    *(_param(f"version_{pkg.replace('-', '_')}", BOTH, f"the installed version of {pkg} (`unknown` if none)")
      for pkg in VERSIONED_PACKAGES),
    # MLflow metrics (bench.train per epoch, step = epoch index; Records._summary at the end, step 0)
    _metric(TRAIN_LOSS, BOTH, "per epoch: the mean training loss"),
    _metric(LR, BOTH, "per epoch: the lr of the epoch's last step"),
    _metric(DATA_WAIT_FRAC, BOTH, "per epoch: the fraction of the epoch's time its steps waited for their batches"),
    _metric(VAL_ACC, _T, "per epoch: validation accuracy (percent); at the end, the last epoch's again"),
    _metric(TEST_ACC, _F, "test accuracy (percent) after the last epoch"),
    _metric(PARAMS_BACKBONE, BOTH, "trainable parameters without the head"),
    _metric(PARAMS_TOTAL, BOTH, "trainable parameters, the head included"),
    _metric(TRAIN_IMG_PER_S, BOTH, "training throughput, images per second"),
    _metric(EVAL_IMG_PER_S, BOTH, "evaluation throughput, images per second"),
    _metric(PEAK_MEM_MB, BOTH, "the fit's peak GPU memory, MB", "CUDA devices"),
    _metric(WALL_S, BOTH, "the fit's wall time, seconds"),
    # Optuna study user attributes (bench.run.study, coordination)
    Field(OPTUNA_STUDY, IDENTITY_ATTR, BOTH, "the cell it tunes or fits (`bench.identity.Cell.to_dict`: experiment, "
                                             "task, data hash); a study whose identity differs is never used"),
    Field(OPTUNA_STUDY, ROLE_ATTR, BOTH, '"tuning" or "final fits"'),
    Field(OPTUNA_STUDY, "queued", _F, "true once the worker that created it queued every fit"),
    # Optuna trial user attributes (bench.run.tuning, finals, coordination)
    Field(OPTUNA_TRIAL, "owner", BOTH, "`host:pid` of the worker that took it (a dead worker's trial is failed and "
                                       "queued again)"),
    Field(OPTUNA_TRIAL, "default_trial", _T, "true on the trial of the defaults (common lr and weight decay, the "
                                             "method's defaults), queued when the study was created",
          "the study's first trial"),
    Field(OPTUNA_TRIAL, "hparams", _T, "every hyperparameter it trained with (derived ones included); the final "
                                       "fits take the best trial's"),
    Field(OPTUNA_TRIAL, "surplus", _T, "true on a trial asked after other workers took the budget (told FAIL)",
          "refused trials"),
    Field(OPTUNA_TRIAL, "seed", _F, "the fit's run seed"),
    Field(OPTUNA_TRIAL, "params", _F, "the hyperparameters it fits with, before the method resolves them"),
    Field(OPTUNA_TRIAL, "source", _F, "where they come from (the `best_params_from` tag)"),
    Field(OPTUNA_TRIAL, "run_key", _F, "the fit's run key (the `run_key` tag)"),
    Field(OPTUNA_TRIAL, "mlflow_run_id", _F, "the id of its MLflow run"),
    Field(OPTUNA_TRIAL, "duplicate", _F, "true on a second trial of one run key (told FAIL; the lower one runs)",
          "refused trials"),
    Field(OPTUNA_TRIAL, "failure_reason", BOTH, "why: an impossible combination of hyperparameters, `diverged: ...`, "
                                                "or why it was refused", "pruned, failed or refused trials"),
)


def declared(store: str, phase: str) -> dict[str, Field]:
    """The single names ``SCHEMA`` declares for ``store`` in runs of ``phase`` (``PHASE_TRIAL`` or
    ``PHASE_FINAL``), groups left out."""
    return {f.name: f for f in SCHEMA if f.store == store and f.runs in (phase, BOTH) and not f.group}


def group_names(group: str, method: str) -> set[str]:
    """The names of a group of params: the hyperparameters of ``method`` (``HPARAMS``) or a recipe's
    training settings (``RECIPE_SETTINGS``), those that ``SCHEMA`` declares on their own left out."""
    if group == HPARAMS:
        import methods

        names = set(methods.get(method).defaults)
    elif group == RECIPE_SETTINGS:
        from .recipes import TRAIN_KEYS

        names = set(TRAIN_KEYS)
    else:
        raise ValueError(f"unknown group {group!r}")
    return names - {f.name for f in SCHEMA if f.store == MLFLOW_PARAM and not f.group}
