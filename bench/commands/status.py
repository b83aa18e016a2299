"""`bench status`: how far a sweep is (``bench.run.progress`` reads it from the stores, writing
and creating nothing), as a table per suite and method, the workers alive and the time left."""
from __future__ import annotations

import argparse

from tabulate import tabulate

from ..run.progress import (DONE, FAILED, RUNNING, WAITING, Row, count_mlflow, mlflow_client,
                            read_rows, storage_location, time_left, tracking_location)
from ..run.study import open_storage_readonly


def table(rows: list[Row]) -> str:
    from ..identity import row_labels

    labels = {}
    for suite in sorted({r.suite for r in rows}):
        labels.update(row_labels([r.experiment for r in rows if r.suite == suite]))
    body = []
    for r in sorted(rows, key=lambda r: (r.suite, labels[r.experiment])):
        fits_total = r.fits_total
        trials = f"{r.trials.states[DONE]}/{r.trials_total}" if r.tuning_studies else "-"
        body.append([r.suite, labels[r.experiment], f"{len(r.finished_cells)}/{len(r.cells)}", trials,
                     r.trials.states[RUNNING], r.trials.states[WAITING], r.trials.states[FAILED],
                     f"{r.fits.states[DONE]}/{'?' if fits_total is None else fits_total}",
                     r.fits.states[RUNNING], r.fits.states[WAITING], r.fits.states[FAILED],
                     "-" if r.mlflow_finished is None else r.mlflow_finished, len(r.workers)])
    headers = ["suite", "method", "studies done", "trials done", "running", "waiting", "failed",
               "fits done", "running", "waiting", "failed", "in MLflow", "workers"]
    return tabulate(body, headers=headers, tablefmt="github")


def main(args: argparse.Namespace) -> int:
    location = storage_location(args.storage, args.out)
    uri = tracking_location(args.tracking_uri, args.out)
    storage = open_storage_readonly(location)
    client = mlflow_client(uri)
    rows, skipped = read_rows(storage, args.suite)
    if not rows:
        where = f" of suite {args.suite}" if args.suite else ""
        others = f" ({skipped} other studies skipped)" if skipped else ""
        print(f"bench status: no study{where} in {location} yet{others}")
        return 0
    count_mlflow(client, rows)
    workers = len({w for r in rows for w in r.workers})
    print(table(rows))
    print()
    print(f"workers alive: {workers} (owners of a running trial or fit with a recent heartbeat or a live process)")
    print(time_left(rows, workers))
    print("totals count the studies opened so far (a worker opens a (method, task)'s studies when it reaches it)"
          + (f"; {skipped} studies of another version skipped" if skipped else ""))
    return 0


