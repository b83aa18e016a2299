"""`bench report` itself (``main``, the CLI's handler): which suites have final runs, where the
report goes (checked before anything is rendered), and each suite's files (``write_report``:
markdown, JSON, PNGs) written all or nothing (``bench.files.atomic_write_all``), the markdown last
so that it never links a PNG not yet written. A report that fails leaves no half-written file and
no empty folder behind.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import catalog, tracking
from ..errors import UserError, first_line
from ..files import atomic_write_all
from .document import render
from .load import check_store, final_runs
from .tuning import default_storage, open_existing, tuning_source


def write_report(suite: catalog.Suite, runs: pd.DataFrame, out: Path,
                 tuning: tuple[list | None, str] | None = None) -> list[Path]:
    """Render one suite to ``<out>/<suite>.md``, ``<out>/<suite>_stats.json`` and its PNGs
    (``_params``, ``_throughput``, ``_memory`` where recorded, ``_cd`` where tested, ``_tuning``
    where a storage has studies). The markdown goes last: it never links a PNG not yet written."""
    r = render(suite, runs, tuning=tuning)
    md, js = out / f"{suite.name}.md", out / f"{suite.name}_stats.json"
    pngs = [out / name for name in r.pngs]
    files = {**{path: r.pngs[path.name] for path in pngs},
             js: (json.dumps(r.stats_json, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
                  + "\n").encode("utf-8"),
             md: r.text.encode("utf-8")}
    try:
        atomic_write_all(files)  # all or nothing, the markdown last
    except OSError as exc:
        raise UserError(f"cannot write the report to {out}: {exc.strerror or first_line(exc)}") from None
    return [md, js, *pngs]


def main(args) -> int:
    """`bench report`: every suite with final runs, or ``--suite``; prints the written paths."""
    uri = args.tracking_uri or tracking.default_tracking_uri()
    storage = getattr(args, "storage", None)  # `bench run` calls this without one
    if args.suite:
        catalog.load_suite(args.suite)  # an unknown suite fails before the store is touched
    check_store(uri)
    if storage:
        open_existing(storage)  # a missing or damaged storage fails before anything is written
    else:  # the one found beside the MLflow store: damaged is an error too, not a report without it
        found = default_storage(uri)
        if found is not None and found.suffix == ".db":
            tracking.check_sqlite(found, "Optuna storage")
    names = [args.suite] if args.suite else catalog.suite_names()
    suites, older = [], 0
    for name in names:
        runs = final_runs(uri, name)
        older += runs.attrs["unidentified"]
        if not (runs.empty or runs["failed"].all()):
            suites.append((catalog.load_suite(name), runs))
    out, written = Path(args.out), []
    made = [p for p in (out, *out.parents) if not p.exists()]  # the folders writable_dir makes
    if suites:  # where the report goes is checked before anything is rendered
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a folder; give a folder for the report")
        from ..run.spec import writable_dir

        writable_dir(out)
    try:
        for suite, runs in suites:
            written += write_report(suite, runs, out, tuning_source(storage, uri, suite))
    except BaseException:
        for folder in made if not written else ():  # a failed report leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    if not written:
        where = f"suite {args.suite}" if args.suite else f"any suite ({', '.join(names)})"
        why = (f" ({older} final runs there were written by an older version of bench, without an experiment "
               "identity: rerun them)") if older else ""
        raise UserError(f"no finished final runs of {where} in MLflow store {uri}{why}")
    for path in written:
        print(path)
    return 0
