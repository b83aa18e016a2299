"""Regression tests of the runner's protocol (issue 11, "numbers a reviewer can trust"): each one
failed on the code before its fix. The report's side (cells, stale marks, failed seeds) is in
test_report.py, the methods' side (weight decay, head init, adapter fidelity) in test_methods.py."""
from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest

from bench.run import protocol
from bench.run import spec as spec_mod
from bench.run.split_guard import SplitGuard
from bench import tracking, train
from bench.cli import main
from bench.run.study import open_study


def _spec(tmp_path, methods=("linear",), **overrides):
    args = dict(suite="demo", tasks="digits", trials=1, epochs=1, seeds="1", device="cpu", out=str(tmp_path))
    return spec_mod.build_spec(spec_mod.RunRequest(**{**args, **overrides}, methods=",".join(methods)))


def _finals(out):
    client = mlflow.MlflowClient(tracking.default_tracking_uri(out))
    exp = client.get_experiment_by_name(tracking.experiment_name("demo"))
    return client, client.search_runs([exp.experiment_id], "tags.phase = 'final'", max_results=1000)


def test_last_epoch_runs_at_the_end_of_the_cosine_and_the_leaderboard_goes_under_out(tmp_path):
    """Item 1: the schedule lasts warmup + cosine = the whole budget, so the last epoch (the one
    reported) ends at the minimum. Before, it ended at 25% of the peak here (3 epochs, 1 warm-up).
    Item 17: the run's leaderboard goes under --out; the committed reports/ are not touched."""
    committed = Path(__file__).resolve().parents[1] / "reports" / "demo.md"
    before = committed.read_bytes() if committed.exists() else None
    assert main(["run", "--methods", "linear", "--tasks", "digits", "--epochs", "3", "--trials", "1",
                 "--seeds", "1", "--out", str(tmp_path), "--jobs", "1"]) == 0
    client, (run,) = _finals(tmp_path)
    peak = float(run.data.params["lr"])
    lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
    assert len(lrs) == 3
    assert lrs[-1] <= 0.02 * peak  # the lr of the last epoch's last step
    assert lrs[0] == pytest.approx(peak, rel=0.1)  # the warm-up epoch ends near the peak
    assert (tmp_path / "demo.md").is_file() and (tmp_path / "demo_params.png").is_file()
    assert (committed.read_bytes() if committed.exists() else None) == before


def test_final_fits_are_keyed_on_their_hyperparameters(tmp_path):
    """Item 3: a final fit with other hyperparameters (after a re-tune) is another fit with its own
    checkpoint, not 'done' because an older one exists; the same fit again is skipped."""
    runner = protocol.Runner(_spec(tmp_path))
    task = runner.spec.tasks[0]
    a = {"lr": 1e-3, "weight_decay": 1e-4}
    b = {"lr": 3e-3, "weight_decay": 1e-4}
    assert runner.run_key("linear", task, 1, a) != runner.run_key("linear", task, 1, b)
    assert len(runner.finals("linear", task, a, "test")) == 1
    assert len(runner.finals("linear", task, b, "test")) == 1  # before: skipped as done
    assert runner.finals("linear", task, a, "test") == []
    _, runs = _finals(tmp_path)
    assert sorted(float(r.data.params["lr"]) for r in runs) == [1e-3, 3e-3]
    assert all(r.data.tags[tracking.EXPERIMENT_TAG] for r in runs)


def test_linear_probe_features_come_from_the_eval_transform(tmp_path, monkeypatch):
    """Item 5: features are computed once and reused every epoch, so the linear probe must not
    read the training transform (FGVC: one random crop frozen for the whole run)."""
    seen = []
    real_open, real_fit = SplitGuard.open, train.fit

    def open_(self, task, split, train=False, flip=False):
        ds = real_open(self, task, split, train=train, flip=flip)
        seen.append((split, train))
        return ds

    def fit(model, train_ds, cfg, *args, **kwargs):
        seen.append(("fit", model.peft_method))
        return real_fit(model, train_ds, cfg, *args, **kwargs)

    monkeypatch.setattr(SplitGuard, "open", open_)
    monkeypatch.setattr(train, "fit", fit)
    runner = protocol.Runner(_spec(tmp_path, methods=("linear", "lora")))
    runner.run()
    train_splits = {"train800", "train800val200"}
    opened_for = {}
    method = None
    for split, value in reversed(seen):  # each fit follows the splits opened for it
        if split == "fit":
            method = value
        elif split in train_splits:
            opened_for.setdefault(method, set()).add(value)
    assert opened_for == {"linear": {False}, "lora": {True}}


def test_no_pruning_inside_the_warmup(tmp_path):
    """Item 7: with a 10-epoch warm-up a trial far below the median survives epochs 0-9 and may be
    pruned from epoch 10 (before: from epoch 1)."""
    storage = optuna.storages.InMemoryStorage()
    study, created = open_study(storage, "s", seed=0, warmup_epochs=10)
    assert created and not open_study(storage, "s", seed=0)[1]  # the second opener loads it
    for _ in range(2):
        t = study.ask()
        for step in range(12):
            t.report(90.0, step)
        study.tell(t, 90.0)
    low = study.ask()
    for step in range(10):
        low.report(10.0, step)
        assert not low.should_prune(), f"pruned at epoch {step}, inside the warm-up"
    low.report(10.0, 10)
    assert low.should_prune()


def test_hparam_values_are_typed_by_the_hyperparameter():
    """Item 11: alpha is a number (its default happens to be the int 8); rank is an integer."""
    assert spec_mod.parse_fixed(["lora.alpha=0.5"], ["lora"]) == {"lora": {"alpha": 0.5}}
    assert spec_mod.parse_fixed(["lora.rank=4", "lora.alpha=16"], ["lora"]) == {"lora": {"rank": 4, "alpha": 16}}
    assert spec_mod.parse_fixed(["vpt.mode=shallow"], ["vpt"]) == {"vpt": {"mode": "shallow"}}


def test_a_real_suite_needs_weights_or_an_explicit_random_init(tmp_path, capsys):
    """Item 15: no silent random ViT-B/16 next to the paper's numbers."""
    data = tmp_path / "data"
    data.mkdir()
    code = main(["run", "--suite", "vtab1k", "--data-root", str(data), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "pass --pretrained FILE (or --pretrained none" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    spec = _spec(tmp_path, pretrained="none")
    assert spec.random_init and spec.pretrained is None
    runner = protocol.Runner(spec)
    assert runner.weights_sha256 == "none"
    assert runner.experiment("linear").weights_sha256 == "none"
    from bench.backbones import create_demo
    assert not runner.backbone.state_dict()["pos_embed"].equal(create_demo().state_dict()["pos_embed"])
