"""Unit tests of the runner's parts (bench.run): the request that workers receive, the spec built
from it, and what a run records in MLflow. The end-to-end runs are in test_runner.py and
test_protocol.py; the identity in test_identity.py; claims and queues in test_coordination.py."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from bench import tracking
from bench.cli import build_parser
from bench.identity import Experiment
from bench.run import protocol, workers
from bench.run.spec import RunRequest, build_spec

FLAGS = ["run", "--methods", "core,dora", "--tasks", "digits,cells", "--seeds", "3,4", "--trials", "2",
         "--epochs", "2", "--hparam", "lora.rank=4", "--device", "cpu", "--drop-path-rate", "0.1"]


def _request(tmp_path, *extra) -> RunRequest:
    return RunRequest.from_args(build_parser().parse_args([*FLAGS, *extra, "--out", str(tmp_path)]))


def test_a_request_is_plain_values_and_survives_json(tmp_path):
    request = _request(tmp_path)
    assert request == RunRequest.from_json(request.to_json())
    assert json.loads(request.to_json())["hparam"] == ["lora.rank=4"]
    assert request.methods == "core,dora" and request.trials == 2 and request.batch_size is None


def test_a_worker_builds_the_same_spec_from_the_json_it_receives(tmp_path):
    here = build_spec(_request(tmp_path))
    there = build_spec(RunRequest.from_json(here.request.to_json()))
    for field in ("backbone", "methods", "seeds", "trials", "epochs", "warmup_epochs", "batch_size", "fixed",
                  "drop_path_rate", "device", "out", "tracking_uri", "storage", "force"):
        assert getattr(there, field) == getattr(here, field), field
    assert [t.name for t in there.tasks] == ["digits", "cells"]
    assert there.experiment("lora", "abc") == here.experiment("lora", "abc")
    assert here.fixed == {"lora": {"rank": 4}}
    assert here.methods == ["adapter", "full", "linear", "lora", "rlrr", "ssf", "vpt", "dora"]


def test_local_workers_get_the_request_not_the_command_line(tmp_path, monkeypatch):
    spec = build_spec(RunRequest(methods="linear", tasks="digits", device="cpu", out=str(tmp_path)))
    started = []

    class FakeProcess:
        def __init__(self, cmd, env):
            started.append((cmd, env))

        returncode = 0

        def poll(self):
            return 0

    monkeypatch.setattr(workers, "subprocess", SimpleNamespace(Popen=FakeProcess))  # only the workers' own
    assert workers.run_local_workers(spec, 3) == 0
    assert len(started) == 3
    for cmd, env in started:
        assert cmd[:3] == [sys.executable, "-m", "bench.run.workers"]
        assert RunRequest.from_json(cmd[3]) == spec.request
        assert env["OMP_NUM_THREADS"] == "1"


def test_jobs_auto_is_one_per_core_on_cpu_and_force_runs_alone(tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert workers.parse_jobs("auto", build_spec(_request(tmp_path))) == 6
    forced = build_spec(_request(tmp_path, "--force"))
    assert workers.parse_jobs("auto", forced) == 1
    with pytest.raises(Exception, match="--force redoes finished work"):
        workers.parse_jobs("2", forced)


def test_records_name_the_experiment_and_every_hyperparameter(tmp_path):
    spec = build_spec(RunRequest(methods="lora", tasks="digits", seeds="1", trials=1, epochs=1, device="cpu",
                                 out=str(tmp_path), hparam=("lora.rank=4",)))
    runner = protocol.Runner(spec)
    task = spec.tasks[0]
    tags = runner._tags(tracking.PHASE_FINAL, "lora", task, 1)
    experiment = Experiment.from_json(tags[tracking.EXPERIMENT_TAG])
    assert experiment == runner.experiment("lora") and tags[tracking.EXPERIMENT_KEY_TAG] == experiment.key()
    assert experiment.fixed == (("rank", 4),) and experiment.weights_sha256 == runner.weights_sha256
    assert (tags["phase"], tags["method"], tags["task"], tags["seed"]) == (tracking.PHASE_FINAL, "lora", "digits", 1)
    hparams = runner._hparams("lora", {"lr": 1e-3, "weight_decay": 1e-4, "rank": 4}, None)
    assert hparams == {"lr": 1e-3, "weight_decay": 1e-4, "rank": 4, "alpha": 8}
    params = runner._params("lora", task, hparams)
    assert {k: params[k] for k in hparams} == hparams
    assert params["task"] == "digits" and params["data_sha256"] == runner.data_hash("digits")
    assert params["git_commit"] == runner.provenance["git_commit"]
    assert all(params[k] == v for k, v in experiment.params().items())


def test_a_fit_mlflow_finished_but_optuna_never_heard_of_is_adopted_not_redone(tmp_path):
    """A worker killed between finishing a final fit's MLflow run and telling Optuna leaves the run
    FINISHED and its trial re-enqueued: the trial that picks it up adopts the run (no second fit),
    and the run's ``optuna_trial`` tag names that trial, as the trial's ``mlflow_run_id`` names the run."""
    import optuna

    from bench.cli import main
    from bench.run.study import open_storage
    from conftest import find_study

    args = ["run", "--methods", "linear", "--tasks", "digits", "--seeds", "1", "--trials", "1", "--epochs", "1",
            "--jobs", "1", "--no-report", "--out", str(tmp_path)]
    assert main(args) == 0
    spec = build_spec(RunRequest.from_args(build_parser().parse_args(args)))
    runner = protocol.Runner(spec)
    task = spec.tasks[0]
    storage = open_storage(None, tmp_path)
    study = optuna.load_study(study_name=find_study(storage, "linear", "digits", final=True).study_name,
                              storage=storage)
    first, = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    study.enqueue_trial({}, user_attrs={k: first.user_attrs[k] for k in ("seed", "params", "run_key", "source")})
    trial = study.ask()  # the re-enqueued fit, as the stale-trial retry gives it to the next worker
    acc, fitted_now = runner.final_fit("linear", task, trial)
    run = runner.client.get_run(first.user_attrs["mlflow_run_id"])
    assert not fitted_now and acc == run.data.metrics[tracking.TEST_ACC]
    assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    assert run.data.tags["optuna_trial"] == str(trial.number) != str(first.number)
