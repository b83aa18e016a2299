"""`--jobs N`: N local worker processes of one run, sharing its stores; the coordination in the
Optuna storage divides the work between them (``bench.run.coordination``).

A worker receives the run's request as JSON (``RunRequest.to_json``) and builds the same spec from
it (``python -m bench.run.workers REQUEST_JSON``): no command line is parsed again.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from ..device import pinned_env
from ..errors import UserError
from .context import open_stores
from .protocol import Runner
from .spec import RunRequest, RunSpec, build_backbone, build_spec, positive


def parse_jobs(text: str, spec: RunSpec, gpus: list[str] = ()) -> int:
    """Local workers: one per core on CPU, one per GPU of ``gpus`` on GPU (``device.pick_gpus``;
    one for a named GPU), one with --force (each worker would redo what the others just redid)."""
    if text == "auto":
        if spec.force:
            return 1
        return (os.cpu_count() or 1) if spec.device == "cpu" else max(len(gpus), 1)
    try:
        jobs = int(text)
    except ValueError:
        raise UserError(f"--jobs must be 'auto' or a positive integer, got {text!r}") from None
    positive(jobs, "--jobs")
    if spec.force and jobs > 1:
        raise UserError("--force redoes finished work and runs in one worker: drop --jobs or use --jobs 1")
    return jobs


def run_local_workers(spec: RunSpec, jobs: int, gpus: list[str] = ()) -> int:
    """Start ``jobs`` worker processes, one CPU thread each, sharing the run's stores; the claims
    divide the work. With ``gpus``, worker i is pinned to GPU ``gpus[i % len(gpus)]`` by its
    ``CUDA_VISIBLE_DEVICES`` (``device.pinned_env``): it sees that GPU alone, as cuda:0. Many small
    processes beat one process with many threads on the small demo model (and two processes that
    each use every core slow each other down many times)."""
    # check the weights and create the stores once, here, so that the workers never race to
    # initialise them and a user error shows once
    build_backbone(spec)
    open_stores(spec)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", __name__, spec.request.to_json()]
    procs = [subprocess.Popen(cmd, env=pinned_env(env, list(gpus), i)) for i in range(jobs)]
    try:
        codes = wait_all(procs)
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    return next((c if c > 0 else 1 for c in codes if c), 0)


def wait_all(procs: list, poll_s: float = 0.5) -> list[int]:
    """Every process's exit code, each reaped as soon as it exits (not in start order): a killed
    worker must not linger as a zombie, which the others would take for a live owner of its trial."""
    while any(p.poll() is None for p in procs):
        time.sleep(poll_s)
    return [p.returncode for p in procs]


def work(request_json: str) -> int:
    """One worker: the run's spec, rebuilt from its request, run to the end."""
    Runner(build_spec(RunRequest.from_json(request_json))).run()
    return 0


if __name__ == "__main__":
    from ..cli import run_guarded

    sys.exit(run_guarded(lambda: work(sys.argv[1])))
