"""`bench run` and `bench tune`: check the flags (``bench.run.spec``), then run the protocol
(``bench.run.protocol``) in this process or in local workers (``bench.run.workers``), then render the
leaderboard. Where a final fit is claimed, run and recorded: ``Runner.finals`` and
``Runner.final_fit`` in ``bench/protocol.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import methods

from .. import backbones
from ..errors import UserError
from ..run.protocol import Runner
from ..recipes import load_recipe
from ..run.spec import METHOD_SETS, backbone_family, parse_methods, spec_from_args, writable_dir
from ..run.workers import parse_jobs, run_local_workers


def main_run(args: argparse.Namespace) -> int:
    names = parse_methods(args.methods, backbone_family(args))
    recipe = getattr(args, "recipe", None)
    if recipe and args.methods.strip() in METHOD_SETS:  # those of the set the recipe has settings for
        names = [m for m in names if m in load_recipe(recipe).methods]
    spec = spec_from_args(args, names)
    jobs = parse_jobs(args.jobs, spec.device, args.force)
    if args.dry_run:
        from ..run.plan import print_plan

        print_plan(spec)
        return 0
    start = time.perf_counter()
    if os.environ.get("BENCH_WORKER"):  # one of the workers below: just work
        Runner(spec).run()
        return 0
    if not args.no_report and args.report_dir:  # checked now, not after all the fits
        writable_dir(Path(args.report_dir))
    studies = len(spec.methods) * len(spec.tasks)
    family = backbones.get(spec.backbone).family
    sets = [t.strip() for t in args.methods.split(",") if t.strip() in METHOD_SETS]
    skipped = sorted({m for t in sets for m in methods.group(t) if not methods.supports(m, family)})
    if skipped:
        print(f"bench run: --methods {args.methods} on {spec.backbone} leaves out {', '.join(skipped)} "
              f"(not on {family} backbones)", flush=True)
    work = (f"no tuning (recipe {spec.recipe.name}), {studies * len(spec.seeds)} final fits (seeds "
            f"{', '.join(map(str, spec.seeds))}) with its settings per task" if spec.recipe else
            f"{studies} studies of {spec.trials} trials, then {studies * len(spec.seeds)} final fits (seeds "
            f"{', '.join(map(str, spec.seeds))}); {spec.epochs} epochs")
    print(f"bench run: suite {spec.suite.name} on {spec.backbone}, {len(spec.methods)} methods x "
          f"{len(spec.tasks)} tasks{': ' if spec.recipe else ' = '}{work}; device {spec.device}; {jobs} worker{'s' if jobs > 1 else ''}",
          flush=True)
    if jobs > 1:
        code = run_local_workers(spec, args.argv, jobs)
        if code:
            return code
    else:
        Runner(spec).run()
    print(f"bench run: done in {time.perf_counter() - start:.0f}s; MLflow: {spec.tracking_uri}", flush=True)
    if not args.no_report:
        from .. import report

        report.main(argparse.Namespace(suite=spec.suite.name, tracking_uri=spec.tracking_uri, storage=spec.storage,
                                       out=args.report_dir or str(spec.out), debug=False))
    return 0


def main_tune(args: argparse.Namespace) -> int:
    args.tasks = args.task
    spec = spec_from_args(args, parse_methods(args.method))
    if len(spec.methods) != 1 or len(spec.tasks) != 1:
        raise UserError("bench tune takes one --method and one --task")
    runner = Runner(spec)
    runner.tune(spec.methods[0], spec.tasks[0])
    params, source = runner.best(spec.methods[0], spec.tasks[0])
    print(json.dumps({"study": runner.cell(spec.methods[0], spec.tasks[0]).study_name(),
                      "best_from": source, "params": params}, indent=2, sort_keys=True))
    return 0
