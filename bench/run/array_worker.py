"""One worker of a job array (``bench.run.launch``): what submitit pickles and runs on a node.

It is ``submitit.helpers.Checkpointable``: when Slurm preempts the job or its ``--time`` runs out,
Slurm signals it (``--signal=USR2@90``, submitit's default) and submitit calls ``checkpoint``,
which returns the same worker again (``DelayedSubmission(self)``); submitit requeues the job with
it. The worker keeps no state of its own: the requeued one rebuilds the spec from the request and
resumes from what the stores hold. The trial this worker was running is failed and re-queued
with its parameters as the signal unwinds it (``Tuning.tune``), and a final fit it held is queued
again by the next worker (``FinalFits.ensure_queued``); one a SIGKILL interrupted is found dead
by the storage's heartbeat (``bench.run.coordination``).

Kept apart from ``bench.run.launch`` because it imports submitit, which `bench --help` must not.
"""
from __future__ import annotations

import submitit


class WorkerFailed(RuntimeError):
    """A worker that ended with an error (its log holds the one-line reason)."""


class ArrayWorker(submitit.helpers.Checkpointable):
    """``worker(request_json)``: run the request to the end, as a `--jobs N` local worker does."""

    def __call__(self, request_json: str) -> int:
        from ..cli import run_guarded
        from .workers import work

        code = run_guarded(lambda: work(request_json))
        if code:
            raise WorkerFailed(f"the worker exited with code {code}; its log says why")
        return 0

    def checkpoint(self, request_json: str) -> submitit.helpers.DelayedSubmission:
        """Requeue the same worker with the same request: it resumes from the stores."""
        return submitit.helpers.DelayedSubmission(self, request_json)
