"""`bench run` and `bench tune`: the flags become one request and one spec (``bench.run.spec``),
the protocol runs in this process or in local workers (``bench.run.workers``), then the
leaderboard is rendered. How a run works: ``bench.run``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import methods

from .. import backbones
from ..device import pick_gpus
from ..errors import UserError
from ..run.protocol import Runner
from ..run.spec import METHOD_SETS, RunRequest, build_spec, parse_int_list, writable_dir
from ..run.workers import parse_jobs, run_local_workers


def main_run(args: argparse.Namespace) -> int:
    from ..run import launch  # light: submitit is imported only when a launcher runs

    if args.launcher:  # the workers as one submitit job array (Slurm, or local)
        return launch.launch(args)
    launch.check_flags(args)  # a launcher's flags without --launcher: one line
    spec = build_spec(RunRequest.from_args(args))
    gpus = pick_gpus(spec.device, parse_int_list(args.devices, "--devices", 0))  # one pinned worker per GPU picked
    jobs = parse_jobs(args.jobs, spec, gpus)
    if args.dry_run:
        from ..run.plan import print_plan

        print_plan(spec)
        return 0
    start = time.perf_counter()
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
    if jobs > 1 or args.devices:  # a GPU picked by --devices: a worker pinned to it
        code = run_local_workers(spec, jobs, gpus)
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
    spec = build_spec(RunRequest.from_args(args, methods=args.method, tasks=args.task))
    if len(spec.methods) != 1 or len(spec.tasks) != 1:
        raise UserError("bench tune takes one --method and one --task")
    runner = Runner(spec)
    runner.tune(spec.methods[0], spec.tasks[0])
    params, source = runner.best(spec.methods[0], spec.tasks[0])
    print(json.dumps({"study": runner.cell(spec.methods[0], spec.tasks[0]).study_name(),
                      "best_from": source, "params": params}, indent=2, sort_keys=True))
    return 0
