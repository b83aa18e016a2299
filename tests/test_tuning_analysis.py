"""Issue 15, tuning analysis: the default trial against the tuned best, best-so-far
against the number of trials, importances, on small Optuna storages made here the way the runner
opens and fills its studies (identified by the experiment each stores, never by name); which storage `bench report` reads, and that it never creates one."""
from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

import methods
from bench import catalog, cli, tracking
from bench.identity import Experiment
from bench.report import tuning
from bench.run.study import COMMON_DEFAULTS, ROLE_FINAL, ROLE_TUNING, open_storage, open_study

DEMO = catalog.load_suite("demo")
SPACE = {"lr": FloatDistribution(5e-5, 5e-2, log=True), "weight_decay": FloatDistribution(1e-5, 1e-1, log=True),
         "rank": IntDistribution(1, 64), "alpha": IntDistribution(1, 64),
         "num_prompts": IntDistribution(1, 50), "prompt_dropout": FloatDistribution(0.0, 0.5)}


def defaults(method: str, fixed: dict | None = None) -> dict:
    """What the runner enqueues as a study's first trial (``Runner.defaults``)."""
    return {**COMMON_DEFAULTS, **methods.get(method).defaults, **(fixed or {})}


def cell(method: str, task: str, fixed: dict | None = None, backbone: str = DEMO.backbone, suite: str = "demo"):
    """The cell a runner's study of this (method, task) stores (``Runner.cell``)."""
    return Experiment(suite=suite, backbone=backbone, weights_sha256="w" * 64, method=method,
                      fixed=tuple((fixed or {}).items()), epochs=4, warmup_epochs=1, batch_size=32,
                      trials=4, drop_path_rate=0.0).on(task, "d" * 64)


def run_trial(study, params: dict, value: float | None, state=TrialState.COMPLETE, first: bool = False) -> None:
    """Enqueue ``params``, ask, suggest the searched ones (a fixed variant value is not searched),
    tell: the path of a runner trial; ``first``: the default trial the runner enqueues."""
    study.enqueue_trial(params, user_attrs={"default_trial": True} if first else None)
    trial = study.ask()
    for name, dist in SPACE.items():
        if name in params:
            if isinstance(dist, FloatDistribution):
                trial.suggest_float(name, dist.low, dist.high, log=dist.log)
            else:
                trial.suggest_int(name, dist.low, dist.high)
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)


def fill(storage) -> None:
    """Studies of the demo suite and others that must be ignored.

    demo.lora.digits: default 50, then 60, a pruned trial, 55 -> gap +10, best at trial 2 of 4.
    demo.lora.textures: default 70 is the best (gap 0, best at trial 1 of 2).
    demo.vpt[mode=shallow].digits: default (with the fixed mode) 30, then 40 -> gap +10, best at 2 of 2.
    demo@vit_base_patch16_224.lora.digits: another backbone, default pruned: no gap, best 20.
    """
    def study(c, final=False):
        return open_study(storage, c.study_name() + ("/final" if final else ""), 0, c,
                          ROLE_FINAL if final else ROLE_TUNING)[0]

    lora = defaults("lora")
    other = {**lora, "lr": 0.01, "rank": 4}
    s = study(cell("lora", "digits"))
    run_trial(s, lora, 50.0, first=True)
    run_trial(s, other, 60.0)
    run_trial(s, {**other, "lr": 0.02}, None, TrialState.PRUNED)
    run_trial(s, {**other, "lr": 0.03}, 55.0)
    run_trial(s, {**other, "lr": 0.04}, None, TrialState.FAIL)  # not finished: never counted
    s = study(cell("lora", "textures"))
    run_trial(s, lora, 70.0, first=True)
    run_trial(s, other, 65.0)
    shallow = defaults("vpt", {"mode": "shallow"})
    s = study(cell("vpt", "digits", {"mode": "shallow"}))
    run_trial(s, shallow, 30.0, first=True)
    run_trial(s, {**shallow, "lr": 0.01, "num_prompts": 20}, 40.0)
    s = study(cell("lora", "digits", backbone="vit_base_patch16_224"))
    run_trial(s, lora, None, TrialState.PRUNED, first=True)
    run_trial(s, other, 20.0)
    # not tuning studies of the demo suite: a final-fit study, another suite, a task the suite does
    # not have, and a study of an older version (no stored identity) named as those were
    run_trial(study(cell("lora", "digits"), final=True), lora, 99.0)
    run_trial(study(cell("lora", "cifar", suite="vtab1k")), lora, 99.0)
    run_trial(study(cell("lora", "nosuchtask")), lora, 99.0)
    run_trial(optuna.create_study(study_name="demo.lora.digits", storage=storage, direction="maximize"), lora, 99.0)


@pytest.fixture(scope="module")
def journal(tmp_path_factory):
    path = tmp_path_factory.mktemp("optuna") / "optuna.journal"
    fill(open_storage(str(path), path.parent))
    return path


def by_label(results):
    return {(r.label, r.task): r for r in results}


def test_default_gap_best_so_far_and_what_is_ignored(journal):
    results, skipped = tuning.collect(tuning.open_existing(journal), DEMO)
    got = by_label(results)
    assert sorted(got) == [("lora", "digits"), ("lora", "textures"), ("lora [vit_base_patch16_224]", "digits"),
                           ("vpt (mode=shallow)", "digits")]
    assert skipped == 4
    r = got[("lora", "digits")]
    assert (r.finished, r.default, r.best, r.best_at) == (4, 50.0, 60.0, 2)
    assert r.curve == [50.0, 60.0, 60.0, 60.0]
    assert got[("lora", "textures")].best_at == 1 and got[("lora", "textures")].default == 70.0
    v = got[("vpt (mode=shallow)", "digits")]
    assert (v.default, v.best, v.best_at) == (30.0, 40.0, 2)  # the fixed mode is part of the defaults
    other = got[("lora [vit_base_patch16_224]", "digits")]
    assert math.isnan(other.default) and other.best == 20.0 and other.curve[0] != other.curve[0]  # NaN first

    table = tuning.per_method(results)
    lora = table.loc["lora"]
    assert (lora.studies, lora.trials_min, lora.trials_max, lora.with_default) == (2, 2, 4, 2)
    assert lora.default == 60.0 and lora.tuned == 65.0  # (50 + 70) / 2 and (60 + 70) / 2
    assert lora.gap == 5.0 and lora.max_gap == 10.0 and lora.default_best == 1
    assert lora.best_at_median == 1.5 and lora.late == 0  # trial 2 of 4 and 1 of 2: neither in the last quarter
    assert table.loc["vpt (mode=shallow)"].late == 1  # its best came at its last trial
    assert table.loc["lora [vit_base_patch16_224]"].with_default == 0  # the default was pruned
    # best-so-far minus the final best, mean over studies, a shorter study holding its last value
    curve = tuning.shortfall_curves(results)["lora"]
    assert list(curve) == [-5.0, 0.0, 0.0, 0.0]  # digits -10, 0, 0, 0; textures 0, 0 (held)
    imp = lora.importances
    assert set(imp) == {"lr", "weight_decay", "rank", "alpha"} and sum(imp.values()) == pytest.approx(1.0)


def test_the_section_and_its_plot(journal):
    results, _ = tuning.collect(tuning.open_existing(journal), DEMO)
    lines, pngs = tuning.section(results, "`optuna.journal`", "demo", "Demo")
    text = "\n".join(lines)
    assert "From 4 studies in `optuna.journal`" in text
    assert "| lora    " in text and "| +5.0  " in text
    assert "![Tuning: best-so-far and default-to-tuned gap](demo_tuning.png)" in text
    assert "With at most 4 finished trials per study (under 10), these are rough" in text
    assert list(pngs) == ["demo_tuning.png"] and pngs["demo_tuning.png"][:8] == b"\x89PNG\r\n\x1a\n"
    again, _ = tuning.collect(tuning.open_existing(journal), DEMO)
    assert tuning.section(again, "`optuna.journal`", "demo", "Demo") == (lines, pngs)  # deterministic


def test_the_default_trial_is_the_one_the_runner_enqueued_not_a_text_match():
    """The defaults trial is marked by the runner, not recognised by comparing values as text (a
    fixed value read back from a study name was a string, so 0.5 and "0.5" had to be equated)."""
    lora = defaults("lora")
    dists = {k: SPACE[k] for k in lora}
    marked = optuna.trial.create_trial(params={**lora, "rank": 4}, distributions=dists, value=1.0,
                                       user_attrs={"default_trial": True})
    assert tuning.is_default(marked)
    same_values = optuna.trial.create_trial(params=lora, distributions=dists, value=1.0)
    assert not tuning.is_default(same_values)  # sampled onto the defaults: still a tuned trial


def test_default_storage_prefers_sqlite_then_journal_and_creates_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tuning.default_storage(uri) is None
    (tmp_path / "optuna.journal").write_text("")
    assert tuning.default_storage(uri) == tmp_path / "optuna.journal"
    (tmp_path / "optuna.db").write_bytes(b"")
    assert tuning.default_storage(uri) == tmp_path / "optuna.db"
    assert tuning.default_storage("http://localhost:5000") is None
    with pytest.raises(Exception, match="no Optuna storage at"):
        tuning.open_existing(tmp_path / "missing" / "optuna.journal")
    with pytest.raises(Exception, match="no Optuna storage at"):
        tuning.open_existing(f"sqlite:///{tmp_path / 'missing.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.db", "optuna.journal"]


@pytest.fixture
def demo_store(tmp_path):
    """A demo MLflow store of two final runs, with the journal's studies in an optuna.db beside it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.connect(uri)
    exp = tracking.experiment_id(client, "demo")
    for method, acc in (("lora", 60.0), ("vpt", 40.0)):
        tags = {"phase": tracking.PHASE_FINAL, "suite": "demo", "method": method, "task": "digits",
                "group": "Natural", "seed": 1, "git_commit": "abc",
                tracking.EXPERIMENT_TAG: cell(method, "digits").experiment.to_json()}
        with tracking.TrackedRun(client, exp, method, tags, {"method": method, "backbone": "demo"}) as run:
            run.log_metrics({tracking.TEST_ACC: acc, tracking.PARAMS_BACKBONE: 100, tracking.PARAMS_TOTAL: 110})
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    fill(storage)
    storage.engine.dispose()
    return tmp_path, uri


def test_report_reads_the_storage_beside_the_store(demo_store, capsys, monkeypatch):
    monkeypatch.setattr(tracking, "git_commit", lambda: "unknown")
    folder, uri = demo_store
    before = sorted(p.name for p in folder.iterdir())
    out = folder / "out"
    assert cli.main(["report", "--suite", "demo", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert str(out / "demo_tuning.png") in capsys.readouterr().out.split()
    md = (out / "demo.md").read_text()
    assert "## Tuning (Optuna)" in md and "From 4 studies in `optuna.db`" in md
    # one task: no tests, and the statistics section says why
    assert "Tests omitted: the compared rows share 1 task(s); tests over tasks need at least 5" in md
    assert sorted(p.name for p in folder.iterdir()) == sorted(before + ["out"])  # nothing created beside


def test_report_storage_flag_missing_file_is_one_line(tmp_path, capsys):
    (tmp_path / "mlflow.db").write_bytes(b"")  # the MLflow check only needs the file
    code = cli.main(["report", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "o"),
                     "--storage", str(tmp_path / "nope.journal")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: no Optuna storage at ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]
