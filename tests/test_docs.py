"""The documentation: the MkDocs site in docs/ builds strictly (a broken link or anchor fails it),
every page is reachable from the nav, the README's relative links point at files that exist, the
generated reference pages (docs/reference/, ``python -m bench.reference_docs``) are current, and the
tracking schema they show is what a real run records."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_mkdocs_builds_strictly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for page in ("index.html", "getting-started/index.html", "measurements/index.html", "reports/demo/index.html",
                 "reports/demo_params.png", "datasets/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


def _nav_files(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True and config["docs_dir"] == "docs"
    nav = set(_nav_files(config["nav"]))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages and pages <= nav, pages - nav
    for f in nav:
        assert (ROOT / "docs" / f).is_file(), f


def _slug(heading: str) -> str:
    """The anchor of a markdown heading, as MkDocs (and GitHub, for these headings) makes it."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", text))


def test_readmes_relative_links_point_at_existing_files():
    links = [t for t in LINK.findall(README) if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert len(links) >= 12  # the docs pages, the demo report, its plot, the data notes
    for target in links:
        path, _, anchor = target.partition("#")
        file = ROOT / path
        assert file.is_file(), f"README.md links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+\s+(.*)$", file.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to {target}: no such heading"
    for page in (ROOT / "docs").glob("*.md"):  # every page is linked from the README
        assert f"docs/{page.name}" in links or page.name == "index.md", page.name


def test_readme_is_short_and_keeps_no_dated_measurements_or_commits():
    assert len(README.splitlines()) <= 200
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", README), "dated measurements belong in docs/measurements.md"
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", README) if re.search(r"[a-f]", w) and re.search(r"\d", w)]
    assert not hashes, f"commit hashes belong in docs/measurements.md: {hashes}"


# -- the generated reference pages (bench.reference_docs) -------------------------------------------

def test_the_generated_reference_pages_are_current():
    """docs/reference/*.md are what the generator writes now (the registry's counts and attributes,
    bench.tracking_schema.SCHEMA): a changed method or schema without the pages regenerated fails."""
    from bench import reference_docs

    stale = []
    for name, page in reference_docs.PAGES.items():
        path = ROOT / reference_docs.REFERENCE / name
        if not path.is_file() or path.read_text() != page():
            stale.append(f"docs/reference/{name}")
    assert not stale, f"{', '.join(stale)} differ from what the code generates: run python -m bench.reference_docs"


def test_every_method_names_its_paper_and_official_code():
    import methods
    from bench.reference_docs import builtin_methods

    names = builtin_methods()
    assert {"lora", "linear", "fact_tk", "gps"} <= set(names) and set(names) <= set(methods.names())
    missing = {attr: [n for n in names if not str(getattr(methods.get(n), attr, "") or "").strip()]
               for attr in ("paper", "code")}
    if any(missing.values()):
        pytest.fail("methods without " + "; ".join(f"`{attr}`: {', '.join(ns)}" for attr, ns in missing.items() if ns)
                    + " (class attributes of the method: the generated methods page shows them)")


# -- the tracking schema against what a real run records ---------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A finished micro run (linear on digits: one trial, one epoch, one seed): its trial and final
    MLflow runs and its Optuna storage."""
    import mlflow

    from bench import tracking
    from bench.cli import main

    out = tmp_path_factory.mktemp("schema") / "run"
    assert main(["run", "--methods", "linear", "--tasks", "digits", "--trials", "1", "--epochs", "1", "--seeds", "1",
                 "--jobs", "1", "--out", str(out)]) == 0
    client = mlflow.MlflowClient(tracking.sqlite_url(out / "mlflow.db"))
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    by_phase = {}
    for run in runs:
        assert run.info.status == "FINISHED"
        by_phase.setdefault(run.data.tags["phase"], []).append(run)
    assert {p: len(rs) for p, rs in by_phase.items()} == {tracking.PHASE_TRIAL: 1, tracking.PHASE_FINAL: 1}
    return {p: rs[0] for p, rs in by_phase.items()}, tracking.sqlite_url(out / "optuna.db")


def _against_schema(store: str, phase: str, held: set[str], groups: set[str] = frozenset()) -> list[str]:
    """What is wrong with the names ``held`` in ``store`` for ``phase``: names the schema does not
    declare (beyond the names of ``groups``), declared always-present names that are missing."""
    from bench import tracking_schema

    declared = tracking_schema.declared(store, phase)
    problems = [f"{store} {n!r} ({phase}) is not in bench.tracking_schema.SCHEMA" for n in sorted(held - set(declared) - groups)]
    problems += [f"{store} {n!r} ({phase}) is declared always present but missing" for n in sorted(groups - held)]
    problems += [f"{store} {n!r} ({phase}) is declared always present but missing"
                 for n, f in sorted(declared.items()) if not f.when and n not in held]
    return problems


@pytest.mark.parametrize("phase", ["trial", "final"])
def test_a_runs_mlflow_tags_params_and_metrics_are_the_schemas(demo_run, phase):
    from bench import tracking_schema

    run = demo_run[0][phase]
    hparams = tracking_schema.group_names(tracking_schema.HPARAMS, "linear")  # no recipe: no recipe settings
    problems = (_against_schema(tracking_schema.MLFLOW_TAG, phase, set(run.data.tags))
                + _against_schema(tracking_schema.MLFLOW_PARAM, phase, set(run.data.params), hparams)
                + _against_schema(tracking_schema.MLFLOW_METRIC, phase, set(run.data.metrics)))
    assert not problems, "\n".join(problems)


def test_the_optuna_study_and_trial_attributes_are_the_schemas(demo_run):
    from conftest import find_study

    from bench import tracking, tracking_schema

    problems = []
    for phase in (tracking.PHASE_TRIAL, tracking.PHASE_FINAL):
        study = find_study(demo_run[1], "linear", "digits", final=phase == tracking.PHASE_FINAL)
        problems += _against_schema(tracking_schema.OPTUNA_STUDY, phase, set(study.user_attrs))
        assert study.trials
        for trial in study.trials:  # one tuning trial (the default trial), one final fit: all trained
            assert trial.state.name == "COMPLETE"
            problems += _against_schema(tracking_schema.OPTUNA_TRIAL, phase, set(trial.user_attrs))
    assert not problems, "\n".join(problems)


def test_the_schema_declares_every_experiment_field_and_recipe_setting():
    """Params a demo run does not log (a plugin's provenance, a recipe's settings) are declared too."""
    from dataclasses import fields

    from bench import recipes, tracking_schema
    from bench.identity import Experiment

    params = {f.name for f in tracking_schema.SCHEMA if f.store == tracking_schema.MLFLOW_PARAM and not f.group}
    assert {f.name for f in fields(Experiment)} - {"fixed"} <= params
    assert set(recipes.TRAIN_KEYS) <= params | tracking_schema.group_names(tracking_schema.RECIPE_SETTINGS, "")
    keys = [(f.store, f.name) for f in tracking_schema.SCHEMA if not f.group]
    assert len(keys) == len(set(keys)), "a name declared twice in one store"
