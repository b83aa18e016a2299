"""Bad states (issue 27), as one table: each case plants a bad state (setup), runs a command and
expects one clean outcome: exit code 2 with one ``error:`` line saying what is wrong (nothing
written), or a clean recovery (the command succeeds, at most one ``warning:`` line, and the result
is the one an undisturbed run gives). ``len(CASES)`` is the number of bad states handled cleanly.

A command is a ``bench`` command line (``{tmp}`` is the case's folder), run in this process, or a
function of the case's folder (for states below the command line: a fit's checkpoint, the
decoded-image cache), returning its exit code.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch.utils.data import TensorDataset

import methods
from bench import cli, train
from bench.backbones import create_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Case:
    name: str
    command: list[str] | Callable[[Path], int]
    setup: Callable[[Path], None] = lambda tmp: None
    message: str | None = None  # exit 2 and one `error:` line matching this regex ...
    recovered: Callable[[Path], None] | None = None  # ... or exit 0 and this check of the recovery
    warning: str | None = None  # the one `warning:` line a recovery prints (regex), if any
    env: dict = field(default_factory=dict)
    # an error that strikes mid-run, when the stores already hold work (so not "nothing written"):
    # what must hold after it (no trial left RUNNING, the rerun resumes)
    after: Callable[[Path], None] | None = None


# --------------------------------------------------------------------------- checkpoints

_FIT = dict(epochs=3, batch_size=8, lr=3e-3, weight_decay=1e-4, seed=3)


def _data(n: int, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 5)


_BACKBONE: list = []


def _fit(tmp: Path, stop_after: int | None = None):
    """An ssf fit of 3 epochs checkpointed at ``tmp/ckpt/fit.pt``; ``stop_after``: Ctrl-C after that epoch."""
    if not _BACKBONE:
        _BACKBONE.append(create_backbone("demo"))
    train.seed_everything(0)
    model = methods.get("ssf").apply(_BACKBONE[0], num_classes=5)
    cfg = train.TrainConfig(**_FIT, checkpoint=str(tmp / "ckpt" / "fit.pt"))

    def stop(epoch, metrics):
        if stop_after is not None and epoch == stop_after:
            raise KeyboardInterrupt

    result = train.fit(model, _data(24), cfg, eval_ds=_data(16, 2), on_epoch=stop)
    return result, {k: v.clone() for k, v in model.state_dict().items()}


_STRAIGHT: dict = {}


def _straight(tmp: Path):
    if not _STRAIGHT:
        _STRAIGHT["fit"] = _fit(tmp / "straight")
    return _STRAIGHT["fit"]


def _checkpoint(tmp: Path) -> Path:
    """A real checkpoint: the fit interrupted after its first epoch."""
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp, stop_after=0)
    path = tmp / "ckpt" / "fit.pt"
    assert path.is_file()
    return path


class _Exploit:
    """A pickle whose loading would create a file (as an ``os.system`` payload would run a command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant_exploit(tmp: Path) -> None:
    path = _checkpoint(tmp)
    torch.save({"model": _Exploit(tmp / "pwned"), "epoch": 0}, path)  # what torch.load reads
    _rewrite_digest(path)


def _rewrite_digest(path: Path) -> None:
    """Give a planted file a matching checksum (anyone who can write the file can write that too)."""
    import hashlib

    digest = path.with_name(path.name + ".sha256")
    if digest.exists():
        digest.write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def _corrupt(how: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _corrupt_file(_checkpoint(tmp), how)
    return setup


def _corrupt_file(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "zeroed":
        path.write_bytes(bytes(size))
    elif how == "zeroed-images":  # the .npy header kept, its images black: shape and dtype still match
        import numpy as np

        with open(path, "rb") as fh:
            np.lib.format.read_magic(fh)
            np.lib.format.read_array_header_1_0(fh)
            offset = fh.tell()
        path.write_bytes(path.read_bytes()[:offset] + bytes(size - offset))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:size // 2])
    elif how == "random":
        path.write_bytes(os.urandom(size))
    else:
        raise ValueError(how)


def _resume_fit(tmp: Path) -> int:
    result, state = _fit(tmp)
    straight, straight_state = _straight(tmp)
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in straight.history]
    assert result.eval_acc == straight.eval_acc
    for key in straight_state:
        assert torch.equal(state[key], straight_state[key]), key
    return 0


def _fit_restarted(tmp: Path) -> None:
    assert not (tmp / "pwned").exists()
    assert not (tmp / "ckpt" / "fit.pt").exists()  # the finished fit removes its checkpoint


# --------------------------------------------------------------------------- the decoded-image cache

def _image_files(tmp: Path) -> list[Path]:
    from PIL import Image

    paths = []
    for i in range(6):
        path = tmp / "images" / f"{i}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 14), (40 * i, 100, 255 - 30 * i)).save(path)
        paths.append(path)
    return paths


def _decode(tmp: Path):
    from bench.data import decoded_cache
    from bench.data.transforms import Decoder

    paths = _image_files(tmp)
    return decoded_cache.decode_all(paths, [f"list.txt:{i}" for i in range(len(paths))], Decoder(16, "bilinear"),
                                    16, cache_dir=tmp / "cache")


def _cache_file(tmp: Path) -> Path:
    return next((tmp / "cache" / "decoded").glob("*.npy"))


def _corrupt_cache(how: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        from bench.data import decoded_cache

        _decode(tmp)
        _corrupt_file(_cache_file(tmp), how)
        # the next run is another process, which has checked nothing yet
        getattr(decoded_cache, "_verified", set()).clear()
    return setup


def _reopen_cache(tmp: Path) -> int:
    import numpy as np

    from bench.data.transforms import Decoder

    mapped = _decode(tmp)
    decoder = Decoder(16, "bilinear")
    assert np.array_equal(np.asarray(mapped.array), np.stack([decoder(p) for p in _image_files(tmp)]))
    return 0


def _cache_rebuilt(tmp: Path) -> None:
    from bench.data import decoded_cache

    path = _cache_file(tmp)
    assert decoded_cache.checksum_problem(path) is None
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256"]  # no partial file


_SMALL_MEMORY = {"BENCH_DATA_MEMORY_MB": "0.001"}  # ~1 KB: every split goes to the memory-mapped cache
_REDECODE = r"^warning: decoded-image cache .*\.npy not used: .*; decoding the images again$"

# --------------------------------------------------------------------------- odd --out paths

_RUN = ["run", "--methods", "linear", "--tasks", "digits", "--trials", "1", "--epochs", "1", "--seeds", "1",
        "--jobs", "1", "--no-report"]


def _users_db(tmp: Path) -> None:
    """A SQLite database of someone else's beside the output folder."""
    import sqlite3

    with sqlite3.connect(tmp / "users.db") as db:
        db.execute("create table users (name text)")
        db.execute("insert into users values ('ada')")
    db.close()


# --------------------------------------------------------------------------- a tracking server that is down

def _dead_server() -> str:
    """A loopback URL where nothing listens (connections refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _fails_fast(*argv: str, limit_s: float = 45) -> Callable[[Path], int]:
    """Run ``bench *argv`` (``{server}``: a dead tracking server) in a fresh process, as a user
    would (none of MLflow's retry settings in the environment); it must end within ``limit_s``."""
    def command(tmp: Path) -> int:
        import subprocess
        import sys
        import time

        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        server = _dead_server()
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "bench", *(a.format(tmp=tmp, server=server) for a in argv)],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=limit_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"bench {' '.join(argv)} still waited for a dead server after {limit_s} s") from None
        sys.stderr.write(done.stderr)
        return done.returncode
    return command


# --------------------------------------------------------------------------- absurd sizes
# (method, hyperparameter=value, the bound the one line states) on the demo backbone (width 96):
# refused where --hparam is parsed, from the backbone's shapes alone, before anything is built

_TOO_LARGE = [
    ("lora", "rank=100000", r"lora: rank must be an integer in \[1, 96\], got 100000 \(at most the backbone's width\)"),
    ("dora", "rank=100000", r"dora: rank must be an integer in \[1, 96\]"),
    ("loha", "rank=100000", r"loha: rank must be an integer in \[1, 96\]"),
    ("lokr", "rank=100000", r"lokr: rank must be an integer in \[1, 96\]"),
    ("vera", "rank=1000000000", r"vera: rank must be an integer in \[1, 1536\]"),
    ("fourierft", "n_frequency=1000000000", r"fourierft: n_frequency must be an integer in \[1, 27648\]"),
    ("adapter", "bottleneck=100000", r"adapter: bottleneck must be an integer in \[1, 96\]"),
    ("convpass", "dim=100000", r"convpass: dim must be an integer in \[1, 96\]"),
    ("repadapter", "dim=100000", r"repadapter: dim must be an integer in \[2, 96\]"),
    ("fact_tt", "rank=100000", r"fact_tt: rank must be an integer in \[1, 96\]"),
    ("fact_tk", "rank=100000", r"fact_tk: rank must be an integer in \[1, 96\]"),
    ("vpt", "num_prompts=1000000", r"vpt: num_prompts must be an integer in \[1, 1000\]"),
]


def _sized(method: str, setting: str, dry_run: bool = True) -> list[str]:
    return ["run", "--methods", method, "--tasks", "digits", "--trials", "1", "--epochs", "1", "--seeds", "1",
            "--jobs", "1", "--hparam", f"{method}.{setting}", "--out", "{tmp}/out", *(["--dry-run"] if dry_run else [])]


# --------------------------------------------------------------------------- the stores of a finished run
# A demo run (linear on digits, one trial, one final fit) made once per session, copied into each
# case that needs its MLflow and Optuna stores; cases below damage them, fill their disk or take
# them away in the middle of a run.

_DEMO_OUT: list[Path] = []


def _demo_out(tmp: Path) -> Path:
    """The ``--out`` of a finished ``bench run`` of ``_RUN`` (no report): made once per session."""
    if not _DEMO_OUT:
        out = tmp.parent / "bad-states-demo-run"  # the session's pytest folder, beside the cases'
        if not (out / "mlflow.db").is_file():
            assert cli.main([*_RUN, "--out", str(out)]) == 0
        _DEMO_OUT.append(out)
    return _DEMO_OUT[0]


def _stores(folder: str = "out", damage: tuple[str, str] | None = None) -> Callable[[Path], None]:
    """Setup: the demo run's stores copied to ``tmp/folder``; ``damage``: (file, how) corrupted there."""
    def setup(tmp: Path) -> None:
        import shutil

        shutil.copytree(_demo_out(tmp), tmp / folder)
        if damage is not None:
            _corrupt_store(tmp / folder / damage[0], damage[1])
    return setup


def _corrupt_store(path: Path, how: str) -> None:
    """A SQLite file damaged as a disk, a copy or a stray write damages one."""
    import random

    data = bytearray(path.read_bytes())
    if how == "overwritten":  # 4 KiB of garbage in the middle, across a page boundary
        middle = len(data) // 2 + 1000
        data[middle:middle + 4096] = random.Random(0).randbytes(4096)
    elif how == "page-zeroed":  # the header intact, the middle page zeroed
        page_size = int.from_bytes(data[16:18], "big")
        page = len(data) // page_size // 2
        data[page * page_size:(page + 1) * page_size] = bytes(page_size)
    else:
        return _corrupt_file(path, how)
    path.write_bytes(bytes(data))


def _has_tuning_section(md: Path) -> None:
    """The report read the Optuna storage (its tuning section is not a note that none was found)."""
    text = md.read_text()
    assert "## Tuning (Optuna)" in text and "From 1 studies in " in text, text


_DAMAGED = (r"^error: cannot read {what} .*/{name}: the file is damaged \(.+\); move it away .* or restore it "
            r"from a backup$")
_REPORT = ["report", "--tracking-uri", "sqlite:///{tmp}/out/mlflow.db", "--out", "{tmp}/reports"]


def _damaged_store_cases() -> list[Case]:
    """Each store damaged four ways, then `bench run` rerun into that --out and `bench report` on it:
    one line naming the file and what to do, before anything reads or writes it. Before SQLite's
    quick_check at open, an overwritten or zeroed page of mlflow.db was not noticed at all (the run
    and the report went on over it), of optuna.db a traceback at the run's first write; a damaged
    optuna.db only dropped the report's tuning section."""
    cases = []
    for name, what in (("mlflow.db", "MLflow store"), ("optuna.db", "Optuna storage")):
        for how in ("overwritten", "page-zeroed", "truncated", "random"):
            for command, argv in (("run", [*_RUN, "--out", "{tmp}/out"]), ("report", _REPORT)):
                cases.append(Case(f"{name}-{how}-{command}", argv, _stores(damage=(name, how)),
                                  message=_DAMAGED.format(what=what, name=re.escape(name))))
    return cases


def _trials(out: Path) -> dict[str, list]:
    """Every study's trials in ``out/optuna.db``: {study name: [FrozenTrial, ...]}."""
    import optuna

    from bench import tracking

    storage = optuna.storages.RDBStorage(tracking.sqlite_url(out / "optuna.db"), skip_table_creation=True)
    try:
        return {name: optuna.load_study(study_name=name, storage=storage).get_trials()
                for name in optuna.get_all_study_names(storage)}
    finally:
        storage.engine.dispose()


def _requeued(out: Path, study_kind: str) -> None:
    """After a run stopped mid-way: no trial left RUNNING, and in the tuning study one FAIL trial
    whose parameters a WAITING copy carries (in the final-fit study: one FAIL trial, queued again
    by its run key when the run is rerun)."""
    from optuna.trial import TrialState

    studies = _trials(out)
    assert not [t for trials in studies.values() for t in trials if t.state == TrialState.RUNNING], studies
    (name,) = [n for n in studies if ("final" in n) == (study_kind == "final")]
    failed = [t for t in studies[name] if t.state == TrialState.FAIL]
    waiting = [t for t in studies[name] if t.state == TrialState.WAITING]
    if study_kind == "tuning":  # re-queued at once with its parameters
        assert len(failed) == 1 and len(waiting) == 1 and waiting[0].params == failed[0].params, studies[name]
    else:  # told FAIL; queued again by its run key on the next run
        assert len(failed) == 1 and not waiting, studies[name]


_TWO_TRIALS = ["run", "--methods", "linear", "--tasks", "digits", "--trials", "2", "--epochs", "1", "--seeds", "1",
               "--jobs", "1", "--no-report", "--out", "{tmp}/out"]


def _mid_run(strike: Callable[[Path], None], when: str = "trial 0") -> Callable[[Path], int]:
    """``bench run`` of ``_TWO_TRIALS`` in this process, ``strike(tmp)`` called once when the run
    gets to ``when``: "trial 0" (its first trial finished: the second fails) or "final" (the final
    fit's MLflow run is open and its first epoch about to be logged)."""
    def command(tmp: Path) -> int:
        from unittest import mock

        from bench.run import context, finals, tuning

        struck = []

        def once():
            if not struck:
                struck.append(True)
                strike(tmp)

        def say(line: str) -> None:
            real_say(line)
            if when in line:
                once()

        def fit(model, train_ds, cfg, **kwargs):
            if when == "final" and "seed" in (cfg.desc or ""):
                once()
            return real_fit(model, train_ds, cfg, **kwargs)

        real_say, real_fit = context.say, train.fit
        with mock.patch.object(tuning, "say", say), mock.patch.object(finals, "say", say), \
                mock.patch.object(train, "fit", fit):
            code = cli.main([a.format(tmp=tmp) for a in _TWO_TRIALS])
        assert struck, "the run never got there"
        return code
    return command


def _engines(db: Path) -> list:
    """MLflow's cached SQLAlchemy engines of the SQLite file ``db`` (MLflow keeps one per URI)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from bench import tracking

    return [engine for uri, engine in SqlAlchemyStore._engine_map.items() if tracking.sqlite_path(uri) == db]


def _store_goes_away(tmp: Path) -> None:
    """The MLflow store stops answering (as a server or PostgreSQL that goes away): its file moved
    away, a folder in its place, and the open connections closed."""
    db = tmp / "out" / "mlflow.db"
    db.rename(tmp / "mlflow.db.away")
    db.mkdir()
    for engine in _engines(db):
        engine.dispose()


def _store_comes_back(study_kind: str) -> Callable[[Path], None]:
    """What must hold after the store went away: the trial re-queued (or failed, for a final fit);
    with the store back, the same command finishes the run: every trial and fit done once."""
    def after(tmp: Path) -> None:
        import shutil

        _requeued(tmp / "out", study_kind)
        (tmp / "out" / "mlflow.db").rmdir()
        shutil.move(tmp / "mlflow.db.away", tmp / "out" / "mlflow.db")
        assert cli.main([a.format(tmp=tmp) for a in _TWO_TRIALS]) == 0
        states = {n: sorted(t.state.name for t in trials) for n, trials in _trials(tmp / "out").items()}
        done = {n: s.count("COMPLETE") for n, s in states.items()}
        assert sorted(done.values()) == [1, 2] and "RUNNING" not in str(states) and "WAITING" not in str(states), states
    return after


_STORE_GONE = (r"^error: the tracking store \(MLflow\) stopped answering \(\(sqlite3\.OperationalError\) unable to "
               r"open database file\); rerun the same command to resume$")


def _disk_fills(tmp: Path) -> None:
    """The disk holding the MLflow store is full from now on: every statement that would write to
    it fails as SQLite fails it then (``sqlite3.OperationalError``, SQLITE_FULL's "database or disk
    is full", raised where the driver executes, so SQLAlchemy and MLflow wrap it as they wrap the
    real one). (``PRAGMA max_page_count`` gives the real error only once a write needs a new page:
    a trial's rows fitted in the free space of the store's pages, even of a vacuumed one.)"""
    import sqlite3

    from sqlalchemy import event

    def full(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
            raise sqlite3.OperationalError("database or disk is full")

    for engine in _engines(tmp / "out" / "mlflow.db"):
        event.listen(engine, "before_cursor_execute", full)
        _DISK_FULL_HOOKS.append((engine, full))


_DISK_FULL_HOOKS: list = []


def _after_disk_full(tmp: Path) -> None:
    from sqlalchemy import event

    while _DISK_FULL_HOOKS:  # (the engine is this case's store's: no other case meets the hook)
        engine, hook = _DISK_FULL_HOOKS.pop()
        event.remove(engine, "before_cursor_execute", hook)
    _requeued(tmp / "out", "tuning")


_DISK_FULL = (r"^error: the disk of the tracking store \(MLflow\) is full \(\(sqlite3\.OperationalError\) database "
              r"or disk is full\); free some space, then rerun the same command to resume$")


def _report_disk_full(tmp: Path) -> int:
    """`bench report` on a disk that fills while the report is written (the third file)."""
    import errno
    from unittest import mock

    from bench import files

    calls = []

    def atomic_write_bytes(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    real = files.atomic_write_bytes
    with mock.patch.object(files, "atomic_write_bytes", atomic_write_bytes):
        return cli.main([a.format(tmp=tmp) for a in _REPORT])


# --------------------------------------------------------------------------- bench data check --hash

def _vtab_root(tmp: Path) -> Path:
    """A VTAB-1k data root with one tiny task (cifar, as its alias folder cifar100)."""
    from PIL import Image

    folder = tmp / "vtab" / "cifar100"
    lines: dict[str, list[str]] = {}
    for split, n in {"train800": 4, "val200": 2, "test": 3}.items():
        lines[split] = []
        for i in range(n):
            rel = f"images/{split}_{i}.jpg"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 30), (20 * i, 100, 50 * (i % 2))).save(folder / rel, "JPEG")
            lines[split].append(f"{rel} {i % 2}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return tmp / "vtab"


_HASH = ["data", "check", "--suite", "vtab1k", "--data-root", "{tmp}/vtab", "--tasks", "cifar", "--hash"]


def _read_only_data_root(tmp: Path) -> int:
    """`bench data check --hash` on a data root mounted read-only: nothing can be created or
    opened for writing under it (EROFS), as on a read-only mount (root ignores file modes)."""
    import builtins
    import errno
    import io
    from unittest import mock

    root = str(tmp / "vtab")

    def under(path) -> bool:
        return not isinstance(path, int) and os.path.abspath(os.fsdecode(path)).startswith(root + os.sep)

    def refuse(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            raise refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            raise refuse(file)
        return real_open(file, mode, *args, **kwargs)

    real_os_open, real_open = os.open, builtins.open
    with mock.patch("os.open", os_open), mock.patch("builtins.open", open_), mock.patch("io.open", open_):
        return cli.main([a.format(tmp=tmp) for a in _HASH])


_RESTART = r"^warning: checkpoint .*fit\.pt .*; the fit restarts from scratch$"

CASES = [
    # a pickle that runs code on load, with a matching checksum: refused by weights_only=True
    Case("checkpoint-runs-code", _resume_fit, _plant_exploit, recovered=_fit_restarted,
         warning=r"^warning: checkpoint .*fit\.pt not used: it holds objects other than tensors .*could run code.*restarts from scratch$"),
    *[Case(f"checkpoint-{how}", _resume_fit, _corrupt(how), recovered=_fit_restarted, warning=_RESTART)
      for how in ("zeroed", "truncated", "random")],
    *[Case(f"decoded-cache-{how}", _reopen_cache, _corrupt_cache(how), recovered=_cache_rebuilt, warning=_REDECODE,
           env=_SMALL_MEMORY) for how in ("zeroed", "zeroed-images", "truncated", "random")],
    # SQLite URLs built from --out: '?' would start the query string (opening users.db), '%41' be unquoted
    Case("out-with-question-mark", [*_RUN, "--out", "{tmp}/users.db?exp1"], _users_db,
         message=r"SQLite store .*users\.db\?exp1.* holds '\?'"),
    Case("out-with-percent-escape", [*_RUN, "--out", "{tmp}/a%41b"], lambda tmp: (tmp / "aAb").mkdir(),
         message=r"SQLite store .*a%41b.* holds '%'"),
    *[Case(f"{method}-{setting.partition('=')[0]}-too-large-dry-run", _sized(method, setting), message=message)
      for method, setting, message in _TOO_LARGE],
    Case("lora-rank-too-large-run", _sized("lora", "rank=100000", dry_run=False), message=_TOO_LARGE[0][2]),
    Case("vpt-num-prompts-too-large-run", _sized("vpt", "num_prompts=1000000", dry_run=False),
         message=_TOO_LARGE[-1][2]),
    Case("repadapter-groups-not-dividing-the-width", [*_sized("repadapter", "groups=5"), "--hparam", "repadapter.dim=10"],
         message=r"repadapter: groups must divide every block width; 5 does not divide \[96\]"),
    # odd flags: one line before any store is created
    Case("seed-of-2**64", ["run", "--methods", "linear", "--tasks", "digits", "--seeds", str(2**64), "--jobs", "1",
                           "--out", "{tmp}/out"],
         message=r"--seeds must be integers in \[0, 4294967295\], got '18446744073709551616'"),
    Case("tasks-all-commas", ["run", "--methods", "linear", "--tasks", ",,", "--jobs", "1", "--out", "{tmp}/out"],
         message=r"--tasks ',,' names no task; give names from: "),
    Case("report-dir-not-writable", [*[a for a in _RUN if a != "--no-report"], "--out", "{tmp}/out",
                                     "--report-dir", "{tmp}/file.txt/reports"],
         lambda tmp: (tmp / "file.txt").write_text("a file, not a folder\n"),
         message=r"output folder .*file\.txt/reports is not writable"),
    # MLflow's default retries wait 4 min 12 s for a dead server; `bench run` already failed fast
    Case("report-server-down", _fails_fast("report", "--tracking-uri", "{server}", "--out", "{tmp}/reports"),
         message=r"cannot read MLflow store http://127\.0\.0\.1:\d+"),
    Case("compare-server-down", _fails_fast("compare", "lora", "linear", "--tracking-uri", "{server}"),
         message=r"cannot read MLflow store http://127\.0\.0\.1:\d+"),
    # damaged stores: one line naming the file, before anything reads or writes them
    *_damaged_store_cases(),
    # the tracking store (a server, PostgreSQL, the file) goes away mid-run: one line, the trial
    # re-queued with its parameters (a final fit's told FAIL, queued again by its run key), and the
    # same command, rerun once the store is back, finishes the run
    Case("tracking-store-gone-in-a-trial", _mid_run(_store_goes_away), message=_STORE_GONE,
         after=_store_comes_back("tuning")),
    Case("tracking-store-gone-in-a-final-fit", _mid_run(_store_goes_away, when="final"), message=_STORE_GONE,
         after=_store_comes_back("final")),
    # a full disk: one line; the trial that hit it re-queued; no half-written report
    Case("disk-full-under-the-tracking-store", _mid_run(_disk_fills), message=_DISK_FULL, after=_after_disk_full),
    Case("disk-full-writing-the-report", _report_disk_full, _stores(),
         message=r"cannot write the report to .*/reports: No space left on device$"),
    # where `bench report` writes: checked before rendering
    Case("report-out-is-a-file", [*_REPORT[:-1], "{tmp}/report.md"],
         lambda tmp: (_stores()(tmp), (tmp / "report.md").write_text("# an earlier report\n")),
         message=r"--out .*/report\.md is a file, not a folder"),
    Case("report-out-not-writable", [*_REPORT[:-1], "{tmp}/file.txt/reports"],
         lambda tmp: (_stores()(tmp), (tmp / "file.txt").write_text("a file, not a folder\n")),
         message=r"output folder .*file\.txt/reports is not writable"),
    # `bench data check --hash` where the manifest cannot be written: one line, before any hashing
    Case("data-check-hash-manifest-path-taken", _HASH,
         lambda tmp: (_vtab_root(tmp) / "cifar100" / "MANIFEST.sha256").mkdir(),
         message=r"cannot write the manifest .*/cifar100/MANIFEST\.sha256: something other than a file is in "
                 r"its place"),
    Case("data-check-hash-read-only-root", _read_only_data_root, _vtab_root,
         message=r"cannot write the manifest .*/cifar100/MANIFEST\.sha256: Read-only file system; "),
    # the report reads the store's path from its URL as MLflow does (%XX unquoted: here '#')
    Case("report-finds-optuna-beside-an-escaped-store-url",
         ["report", "--tracking-uri", "sqlite:///{tmp}/a%23b/mlflow.db", "--out", "{tmp}/reports"], _stores("a#b"),
         recovered=lambda tmp: _has_tuning_section(tmp / "reports" / "demo.md")),
    Case("report-storage-url-escaped",
         ["report", "--tracking-uri", "sqlite:///{tmp}/a%23b/mlflow.db", "--storage",
          "sqlite:///{tmp}/a%23b/optuna.db", "--out", "{tmp}/reports"], _stores("a#b"),
         recovered=lambda tmp: _has_tuning_section(tmp / "reports" / "demo.md")),
    Case("report-storage-path-with-percent",
         ["report", "--tracking-uri", "sqlite:///{tmp}/a%2541b/mlflow.db", "--storage", "{tmp}/a%41b/optuna.db",
          "--out", "{tmp}/reports"], lambda tmp: (_stores("a%41b")(tmp), (tmp / "aAb").mkdir()),
         message=r"SQLite store .*a%41b.* holds '%'"),
]


# --------------------------------------------------------------------------- the table

def _snapshot(tmp: Path) -> dict[str, str]:
    """Every file and folder under ``tmp`` with its content's hash: an error must leave it as it was."""
    import hashlib

    return {str(p.relative_to(tmp)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tmp.rglob("*"))}


def _run(case: Case, tmp: Path, capfd) -> tuple[int, list[str]]:
    case.setup(tmp)
    before = _snapshot(tmp)
    capfd.readouterr()
    if callable(case.command):
        code = case.command(tmp)
    else:
        code = cli.main([arg.format(tmp=tmp) for arg in case.command])
    err = capfd.readouterr().err
    if case.message is not None and case.after is None:  # an error writes nothing: not in --out, not beside it
        assert _snapshot(tmp) == before, err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_state_is_handled_cleanly(case: Case, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default path (runs/, reports/) stays in the case's folder
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    code, err = _run(case, tmp_path, capfd)
    if case.message is not None:
        assert code == 2, err
        assert len(err) == 1 and re.search(case.message, err[0]) and err[0].startswith("error: "), err
        if case.after is not None:
            case.after(tmp_path)
    else:
        assert code == 0, err
        warnings = [line for line in err if line.startswith("warning:")]
        if case.warning:
            assert len(warnings) == 1 and re.search(case.warning, warnings[0]), err
        assert not any("Traceback" in line for line in err), err
        case.recovered(tmp_path)


# --------------------------------------------------------------------------- nothing sent out

_AUDIT = """
import ipaddress, os, socket, sys

def _local(host):
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False

def _audit(event, args):
    if event == "socket.getaddrinfo" and not _local(args[0]):
        what = f"getaddrinfo {args[0]!r} port {args[1]!r}"
    elif event == "socket.connect" and args[0].family != socket.AF_UNIX and not _local(args[1][0]):
        what = f"connect {args[1]!r}"
    else:
        return
    with open(os.environ["BENCH_SOCKET_AUDIT"], "a") as fh:
        fh.write(f"{os.getpid()} {what}\\n")

sys.addaudithook(_audit)
"""

# environment variables with which MLflow turns its telemetry off by itself (CI, pytest): a user's
# machine has none of them, so neither may the audited run
_CI_MARKERS = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
               "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
               "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
               "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "MLFLOW_TRACKING_URI")


def test_bench_run_sends_nothing_off_this_machine(tmp_path):
    """`bench run` (tuning, final fit, report) in a fresh process, every Python process audited
    (``sitecustomize``): no DNS lookup and no connection leaves loopback or a Unix socket."""
    import subprocess
    import sys

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_AUDIT)
    log = tmp_path / "sockets.log"
    env = {k: v for k, v in os.environ.items() if k not in _CI_MARKERS}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
               BENCH_SOCKET_AUDIT=str(log))
    argv = [a for a in _RUN if a != "--no-report"]
    done = subprocess.run([sys.executable, "-m", "bench", *argv, "--out", str(tmp_path / "out")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "demo.md").is_file()  # the report was rendered too
    assert not log.exists(), log.read_text()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077], ids=oct)
def test_report_files_follow_the_umask(tmp_path, umask):
    from bench.files import atomic_write_bytes

    before = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "demo.md", b"# demo\n")
    finally:
        os.umask(before)
    assert (tmp_path / "demo.md").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["demo.md"]
