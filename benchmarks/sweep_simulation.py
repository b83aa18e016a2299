"""A whole sweep's coordination without the training: does ``bench.run.coordination`` run every unit
exactly once across many worker processes, and what does it cost per unit? (issue 12)

Each worker is a separate process running ``Runner.run``'s loop over (method, task) pairs with a
fake objective that sleeps ``--sleep-ms``: first every pair's tuning trials (``TrialBudget.ask``
until None), then per pair wait for ``TrialBudget.complete()``, queue the final fits
(``FinalFits.ensure_queued``) and pop them, then wait until no fit waits or runs
(``Runner.wait_for_finals``). A final fit is recorded in a tracking log (append + fsync, keyed by
run key) BEFORE Optuna is told, and ``finished()`` reads that log, as the runner does with MLflow;
a popped fit already in the log is told COMPLETE without running again.

``--kill N`` SIGKILLs N random workers at random points of the sweep and starts a new worker in
each one's place. Dead workers on this host are found at once (``reap_dead``'s pid check).

At the end it checks: no trial was handed to two workers, every tuning study has exactly
``--trials`` COMPLETE trials, every run key exactly one record and a COMPLETE trial, nothing is
left WAITING/RUNNING, no worker crashed; it counts FAIL trials by reason and reports the time
spent inside coordination calls. On failure the folder (storage, logs) is kept.

    .venv/bin/python benchmarks/sweep_simulation.py                       # 133 pairs x (20 + 5), 16 workers
    .venv/bin/python benchmarks/sweep_simulation.py --pairs 20 --workers 8 --kill 3
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

warnings.filterwarnings("ignore")  # Optuna's experimental/heartbeat warnings, once per call
COORDINATION = ("open_study", "TrialBudget.ask", "TrialBudget.complete", "FinalFits.ensure_queued",
                "FinalFits.pop", "FinalFits.running (all pairs)", "lease (enter+exit)", "study.tell")


# -- worker ------------------------------------------------------------------------------------
class Records:
    """The tracking record of finished final fits: one line per fit, ``run_key value pid``."""

    def __init__(self, path: Path):
        self.path, self.offset, self.done = path, 0, {}

    def refresh(self) -> dict[str, float]:
        with open(self.path, "a+") as f:
            f.seek(self.offset)
            for line in f.read().splitlines():  # lines are written whole (O_APPEND, one write)
                key, value, _ = line.split()
                self.done.setdefault(key, float(value))
            self.offset = f.tell()
        return self.done

    def add(self, key: str, value: float) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{key} {value} {os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def worker(args) -> None:
    import optuna
    from bench.run import study as tune
    from bench.run.coordination import FinalFits, TrialBudget, final_study_name, lease

    out = Path(args.dir)
    stats = collections.defaultdict(lambda: [0, 0.0, 0.0])  # name -> calls, seconds, max seconds
    rng = random.Random()

    def add(name: str, dt: float) -> None:
        s = stats[name]
        s[0], s[1], s[2] = s[0] + 1, s[1] + dt, max(s[2], dt)

    @contextmanager
    def timed(name):
        t = time.perf_counter()
        yield
        add(name, time.perf_counter() - t)

    def started(study, trial) -> None:
        """Which process got which trial to run: one got twice was handed to two workers."""
        with open(out / "started.log", "a") as f:
            f.write(f"{study.study_name} {trial.number} {os.getpid()}\n")

    storage = tune.open_storage(args.storage, out)
    records = Records(out / "records.log")
    pairs = [f"sim.m{i % 7}.t{i // 7}" for i in range(args.pairs)]

    def open_tuning(name):
        with timed("open_study"):
            study, created = tune.open_study(storage, name, seed=int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
            if created:
                study.enqueue_trial(tune.COMMON_DEFAULTS, user_attrs={"default_trial": True})
        return study, TrialBudget(storage, study, args.trials)

    def run(study, trial, objective) -> float:
        """One unit inside its lease, told to Optuna; lease/tell/objective timed apart."""
        started(study, trial)
        t0 = time.perf_counter()
        with lease(storage, study, trial):
            t1 = time.perf_counter()
            value = objective()
            t2 = time.perf_counter()
            with timed("study.tell"):
                study.tell(trial, value)
            t3 = time.perf_counter()
        add("lease (enter+exit)", (t1 - t0) + (time.perf_counter() - t3))
        add("objective (sampler + sleep + record)", t2 - t1)
        return value

    def tune_pair(name):
        study, budget = open_tuning(name)
        while True:
            with timed("TrialBudget.ask"):
                trial = budget.ask()
            if trial is None:
                return study, budget

            def objective():
                tune.common_search_space(trial)  # the sampler draws lr and weight_decay, as in Runner._trial
                time.sleep(args.sleep_ms / 1e3)
                return rng.random()

            run(study, trial, objective)

    def final_fits(name):
        with timed("open_study"):
            final, created = tune.open_study(storage, final_study_name(name), seed=0)
        return FinalFits(storage, final, created)

    def drain(queue):
        while True:
            with timed("FinalFits.pop"):
                trial = queue.pop()
            if trial is None:
                return
            key = trial.user_attrs["run_key"]

            def objective():
                done = records.refresh().get(key)
                if done is not None:  # recorded by a worker that died before telling Optuna
                    return done
                time.sleep(args.sleep_ms / 1e3)
                value = rng.random()
                records.add(key, value)  # the tracking record first, then Optuna
                return value

            run(queue.study, trial, objective)

    try:
        for name in pairs:  # pass 1: every pair's tuning trials
            tune_pair(name)
        for name in pairs:  # pass 2: per pair, once its study is complete, the final fits
            study, budget = open_tuning(name)
            while True:
                with timed("TrialBudget.complete"):
                    complete = budget.complete()
                if complete:
                    break
                tune_pair(name)  # trials re-enqueued from dead workers
                with timed("waiting for other workers' trials"):
                    time.sleep(args.poll_s)
            best = max(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                       key=lambda t: (t.value, -t.number))
            fits = {hashlib.sha256(f"{name}/{seed}/{best.params}".encode()).hexdigest()[:16]:
                    {"seed": seed, "params": best.params, "source": f"trial {best.number}"}
                    for seed in range(args.seeds)}
            queue = final_fits(name)
            with timed("FinalFits.ensure_queued"):
                queue.ensure_queued(fits, finished=lambda key: key in records.refresh())
            drain(queue)
        queues = [final_fits(name) for name in pairs]  # Runner.wait_for_finals: until no fit waits or runs
        while queues and hasattr(FinalFits, "running"):
            for queue in queues:
                drain(queue)
            with timed("FinalFits.running (all pairs)"):
                queues = [q for q in queues if q.running()]
            if queues:
                with timed("waiting for other workers' fits"):
                    time.sleep(args.poll_finals_s)
    finally:
        (out / "stats" / f"{os.getpid()}.json").write_text(json.dumps(stats))


# -- parent ------------------------------------------------------------------------------------
def start(args, i: int, generation: int) -> subprocess.Popen:
    log = open(Path(args.dir) / "logs" / f"worker{i}.{generation}.log", "w")
    return subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--dir", args.dir, "--worker"],
                            stdout=log, stderr=subprocess.STDOUT)


def lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def sweep(args) -> tuple[float, list[str], int]:
    """Run the workers (killing and replacing ``--kill`` of them); (wall s, errors, kills done)."""
    units = args.pairs * (args.trials + args.seeds)
    rng = random.Random(args.seed)
    kill_at = sorted(rng.uniform(0.05, 0.9) * units for _ in range(args.kill))
    procs = {i: start(args, i, 0) for i in range(args.workers)}
    generation, errors, kills = collections.Counter(), [], 0
    t0 = time.perf_counter()
    while procs:
        if kill_at and lines(Path(args.dir) / "started.log") >= kill_at[0]:
            kill_at.pop(0)
            i = rng.choice(sorted(procs))
            procs[i].send_signal(signal.SIGKILL)
            procs[i].wait()
            kills += 1
            generation[i] += 1
            print(f"  killed worker {i} (pid {procs[i].pid}) after {time.perf_counter() - t0:.1f} s; restarted",
                  file=sys.stderr)
            procs[i] = start(args, i, generation[i])
        for i, p in list(procs.items()):
            if p.poll() is not None:
                if p.returncode:
                    log = Path(args.dir) / "logs" / f"worker{i}.{generation[i]}.log"
                    last = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
                    errors.append(f"worker {i} exited {p.returncode}: {last[0]}")
                del procs[i]
        time.sleep(0.05)
    return time.perf_counter() - t0, errors, kills


def verify(args) -> dict:
    """What the storage and the tracking log hold after the sweep."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(args.storage)
    counts = collections.Counter()
    problems = []
    for s in storage.get_all_studies():
        trials = storage.get_all_trials(storage.get_study_id_from_name(s.study_name), deepcopy=False)
        by_state = collections.Counter(t.state for t in trials)
        for t in trials:
            if t.state == TrialState.FAIL:
                reason = next((r for r in ("surplus", "stray", "duplicate") if t.user_attrs.get(r)), "dead worker")
                counts[f"FAIL: {reason}"] += 1
        if by_state[TrialState.WAITING] or by_state[TrialState.RUNNING]:
            problems.append(f"{s.study_name}: {by_state[TrialState.WAITING]} WAITING, "
                            f"{by_state[TrialState.RUNNING]} RUNNING left")
        if s.study_name.endswith("/final"):
            keys = collections.Counter(t.user_attrs.get("run_key") for t in trials if t.state == TrialState.COMPLETE)
            counts["final-fit trials COMPLETE"] += sum(keys.values())
            extra = sum(keys.values()) - len(keys)
            counts["final-fit trials COMPLETE from the record (a 2nd trial of a recorded key)"] += extra
            if len(keys) != args.seeds:
                problems.append(f"{s.study_name}: COMPLETE trials for {len(keys)} run keys, not {args.seeds}")
        else:
            counts["tuning trials COMPLETE"] += by_state[TrialState.COMPLETE]
            if by_state[TrialState.COMPLETE] != args.trials:
                problems.append(f"{s.study_name}: {by_state[TrialState.COMPLETE]} COMPLETE trials, not {args.trials}")
    counts["studies"] = len(storage.get_all_studies())
    starts = collections.Counter(tuple(line.split()[:2]) for line in open(Path(args.dir) / "started.log"))
    counts["trials handed to two or more workers"] = sum(n > 1 for n in starts.values())
    if counts["trials handed to two or more workers"]:
        problems.append(f"{counts['trials handed to two or more workers']} trials were handed to two or more "
                        f"workers, e.g. {[k for k, n in starts.items() if n > 1][:3]}")
    recorded = collections.Counter(line.split()[0] for line in open(Path(args.dir) / "records.log"))
    counts["run keys recorded"] = len(recorded)
    counts["run keys recorded twice or more"] = sum(n > 1 for n in recorded.values())
    if counts["run keys recorded"] != args.pairs * args.seeds or counts["run keys recorded twice or more"]:
        problems.append(f"{counts['run keys recorded']} run keys recorded (want {args.pairs * args.seeds}), "
                        f"{counts['run keys recorded twice or more']} of them more than once")
    if counts["studies"] != 2 * args.pairs:
        problems.append(f"{counts['studies']} studies, not {2 * args.pairs}")
    return {"counts": counts, "problems": problems}


def report(args, wall: float, errors: list[str], kills: int, result: dict) -> None:
    units = args.pairs * (args.trials + args.seeds)
    stats = collections.defaultdict(lambda: [0, 0.0, 0.0])
    files = list((Path(args.dir) / "stats").glob("*.json"))
    for f in files:
        for name, (n, s, m) in json.loads(f.read_text()).items():
            stats[name][0] += n
            stats[name][1] += s
            stats[name][2] = max(stats[name][2], m)
    coord = sum(stats[name][1] for name in COORDINATION)
    where = "SQLite" if args.storage.startswith("sqlite") else args.storage.split(":")[0]
    print(f"## Sweep simulation: {args.pairs} pairs x ({args.trials} trials + {args.seeds} seeds) = {units:,} units, "
          f"{args.workers} workers, {args.sleep_ms} ms objective, {where}"
          + (f", {kills} workers killed" if args.kill else ""))
    print(f"\nwall {wall:.1f} s on {os.cpu_count()} CPU cores; {wall * args.workers / units * 1e3:.0f} ms of "
          f"worker time per unit (objective sleep {args.sleep_ms} ms)")
    ran = stats["objective (sampler + sleep + record)"][0]
    print(f"time inside coordination calls: {coord:.1f} s for the {ran:,} units their workers ran = "
          f"{coord / max(ran, 1) * 1e3:.1f} ms per unit (SIGKILLed workers' times are lost)\n")
    print("| call | calls | total (s) | mean (ms) | max (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, (n, s, m) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {n:,} | {s:.1f} | {s / max(n, 1) * 1e3:.1f} | {m * 1e3:.0f} |")
    print("\n| check | count |\n|---|---:|")
    for name, n in sorted(result["counts"].items()):
        print(f"| {name} | {n:,} |")
    ok = not result["problems"] and not errors
    print(f"\nevery unit ran exactly once: {'yes' if ok else 'NO'}")
    for line in result["problems"][:10]:
        print(f"- {line}")
    if errors:  # by the last line of each crashed worker's log (kept with --keep)
        crashes = collections.Counter(e.split(": ", 1)[1].split(": ")[0] for e in errors)
        print(f"- {len(errors)} worker processes crashed: " + ", ".join(f"{n} x {c}" for c, n in crashes.items()))
        print(f"  e.g. {errors[0]}")
    print(f"(storage and worker logs {'kept in' if args.keep or not ok else 'removed:'} {args.dir})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=133, help="(method, task) pairs (7 methods x 19 tasks)")
    ap.add_argument("--trials", type=int, default=20, help="tuning trials per pair")
    ap.add_argument("--seeds", type=int, default=5, help="final fits per pair")
    ap.add_argument("--workers", type=int, default=16, help="worker processes")
    ap.add_argument("--sleep-ms", type=float, default=5.0, help="the fake objective's duration")
    ap.add_argument("--poll-s", type=float, default=2.0, help="wait between checks for other workers' trials "
                    "(Runner.best's)")
    ap.add_argument("--poll-finals-s", type=float, default=5.0, help="wait between checks for other workers' "
                    "final fits (Runner.wait_for_finals')")
    ap.add_argument("--storage", help="Optuna storage URL, of an empty database (default: SQLite in a temporary "
                    "folder), e.g. postgresql+psycopg://user@/db?host=/tmp")
    ap.add_argument("--kill", type=int, default=0, help="SIGKILL this many random workers at random moments, "
                    "restarting each")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from bench.tracking import sqlite_url

    if args.worker:
        args.storage = args.storage or sqlite_url(Path(args.dir) / "optuna.db")
        worker(args)
        return
    args.dir = tempfile.mkdtemp(prefix="bench12_sim_")
    for sub in ("logs", "stats"):
        (Path(args.dir) / sub).mkdir()
    args.storage = args.storage or sqlite_url(Path(args.dir) / "optuna.db")
    from bench.run import study as tune

    tune.open_storage(args.storage, Path(args.dir))  # the schema, before the workers race for it
    wall, errors, kills = sweep(args)
    result = verify(args)
    report(args, wall, errors, kills, result)
    if not result["problems"] and not errors and not args.keep:
        import shutil

        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
