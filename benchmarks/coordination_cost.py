"""What coordinating a sweep's workers costs as the Optuna storage fills up (issue 12).

Workers used to coordinate through claim studies (``claim:<key>#<n>``) and every check listed
ALL studies of the storage, so a check got slower with every study a sweep had created. The
checks of ``bench.run.coordination`` read one study each. This script measures both:

(a) per-check cost with 100 and 10,000 unrelated studies in an SQLite storage, for the new checks
    and for the old one (``OldClaims.is_done``, the pre-issue-12 code copied below);
(b) a small real ``bench run`` against an empty storage and one already holding 20,000 unrelated
    studies (alternating repetitions; medians and their ratio), and how many studies one run
    leaves in the storage.

Filler studies are written with raw SQL in one transaction (Optuna's ``create_new_study`` takes
~17 ms each on SQLite); each gets a direction and the three user attributes a claim study carried
(owner, heartbeat, done), and Optuna is checked to list them all.

    .venv/bin/python benchmarks/coordination_cost.py                 # (a) and (b)
    .venv/bin/python benchmarks/coordination_cost.py --runs 0        # (a) only
    git archive b20ff07 | tar -x -C /tmp/old                        # the pre-issue-12 code, to
    .venv/bin/python benchmarks/coordination_cost.py --old-tree /tmp/old   # run (b) with it too
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna

from bench.run import study as tune
from bench.tracking import sqlite_url
from bench.run.coordination import FinalFits, TrialBudget, final_study_name, owner_alive, owner_id

warnings.filterwarnings("ignore")  # Optuna's experimental/heartbeat warnings, once per call
REPO = Path(__file__).resolve().parents[1]
FILLER = "unrelated:"
BENCH_ARGS = ["--methods", "linear,lora", "--tasks", "digits", "--trials", "2", "--seeds", "1,2",
              "--epochs", "1", "--jobs", "1", "--no-report"]


class OldClaims:
    """The pre-issue-12 code (``git show b20ff07:bench/tune.py``), kept for the comparison only:
    exactly-once final fits through claim studies; every check lists all studies."""

    def __init__(self, storage, stale_s: float = 1800.0):
        self.storage = storage
        self.stale_s = stale_s
        self._current: dict[str, int] = {}
        self._first_seen: dict[str, float] = {}

    def _attempts(self, key: str) -> list:
        prefix = f"claim:{key}#"
        return sorted((s for s in self.storage.get_all_studies() if s.study_name.startswith(prefix)),
                      key=lambda s: int(s.study_name.rsplit("#", 1)[1]))

    def acquire(self, key: str, force: bool = False) -> bool:
        attempts = self._attempts(key)
        if attempts and not force and self._held(attempts[-1]):
            return False
        attempt = len(attempts)
        try:
            sid = self.storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], f"claim:{key}#{attempt}")
        except optuna.exceptions.DuplicatedStudyError:
            return False
        self._current[key] = sid
        self.beat(key)
        self.storage.set_study_user_attr(sid, "owner", owner_id())
        return True

    def _held(self, attempt) -> bool:
        attrs = attempt.user_attrs
        if attrs.get("done"):
            return True
        if "heartbeat" not in attrs:
            first_seen = self._first_seen.setdefault(attempt.study_name, time.time())
            return time.time() - first_seen < self.stale_s
        fresh = time.time() - float(attrs["heartbeat"]) < self.stale_s
        return fresh and owner_alive(attrs.get("owner", ""))

    def is_done(self, key: str) -> bool:
        attempts = self._attempts(key)
        return bool(attempts) and bool(attempts[-1].user_attrs.get("done"))

    def beat(self, key: str) -> None:
        self.storage.set_study_user_attr(self._current[key], "heartbeat", time.time())

    def done(self, key: str) -> None:
        self.storage.set_study_user_attr(self._current[key], "done", True)


def fill(db: Path, n: int) -> None:
    """An SQLite Optuna storage at ``db`` holding ``n`` unrelated claim-like studies."""
    storage = tune.open_storage(sqlite_url(db), db.parent)  # creates the schema
    attrs = {"owner": json.dumps("otherhost:1"), "heartbeat": json.dumps(time.time()), "done": json.dumps(True)}
    with sqlite3.connect(db) as con:
        start = con.execute("SELECT COALESCE(MAX(study_id), 0) FROM studies").fetchone()[0] + 1
        ids = range(start, start + n)
        con.executemany("INSERT INTO studies (study_id, study_name) VALUES (?, ?)",
                        ((i, f"{FILLER}sweep.m{i % 7}.t{i}/trial{i % 20}#0") for i in ids))
        con.executemany("INSERT INTO study_directions (direction, study_id, objective) VALUES ('MAXIMIZE', ?, 0)",
                        ((i,) for i in ids))
        con.executemany('INSERT INTO study_user_attributes (study_id, "key", value_json) VALUES (?, ?, ?)',
                        ((i, k, v) for i in ids for k, v in attrs.items()))
    seen = sum(s.study_name.startswith(FILLER) for s in storage.get_all_studies())
    assert seen >= n, f"Optuna lists {seen} of the {n} filler studies"


def median_ms(fn, reps: int) -> float:
    fn()  # warm: first-call imports and caches
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def check_costs(n: int, tmp: Path, reps: int, trials: int = 20, seeds: int = 5) -> dict[str, float]:
    """Median ms per check with ``n`` unrelated studies in the storage; the measured studies hold a
    finished sweep's (method, task): ``trials`` complete trials and ``seeds`` complete final fits."""
    db = tmp / f"checks_{n}.db"
    fill(db, n)
    storage = tune.open_storage(sqlite_url(db), tmp)
    name = "demo.lora.digits"
    study, _ = tune.open_study(storage, name, seed=1)
    for _ in range(trials):
        study.tell(study.ask(), 0.5)
    budget = TrialBudget(storage, study, trials)
    final, created = tune.open_study(storage, final_study_name(name), seed=0)
    fits = FinalFits(storage, final, created)
    fits.ensure_queued({f"key{s}": {"seed": s, "params": {}, "source": "trial 0"} for s in range(seeds)},
                       finished=lambda key: False)
    while (trial := fits.pop()) is not None:
        final.tell(trial, 0.5)
    busy, _ = tune.open_study(storage, "demo.linear.digits", seed=2)
    busy_budget = TrialBudget(storage, busy, 10**6)
    old = OldClaims(storage)
    assert old.acquire(f"{name}/trial0")
    old.done(f"{name}/trial0")

    def ask_tell():
        busy.tell(busy_budget.ask(), 0.5)

    assert budget.ask() is None and budget.complete() and fits.pop() is None and old.is_done(f"{name}/trial0")
    return {
        "new: `TrialBudget.ask()` (budget taken: None)": median_ms(budget.ask, reps),
        "new: `TrialBudget.complete()`": median_ms(budget.complete, reps),
        "new: `FinalFits.pop()` (empty queue)": median_ms(fits.pop, reps),
        "new: `open_study` (existing study)": median_ms(lambda: tune.open_study(storage, name, seed=1), reps),
        "new: `TrialBudget.ask()` + `tell` (one trial, writes)": median_ms(ask_tell, reps),
        "old: `Claims.is_done(key)`": median_ms(lambda: old.is_done(f"{name}/trial0"), reps),
    }


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_run(db: Path, out: Path, tree: Path = REPO) -> tuple[float, float, int]:
    """(wall s, CPU s, studies the run added) of the small ``bench run`` on storage ``db``, with the
    code of ``tree`` (this checkout, or an old one: ``git archive <commit> | tar -x -C DIR``). CPU
    time (user + system) is what to compare on a shared machine: others' load stretches the wall."""
    before = len(optuna.storages.RDBStorage(sqlite_url(db)).get_all_studies())
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(tree)}
    t, cpu = time.perf_counter(), cpu_children()
    proc = subprocess.run([sys.executable, "-m", "bench", "run", *BENCH_ARGS, "--out", str(out),
                           "--storage", sqlite_url(db)], cwd=tree, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t, cpu_children() - cpu
    if proc.returncode:
        sys.exit(f"bench run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, cpu, len(optuna.storages.RDBStorage(sqlite_url(db)).get_all_studies()) - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,10000", help="unrelated studies for the per-check costs")
    ap.add_argument("--reps", type=int, default=20, help="calls per check (median)")
    ap.add_argument("--runs", type=int, default=7, help="bench runs per storage (0: skip part b)")
    ap.add_argument("--full", type=int, default=20_000, help="unrelated studies of the full storage in (b)")
    ap.add_argument("--old-tree", type=Path, help="also run (b) once per storage with the code in this folder "
                    "(e.g. the pre-issue-12 code: git archive b20ff07 | tar -x -C DIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench12_cost_"))
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        costs = {n: check_costs(n, tmp, args.reps) for n in sizes}
        print(f"## Per-check cost (median of {args.reps} calls, ms; SQLite)\n")
        print("| check | " + " | ".join(f"{n:,} studies" for n in sizes) + " |")
        print("|---|" + "---:|" * len(sizes))
        for check in costs[sizes[0]]:
            print(f"| {check} | " + " | ".join(f"{costs[n][check]:.2f}" for n in sizes) + " |")
        if args.runs:
            runner(tmp, args.runs, args.full, args.old_tree)
    finally:
        if args.keep:
            print(f"\n(kept {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def runner(tmp: Path, runs: int, full: int, old_tree: Path | None) -> None:
    templates = {}
    for label, n in (("empty", 0), (f"{full:,} unrelated studies", full)):
        templates[label] = tmp / f"template_{n}.db"
        fill(templates[label], n)
    results = {label: [] for label in templates}  # (wall, cpu, studies added) per run
    for rep in range(runs):  # alternate, so drift in the machine's load hits both alike
        for label, template in templates.items():
            db = tmp / f"run{rep}_{template.name}"
            shutil.copy(template, db)
            results[label].append(bench_run(db, tmp / f"out{rep}_{template.stem}"))
            print(f"  run {rep + 1}/{runs} {label}: wall {results[label][-1][0]:.1f} s, "
                  f"CPU {results[label][-1][1]:.1f} s", file=sys.stderr)
    old = {}
    for label, template in templates.items() if old_tree else ():
        db = tmp / f"old_{template.name}"
        shutil.copy(template, db)
        old[label] = [bench_run(db, tmp / f"out_old_{template.stem}", old_tree)]
        print(f"  old code, {label}: wall {old[label][0][0]:.1f} s, CPU {old[label][0][1]:.1f} s", file=sys.stderr)

    def row(label, runs_):
        walls, cpus = [r[0] for r in runs_], [r[1] for r in runs_]
        return (f"| {label} | {', '.join(f'{x:.1f}' for x in walls)} | {statistics.median(walls):.1f} | "
                f"{min(walls):.1f} | {statistics.median(cpus):.1f} | {runs_[-1][2]} |")

    print(f"\n## `bench run {' '.join(BENCH_ARGS)}` (SQLite storage, {runs} runs each, alternating)\n")
    print("| storage before the run | wall (s) | median | min | CPU user+sys, median (s) | studies the run added |")
    print("|---|---|---:|---:|---:|---:|")
    for label, runs_ in results.items():
        print(row(label, runs_))
    for label, runs_ in old.items():
        print(row(f"{label}, old code ({old_tree.name})", runs_))
    (_, empty), (_, filled) = results.items()
    for i, what in ((0, "wall"), (1, "CPU")):
        for stat in (statistics.median, min):
            ratio = stat(r[i] for r in filled) / stat(r[i] for r in empty)
            print(f"\nratio full / empty, {what}, {stat.__name__}: {ratio:.2f}x", end="")
    pairs, trials, seeds = 2, 2, 2
    measured = f"; measured with the old code: {list(old.values())[-1][0][2]}" if old else ""
    print(f"\n\nstudies per run: {filled[-1][2]} now (a tuning study and a final-fit study per (method, task)); "
          f"the old design made {pairs * (1 + trials + seeds)} (computed: per (method, task) 1 tuning study "
          f"+ {trials} trial-slot claims + {seeds} final-fit claims{measured})")


if __name__ == "__main__":
    main()
