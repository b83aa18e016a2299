"""Installable like any Python tool (issue 17): the catalog is package data, the wheel carries it,
`python -m bench` / `bench --version` work, git provenance never names another project's commit,
and our stores open in the field's own viewers (`mlflow server`, `optuna-dashboard`)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from bench import catalog, cli, report, tracking

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- entry points

def test_python_m_bench_prints_the_version_from_pyproject():
    out = subprocess.run([sys.executable, "-m", "bench", "--version"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"bench {PYPROJECT['project']['version']}"


def test_bench_console_script_version_and_python_m_bench_runs_a_subcommand():
    script = BIN / "bench"
    if script.exists():
        out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == f"bench {PYPROJECT['project']['version']}"
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--suite", "nope", "--dry-run"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: unknown suite 'nope'; known: demo, fgvc, vtab1k"


# --------------------------------------------------------------------------- package data

def test_the_catalog_is_package_data_read_through_importlib_resources():
    from importlib import resources

    assert str(catalog.CATALOG_DIR) == str(resources.files("bench") / "catalog_data")
    assert catalog.suite_names() == ["demo", "fgvc", "vtab1k"]
    for name in catalog.suite_names():
        assert catalog.load_suite(name).tasks
    assert report.load_reference("vtab1k") is not None and "linear" in report.load_reference("vtab1k").index
    assert report.load_reference("fgvc") is not None
    assert report.load_reference("demo") is None
    # one source of truth: no catalog file is left beside the packages
    assert not list((ROOT / "datasets").rglob("*.toml")) and not list((ROOT / "datasets").rglob("*.csv"))


def test_package_data_globs_cover_every_data_file_bench_reads():
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["bench"]
    pkg = ROOT / "bench"
    data = [p for p in (pkg / "catalog_data").rglob("*") if p.is_file()] + list((pkg / "assets").iterdir())
    assert data
    for p in data:
        assert any(p.relative_to(pkg).match(g) for g in globs), f"{p} is not shipped in the wheel"


def test_the_wheel_carries_the_catalog_the_reference_numbers_and_the_weights(tmp_path):
    # built from a copy: setuptools builds in-tree, and a stale build/ would leak old files into the wheel
    src = tmp_path / "src"
    for name in ("bench", "methods"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("peft_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("bench/catalog_data/demo.toml", "bench/catalog_data/vtab1k.toml", "bench/catalog_data/fgvc.toml",
                   "bench/catalog_data/reference/vtab1k_reported.csv",
                   "bench/catalog_data/reference/fgvc_reported.csv", "bench/assets/demo_vit.safetensors",
                   "bench/catalog_data/recipes/rlrr-paper.toml", "bench/catalog_data/recipes/noah-paper.toml",
                   "bench/__main__.py", "methods/__init__.py", "methods/families/__init__.py",
                   "methods/families/swin.py"):
        assert needed in names
    assert not any(n.startswith(("datasets/", "tests/")) for n in names)  # never a top-level `datasets`


# --------------------------------------------------------------------------- git provenance

def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_is_unknown_outside_the_packages_own_checkout(tmp_path, monkeypatch):
    plain = tmp_path / "site-packages"  # an installed wheel: no repository at all
    plain.mkdir()
    assert tracking.git_commit(plain) == "unknown"
    repo = tmp_path / "project"  # a venv made inside some other project's checkout
    inner = repo / ".venv" / "lib" / "python3.11" / "site-packages"
    inner.mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "f").write_text("x")
    _git(repo, "add", "f")
    _git(repo, "commit", "-q", "-m", "x")
    assert tracking.git_commit(inner) == "unknown"
    assert tracking.git_commit(repo) == _git(repo, "rev-parse", "--short=12", "HEAD")
    monkeypatch.chdir(repo)  # the user's cwd never decides
    assert tracking.git_commit(plain) == "unknown"


# --------------------------------------------------------------------------- the field's viewers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, data: dict | None = None):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


class _Server:
    """A viewer started as a subprocess in its own process group; stopped (with its workers) on exit."""

    def __init__(self, cmd: list[str], cwd: Path, log: Path):
        self.log = log
        self.fh = log.open("w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for(self, url: str, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"viewer exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                return _get_json(url)
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                time.sleep(0.5)
        pytest.fail(f"viewer did not answer {url} in {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # the group's workers (uvicorn, huey, gunicorn) must not outlive the test
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=15)
        self.fh.close()


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("viewers") / "runs"
    code = cli.main(["run", "--methods", "linear", "--tasks", "digits", "--epochs", "1", "--trials", "1",
                     "--seeds", "1", "--jobs", "1", "--out", str(out)])
    assert code == 0
    return out


def _viewer(name: str) -> str:
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}: pip install -e '.[test]'")
    return str(exe)


def test_mlflow_server_shows_the_runs_params_and_metrics(micro_run):
    port = _free_port()
    server = _Server([_viewer("mlflow"), "server", "--backend-store-uri", f"sqlite:///{micro_run / 'mlflow.db'}",
                      "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                     cwd=micro_run.parent, log=micro_run.parent / "mlflow_server.log")
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        exp = server.wait_for(f"{base}/experiments/get-by-name?experiment_name=peft-bench%2Fdemo")["experiment"]
        runs = _get_json(f"{base}/runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                 "filter": "tags.phase = 'final'"})["runs"]
        assert len(runs) == 1
        params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
        assert params["method"] == "linear" and "lr" in params
        assert 0 <= metrics["test_acc"] <= 100
        assert runs[0]["info"]["status"] == "FINISHED"
    finally:
        server.stop()


def test_optuna_dashboard_opens_the_runs_storage(micro_run):
    port = _free_port()
    server = _Server([_viewer("optuna-dashboard"), f"sqlite:///{micro_run / 'optuna.db'}", "--host", "127.0.0.1",
                      "--port", str(port)], cwd=micro_run.parent, log=micro_run.parent / "optuna_dashboard.log")
    try:
        studies = server.wait_for(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        names = {s["study_name"]: s["study_id"] for s in studies}
        tuning, final = sorted(names)  # no bookkeeping studies: the readable name, its identity's hash
        assert tuning.startswith("demo.linear.digits#") and final == tuning + "/final"
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{names[tuning]}")
        assert len(detail["trials"]) == 1 and detail["trials"][0]["state"] == "Complete"
        fits = _get_json(f"http://127.0.0.1:{port}/api/studies/{names[final]}")["trials"]
        attrs = {a["key"]: a["value"] for a in fits[0]["user_attrs"]}
        assert fits[0]["state"] == "Complete" and {"seed", "run_key", "mlflow_run_id"} <= set(attrs)
    finally:
        server.stop()


def test_ci_runs_exactly_the_readmes_test_command_then_the_wheel_check():
    import re

    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b and b.strip().startswith("python3 -m venv"))
    assert test_cmd == "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci
    rest = "\n".join(ci[ci.index(test_cmd):])
    assert "pip wheel" in rest and "bench\" run" in rest and "test -s out/demo.md" in rest
