"""`bench run --launcher slurm|local --jobs N`: N workers of one run submitted as ONE submitit job
array, each running the same request (``RunRequest`` JSON -> ``bench.run.workers.work``) against
the run's shared Optuna storage and MLflow tracking store; the coordination in the storage divides
the work between them (``bench.run.coordination``), exactly as for `--jobs N` local processes.

- ``--launcher slurm``: a Slurm job array (``submitit.SlurmExecutor.map_array``); the Slurm
  settings are flags (``add_launcher_args``). A worker that is preempted or reaches its ``--time``
  is requeued by submitit (``ArrayWorker.checkpoint``) and resumes from what the stores hold.
- ``--launcher local``: the very same path with submitit's ``LocalExecutor`` (one process per
  worker on this machine); what the tests run.

The command prints the job id, the log folder and how to follow progress, and returns; ``--wait``
blocks with a progress bar and renders the report at the end.

Workers on other hosts must share the stores through servers: a SQLite or journal-file Optuna
storage and a local-file MLflow store are refused for any launcher but ``local``, before anything
is submitted or written (``refuse_local_stores``; why: docs/scale.md, "Where the stores live").

Nothing here imports submitit (or torch) at module level: `bench --help` stays instant.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
import time
from pathlib import Path

from ..errors import UserError

LAUNCHERS = ("local", "slurm")
SLURM_FLAGS = ("partition", "account", "qos", "mem", "time", "cpus_per_task", "gpus_per_task", "slurm_extra")
LAUNCHER_FLAGS = ("wait", "log_dir")
# set by the launcher itself: a --slurm-extra of one of these would break the array or its logs
RESERVED_SBATCH = ("array", "output", "error", "open-mode", "signal", "job-name", "wckey")
LOCAL_TIMEOUT_MIN = 30 * 24 * 60  # --launcher local without --time: no practical limit
STORES_DOC = "docs/scale.md#where-the-stores-live"


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    """The flags of `bench run` that submit its workers as a job array (bench/cli.py)."""
    g = p.add_argument_group("launcher", "submit the --jobs workers as one job array (docs/scale.md)")
    g.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="slurm: the --jobs workers as one Slurm job array (submitit), then return; local: the "
                        "same through submitit's local executor on this machine (default: plain local workers)")
    g.add_argument("--wait", action="store_true",
                   help="with --launcher: wait for the workers (a progress bar), then render the report")
    g.add_argument("--log-dir", default=None, metavar="DIR",
                   help="with --launcher: where the workers' logs and submitit's files go (default: <out>/slurm; "
                        "on a filesystem every node sees)")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--account", default=None, help="Slurm account to charge")
    g.add_argument("--qos", default=None, help="Slurm quality of service")
    g.add_argument("--time", default=None, metavar="TIME",
                   help="Slurm walltime of each worker, as sbatch takes it (minutes, HH:MM:SS, D-HH:MM, ...); "
                        "required with --launcher slurm; a worker that reaches it is requeued and resumes")
    g.add_argument("--mem", default=None, help="Slurm memory per node, e.g. 32G")
    g.add_argument("--cpus-per-task", type=int, default=None, metavar="N", help="Slurm CPUs per worker")
    g.add_argument("--gpus-per-task", type=int, default=None, metavar="N",
                   help="Slurm GPUs per worker (with --launcher local: GPUs visible to each worker)")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. constraint=a100 or mail-type=END (repeatable)")


# --------------------------------------------------------------------------- checks (nothing written)

def check_flags(args: argparse.Namespace) -> None:
    """Launcher flags only with a launcher; Slurm flags only with Slurm."""
    launcher = args.launcher
    given = [f for f in (*LAUNCHER_FLAGS, *SLURM_FLAGS) if getattr(args, f) not in (None, False, [])]
    if launcher is None and given:
        raise UserError(f"--{given[0].replace('_', '-')} needs --launcher slurm (or local)")
    if launcher == "local":
        slurm_only = [f for f in given if f in SLURM_FLAGS and f not in ("time", "gpus_per_task")]
        if slurm_only:
            raise UserError(f"--{slurm_only[0].replace('_', '-')} is a Slurm setting: use it with --launcher slurm")


def _local_file_store(uri: str) -> bool:
    """A store in a local file: a plain path (an Optuna journal), ``sqlite:``, ``file:``."""
    if uri.lower().startswith("databricks"):  # MLflow's "databricks" / "databricks://profile": a server
        return False
    return "://" not in uri or uri.lower().startswith(("file:", "sqlite:"))


def refuse_local_stores(request, launcher: str | None) -> None:
    """A launcher that starts workers on other hosts needs stores every host can share safely:
    a SQLite or journal-file Optuna storage (the default one under --out included) and a
    local-file MLflow store (sqlite:, file:, a plain path) are one UserError line saying what to
    use instead. ``local``: the workers share this machine, the defaults are fine."""
    if launcher in (None, "local"):
        return
    from .. import tracking

    problems = []
    storage = request.storage
    if not storage:
        problems.append(f"the Optuna storage is the SQLite file under --out ({Path(request.out) / 'optuna.db'}); "
                        "pass --storage postgresql+psycopg://USER:PASS@HOST/DB (or mysql://...)")
    elif _local_file_store(storage):
        kind = "a SQLite file" if storage.lower().startswith("sqlite") else "a journal file"
        problems.append(f"--storage {storage} is {kind}; use PostgreSQL or MySQL "
                        "(postgresql+psycopg://USER:PASS@HOST/DB, mysql://...)")
    uri = request.tracking_uri or tracking.default_tracking_uri(request.out)
    if _local_file_store(uri):
        where = "--tracking-uri" if request.tracking_uri else (
            "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default MLflow store")
        problems.append(f"{where} {uri} is a local file; use an MLflow server (http://HOST:5000) or its "
                        "database's URI (postgresql+psycopg://...)")
    if problems:
        raise UserError(f"--launcher {launcher} runs workers on other hosts, which cannot share local-file stores: "
                        f"{'; '.join(problems)} (why: {STORES_DOC})")


_TIME = re.compile(r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")


def parse_time(text: str) -> int:
    """A Slurm time limit in whole minutes (seconds rounded up), from the forms sbatch takes:
    minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
    days-hours:minutes:seconds."""
    m = _TIME.match(text.strip())
    if not m:
        raise UserError(f"--time takes a Slurm time (minutes, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS), got {text!r}")
    if m["d"] is not None:
        seconds = ((int(m["d"]) * 24 + int(m["dh"])) * 60 + int(m["dm"] or 0)) * 60 + int(m["ds"] or 0)
    elif m["c"] is not None:
        seconds = (int(m["a"]) * 60 + int(m["b"])) * 60 + int(m["c"])
    else:
        seconds = int(m["a"]) * 60 + int(m["b"] or 0)
    if seconds <= 0:
        raise UserError(f"--time must be longer than 0, got {text!r}")
    return -(-seconds // 60)


def parse_extra(items: list[str]) -> dict[str, str]:
    """--slurm-extra KEY=VALUE -> {KEY: VALUE} (submitit's additional_parameters)."""
    extra = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not eq or not key or not value:
            raise UserError(f"--slurm-extra takes KEY=VALUE (an sbatch option without its --), got {item!r}")
        if key.replace("_", "-") in RESERVED_SBATCH:
            raise UserError(f"--slurm-extra {item!r}: --{key} is set by the launcher itself")
        extra[key] = value
    return extra


def _check_numbers(args) -> None:
    for flag in ("cpus_per_task", "gpus_per_task"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag == "cpus_per_task" else 0):
            raise UserError(f"--{flag.replace('_', '-')} must be >= {1 if flag == 'cpus_per_task' else 0}, got {value}")
    if args.mem is not None and not re.fullmatch(r"\d+[KMGT]?", args.mem.strip(), re.IGNORECASE):
        raise UserError(f"--mem takes a size as sbatch does (e.g. 32G, 500M, 16000), got {args.mem!r}")


def parse_launch_jobs(text: str, spec, launcher: str) -> int:
    """--jobs with a launcher: as for local workers; Slurm needs the number of array tasks."""
    from .workers import parse_jobs

    if launcher == "slurm" and text == "auto":
        raise UserError("--launcher slurm needs --jobs N: the number of workers in the job array")
    return parse_jobs(text, spec)


# --------------------------------------------------------------------------- the executor

def slurm_parameters(args, suite: str) -> dict:
    """The parameters of ``SlurmExecutor.update_parameters`` from the flags."""
    params = {"job_name": f"bench-{suite}", "time": parse_time(args.time), "stderr_to_stdout": True,
              # one line per trial and fit in the log, not a progress bar; threads = the CPUs Slurm gave
              "setup": ["export TQDM_DISABLE=1", 'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"']}
    for flag in ("partition", "account", "qos", "cpus_per_task", "gpus_per_task"):
        if getattr(args, flag) is not None:
            params[flag] = getattr(args, flag)
    if args.mem is not None:
        params["mem"] = args.mem.strip()
    extra = parse_extra(args.slurm_extra)
    if extra:
        params["additional_parameters"] = extra
    return params


def local_parameters(args, device: str) -> dict:
    """The parameters of ``LocalExecutor.update_parameters``: one CPU thread per worker on CPU (as
    `--jobs N` local workers), the GPUs of this machine visible to each worker on GPU (submitit
    hides them unless asked), --time as the timeout (none by default)."""
    if args.gpus_per_task is not None:
        gpus = args.gpus_per_task
    elif device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
    else:
        gpus = 0
    setup = ["export TQDM_DISABLE=1"] + (["export OMP_NUM_THREADS=1"] if device == "cpu" else [])
    return {"timeout_min": parse_time(args.time) if args.time else LOCAL_TIMEOUT_MIN, "gpus_per_node": gpus,
            "tasks_per_node": 1, "stderr_to_stdout": True, "setup": setup}


def make_executor(launcher: str, folder: Path, params: dict):
    """submitit's executor for ``launcher``, its parameters set (not submitting anything)."""
    import submitit

    if launcher == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=folder)
        except RuntimeError as exc:  # submitit: "Could not detect srun, are you indeed on a slurm cluster?"
            raise UserError(f"--launcher slurm: {exc} (run bench on a Slurm login node)") from None
    else:
        executor = submitit.LocalExecutor(folder=folder)
    try:
        executor.update_parameters(**params)
    except ValueError as exc:  # submitit lists every parameter it knows
        raise UserError(f"--launcher {launcher}: {str(exc).splitlines()[0]}") from None
    return executor


def worker_request(request, spec):
    """The request every worker receives: its stores pinned to the URLs resolved here (a compute
    node's $MLFLOW_TRACKING_URI or working directory cannot send a worker elsewhere), its paths
    absolute. The device stays as asked: "auto" is resolved on the worker's node."""
    absolute = {name: str(Path(getattr(request, name)).resolve())
                for name in ("out", "data_root", "pretrained")
                if getattr(request, name) and not (name == "pretrained" and getattr(request, name) == "none")}
    return dataclasses.replace(request, tracking_uri=spec.tracking_uri, **absolute)


def validation_request(request, launcher: str):
    """The request the submitting host validates. A Slurm worker runs where its GPU is, not here:
    a login node without CUDA validates every other flag of ``--device cuda`` on the CPU."""
    if launcher == "slurm" and request.device.startswith("cuda"):
        return dataclasses.replace(request, device="cpu")
    return request


# --------------------------------------------------------------------------- the command

def launch(args: argparse.Namespace) -> int:
    """`bench run --launcher ...`: check everything, submit the array, print how to follow it."""
    from .spec import RunRequest, build_spec, writable_dir

    check_flags(args)
    launcher = args.launcher
    if args.devices:
        raise UserError(f"--devices pins plain local workers to GPUs; with --launcher {launcher} each worker gets "
                        "--gpus-per-task GPUs instead")
    request = RunRequest.from_args(args)
    refuse_local_stores(request, launcher)  # first: nothing is built, written or submitted on a refusal
    if launcher == "slurm" and not args.time:
        raise UserError("--launcher slurm needs --time (each worker's walltime, e.g. 24:00:00; a worker that "
                        "reaches it is requeued and resumes)")
    _check_numbers(args)
    if args.time:
        parse_time(args.time)
    parse_extra(args.slurm_extra)
    spec = build_spec(validation_request(request, launcher))
    jobs = parse_launch_jobs(args.jobs, spec, launcher)
    params = (slurm_parameters(args, spec.suite.name) if launcher == "slurm"
              else local_parameters(args, spec.device))
    folder = Path(args.log_dir or spec.out / "slurm").resolve()
    if args.dry_run:
        from .plan import print_plan

        print_plan(spec)
        print(f"bench run: would submit {jobs} worker{'s' if jobs > 1 else ''} ({launcher}); logs in {folder}")
        if launcher == "slurm":
            from ..compat.submitit_jobs import array_script

            print(array_script(make_executor(launcher, folder, params), jobs))
        return 0
    if not args.no_report and args.report_dir:
        writable_dir(Path(args.report_dir))
    executor = make_executor(launcher, folder, params)  # Slurm: srun must be here; nothing written yet
    worker = worker_request(request, spec)
    # the stores created once, here, so that the workers never race to initialise them (as `--jobs N`)
    from .context import open_stores
    from .spec import build_backbone

    build_backbone(spec)  # the weights checked now, once, not on every node
    open_stores(spec)
    writable_dir(folder)
    jobs_list = submit_array(executor, worker.to_json(), jobs)
    job_id = array_id(jobs_list, launcher)
    print_follow(spec, worker, launcher, job_id, folder, jobs_list)
    if not args.wait:
        return 0
    code = wait(jobs_list, spec, launcher)
    if code or args.no_report:
        return code
    from .. import report

    return report.main(argparse.Namespace(suite=spec.suite.name, tracking_uri=spec.tracking_uri,
                                          storage=spec.storage, out=args.report_dir or str(spec.out), debug=False))


def submit_array(executor, request_json: str, jobs: int) -> list:
    """``jobs`` workers of ``request_json`` as one job array (``map_array``: one sbatch of
    ``--array=0-(jobs-1)`` on Slurm)."""
    from .array_worker import ArrayWorker

    return executor.map_array(ArrayWorker(), [request_json] * jobs)


def array_id(jobs: list, launcher: str) -> str:
    """Slurm: the array's job id (its tasks are ``<id>_<index>``); local: the workers' process ids."""
    if launcher == "slurm":
        return jobs[0].job_id.partition("_")[0]
    return ",".join(j.job_id for j in jobs)


def status_command(spec, worker) -> str:
    """The `bench status` line that reads this run's stores."""
    parts = ["bench", "status", "--suite", spec.suite.name]
    parts += ["--storage", worker.storage] if worker.storage else ["--out", worker.out]
    parts += ["--tracking-uri", worker.tracking_uri]
    return " ".join(shlex.quote(p) for p in parts)


def print_follow(spec, worker, launcher: str, job_id: str, folder: Path, jobs: list) -> None:
    what = "Slurm job array" if launcher == "slurm" else "local submitit jobs (process ids)"
    print(f"bench run: submitted {len(jobs)} worker{'s' if len(jobs) > 1 else ''} as {what} {job_id}", flush=True)
    print(f"  logs:     {folder} (one log per worker, e.g. {Path(jobs[0].paths.stdout).name})")
    print(f"  progress: {status_command(spec, worker)}")
    if launcher == "slurm":
        print(f"  queue:    squeue -j {job_id}   (cancel: scancel {job_id})")
    print(f"  report:   bench report --suite {spec.suite.name} --tracking-uri {shlex.quote(worker.tracking_uri)}"
          + (f" --storage {shlex.quote(worker.storage)}" if worker.storage else ""), flush=True)


def wait(jobs: list, spec, launcher: str, poll_s: float | None = None) -> int:
    """Block until every worker ended, with a progress bar over the finished workers whose postfix
    says how far the sweep is (trials and final fits done, from the storage); 1 if a worker failed."""
    from tqdm.auto import tqdm

    from .progress import progress_line

    poll_s = poll_s if poll_s is not None else (60.0 if launcher == "slurm" else 2.0)
    bar = tqdm(total=len(jobs), desc="workers done", unit="worker", file=sys.stderr, dynamic_ncols=True)
    done: set[int] = set()
    try:
        while len(done) < len(jobs):
            for i, job in enumerate(jobs):
                if i not in done and job.done():
                    done.add(i)
                    bar.update(1)
            try:
                bar.set_postfix_str(progress_line(spec.storage, spec.out), refresh=True)
            except Exception:  # a storage hiccup must not end the wait
                pass
            if len(done) < len(jobs):
                time.sleep(poll_s)
    finally:
        bar.close()
    failed = []
    for job in jobs:
        exc = job.exception()
        if exc is not None:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            failed.append(f"worker {job.job_id} failed ({lines[-1] if lines else type(exc).__name__}); "
                          f"log: {job.paths.stdout}")
    for line in failed:
        print(f"bench run: {line}", file=sys.stderr)
    if failed:
        return 1
    print(f"bench run: every worker finished; MLflow: {spec.tracking_uri}", flush=True)
    return 0
