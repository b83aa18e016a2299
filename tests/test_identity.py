"""Issue 25, one experiment identity: the typed object and its serialisation, studies found and
kept apart by it (a rerun with any protocol setting, weights or data changed tunes anew; an
identical rerun trains nothing), trials that record every hyperparameter they trained with
(DoRA's derived alpha reaches the final fit), and an interrupted trial re-queued so that the
rerun gives the uninterrupted result."""
from __future__ import annotations

import dataclasses

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

import methods
from bench import tracking
from bench.run import protocol
from bench.run import study as tune
from bench.cli import main
from bench.errors import UserError
from bench.identity import PROTOCOL_FIELDS, Cell, Experiment, row_labels

BASE = Experiment(suite="demo", backbone="demo", weights_sha256="a" * 64, method="lora", epochs=4, warmup_epochs=1,
                  batch_size=32, trials=2, drop_path_rate=0.0)


# --------------------------------------------------------------------------- the object
def test_every_field_changes_the_hash_and_the_json_round_trips():
    cell = BASE.on("digits", "d" * 64)
    assert Experiment.from_json(BASE.to_json()) == BASE and Cell.from_dict(cell.to_dict()) == cell
    assert PROTOCOL_FIELDS == ("epochs", "warmup_epochs", "batch_size", "trials", "drop_path_rate", "precision",
                               "device_kind")
    changed = {"suite": "vtab1k", "backbone": "tiny_swin", "weights_sha256": "b" * 64, "method": "vpt",
               "fixed": (("rank", 4),), "recipe": "rlrr-paper", "epochs": 5, "warmup_epochs": 0, "batch_size": 16,
               "trials": 3, "drop_path_rate": 0.1, "precision": "bf16", "device_kind": "cuda",
               "plugin": "mypkg==0.2.0"}
    assert set(changed) == {f.name for f in dataclasses.fields(Experiment)}  # every field is tried
    keys = {BASE.key()} | {dataclasses.replace(BASE, **{k: v}).key() for k, v in changed.items()}
    assert len(keys) == len(changed) + 1
    names = {cell.study_name(), BASE.on("count", "d" * 64).study_name(), BASE.on("digits", "e" * 64).study_name()}
    assert len(names) == 3 and cell.study_name().startswith("demo.lora.digits#")
    # fixed values are sorted and typed: the same experiment whatever the --hparam order
    a = dataclasses.replace(BASE, fixed=(("rank", 4), ("alpha", 0.5)))
    assert a == dataclasses.replace(BASE, fixed=(("alpha", 0.5), ("rank", 4))) and a.fixed_dict == {"alpha": 0.5, "rank": 4}


def test_records_of_another_version_are_refused():
    with pytest.raises(ValueError, match="not an experiment identity of this version"):
        Experiment.from_json('{"suite": "demo", "epochs": 4, "fixed": {}}')  # the old `experiment` tag
    with pytest.raises(ValueError, match="unreadable"):
        Experiment.from_json("not json")


def test_row_labels_name_what_differs_from_the_main_experiment():
    smoke = dataclasses.replace(BASE, epochs=1)
    gpu = dataclasses.replace(BASE, precision="bf16", device_kind="cuda")
    rank4 = dataclasses.replace(BASE, fixed=(("rank", 4),))
    random = dataclasses.replace(BASE, weights_sha256="none")
    recipe = dataclasses.replace(BASE, recipe="rlrr-paper", epochs=None, warmup_epochs=None, batch_size=None,
                                 trials=0, drop_path_rate=None)
    labels = row_labels([BASE, BASE, BASE, smoke, gpu, rank4, random, recipe])
    assert labels == {BASE: "lora", smoke: "lora (epochs=1)", gpu: "lora (precision=bf16, device_kind=cuda)",
                      rank4: "lora (rank=4)", random: "lora (random init)", recipe: "lora (recipe rlrr-paper)"}
    # an experiment only failed runs have is labelled too, without counting towards the main one
    failed_recipe = dataclasses.replace(recipe, recipe="noah-paper")
    also = row_labels([BASE, smoke, smoke], also=[failed_recipe, BASE])
    assert also == {BASE: "lora (epochs=4)", smoke: "lora", failed_recipe: "lora (recipe noah-paper)"}


def test_a_study_holding_another_identity_is_never_reused():
    storage = optuna.storages.InMemoryStorage()
    cell = BASE.on("digits", "d" * 64)
    study, created = tune.open_study(storage, cell.study_name(), 0, cell)
    assert created and study.user_attrs == {"identity": cell.to_dict(), "role": tune.ROLE_TUNING}
    assert tune.open_study(storage, cell.study_name(), 0, cell)[1] is False  # the same cell: resumed
    other = dataclasses.replace(BASE, epochs=9).on("digits", "d" * 64)
    with pytest.raises(UserError, match="holds another experiment"):
        tune.open_study(storage, cell.study_name(), 0, other)  # as if two identities hashed alike


# --------------------------------------------------------------------------- runs
def _mlflow_runs(out, phase):
    client = mlflow.MlflowClient(tracking.default_tracking_uri(out))
    exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
    return client.search_runs([exp.experiment_id], f"tags.phase = '{phase}'", max_results=1000)


def _tuning_studies(out):
    storage = tune.open_storage(None, out)
    return {s.study_name: tune.study_cell(s) for s in optuna.get_all_study_summaries(storage)
            if tune.study_role(s) == tune.ROLE_TUNING}


def test_a_rerun_with_another_protocol_weights_or_budget_tunes_its_own_trials(tmp_path):
    """Wrong result 1: a rerun with --epochs 3 (or --batch-size, --pretrained none, --trials) took the
    first study's best trial and trained no trial of its own; an identical rerun trains nothing."""
    base = ["run", "--methods", "linear", "--tasks", "digits", "--trials", "2", "--epochs", "2", "--seeds", "1",
            "--out", str(tmp_path), "--no-report", "--jobs", "1"]
    assert main(base) == 0
    changes = (["--epochs", "3"], ["--batch-size", "16"], ["--pretrained", "none"], ["--trials", "3"])
    for i, change in enumerate(changes, start=1):
        trials_before = len(_mlflow_runs(tmp_path, "trial"))
        argv = list(base)
        at = argv.index(change[0]) if change[0] in argv else None
        if at is None:
            argv += change
        else:
            argv[at + 1] = change[1]
        assert main(argv) == 0
        budget = 3 if change[0] == "--trials" else 2
        assert len(_mlflow_runs(tmp_path, "trial")) == trials_before + budget, change  # its own trials
        assert len(_tuning_studies(tmp_path)) == 1 + i
    studies = _tuning_studies(tmp_path).values()
    assert sorted(c.experiment.epochs for c in studies) == [2, 2, 2, 2, 3]
    assert sorted(c.experiment.batch_size for c in studies) == [16, 64, 64, 64, 64]  # the demo default: 64
    assert sorted(c.experiment.trials for c in studies) == [2, 2, 2, 2, 3]
    assert sum(c.experiment.weights_sha256 == "none" for c in studies) == 1
    finals = _mlflow_runs(tmp_path, "final")
    assert len({r.data.tags[tracking.EXPERIMENT_KEY_TAG] for r in finals}) == 5  # five experiments, five rows
    before = len(_mlflow_runs(tmp_path, "trial")), len(finals)
    assert main(base) == 0  # identical: resumes, trains nothing
    assert (len(_mlflow_runs(tmp_path, "trial")), len(_mlflow_runs(tmp_path, "final"))) == before


def test_a_trial_records_its_derived_hyperparameters_and_the_final_fit_uses_them(tmp_path, monkeypatch):
    """Wrong result 2: DoRA's search space derives alpha = 2 * rank, but only rank was an Optuna
    param, so the final fit of a winning rank-32 trial trained with the default alpha (16), not 64.
    Here the default trial is rank 32 (defaults patched), the only trial, so it wins."""
    dora = type(methods.get("dora"))
    monkeypatch.setattr(dora, "defaults", {**dora.defaults, "rank": 32})
    assert dora.defaults["alpha"] == 16
    assert main(["run", "--methods", "dora", "--tasks", "digits", "--trials", "1", "--epochs", "1", "--seeds", "1",
                 "--out", str(tmp_path), "--no-report", "--jobs", "1"]) == 0
    (trial_run,), (final_run,) = _mlflow_runs(tmp_path, "trial"), _mlflow_runs(tmp_path, "final")
    assert (trial_run.data.params["rank"], trial_run.data.params["alpha"]) == ("32", "64")
    assert (final_run.data.params["rank"], final_run.data.params["alpha"]) == ("32", "64")
    study = optuna.load_study(study_name=next(iter(_tuning_studies(tmp_path))), storage=tune.open_storage(None, tmp_path))
    assert study.trials[0].user_attrs["hparams"]["alpha"] == 64
    assert tune.best_params(study) == (study.trials[0].user_attrs["hparams"], "trial 0")


def test_an_interrupted_trial_is_requeued_and_the_rerun_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    """Issue 27 item 3: Ctrl-C in trial 1 marked it FAIL and the rerun sampled other hyperparameters;
    now it is re-queued with its parameters and seed (its position in the budget), so the rerun's
    trials and final test accuracy equal the uninterrupted run's."""
    argv = ["run", "--methods", "lora", "--tasks", "digits", "--trials", "3", "--epochs", "2", "--seeds", "42",
            "--no-report", "--jobs", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    real = protocol.Runner._trial
    calls = []

    def interrupted(self, study, trial, *args):
        calls.append(trial.number)
        if trial.number == 1:
            raise KeyboardInterrupt
        return real(self, study, trial, *args)

    monkeypatch.setattr(protocol.Runner, "_trial", interrupted)
    assert main([*argv, "--out", str(tmp_path / "b")]) == 130  # "interrupted", as after Ctrl-C
    assert calls == [0, 1]
    monkeypatch.setattr(protocol.Runner, "_trial", real)
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0

    def trials(out):
        (study_name,) = _tuning_studies(out)
        study = optuna.load_study(study_name=study_name, storage=tune.open_storage(None, out))
        return study, [(t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]

    (a, ta), (b, tb) = trials(tmp_path / "a"), trials(tmp_path / "b")
    assert ta == tb and len(ta) == 3
    assert [t.state for t in b.trials].count(TrialState.FAIL) == 1  # the interrupted one, visible as FAIL
    acc = lambda out: [r.data.metrics["test_acc"] for r in _mlflow_runs(out, "final")]  # noqa: E731
    assert acc(tmp_path / "a") == acc(tmp_path / "b")


def test_a_fixed_hyperparameter_is_what_the_space_derives_from():
    """``--hparam dora.rank=32``: the search space derives alpha from the fixed rank (64), instead of
    from a rank it sampled and the fixed value then replaced; nothing is sampled for the fixed one."""
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    space = methods.get("dora").search_space(tune.FixedParams(trial, {"rank": 32}))
    assert space == {"rank": 32, "alpha": 64} and "rank" not in trial.params
    lokr = methods.get("lokr").search_space(tune.FixedParams(trial, {"rank": 8}))
    assert lokr["rank"] == lokr["alpha"] == 8 and "factor" in trial.params  # the rest is still searched
