"""submitit calls that submitit keeps library-internal, used because its public API has no
equivalent: the text of the sbatch script a job array would be submitted with, without
submitting it (``bench run --launcher slurm --dry-run`` prints it; the tests read it instead of
calling sbatch). Everything else (``SlurmExecutor``, ``LocalExecutor``, ``update_parameters``,
``map_array``, ``helpers.Checkpointable``, ``Job.done``/``exception``/``paths``) is public.
``tests/test_launch.py`` checks these against the installed submitit.
"""
from __future__ import annotations


def array_script(executor, jobs: int) -> str:
    """The sbatch script ``executor.map_array`` submits for ``jobs`` workers.

    This is what ``SlurmExecutor._internal_process_submissions`` does for an array: its
    parameters with ``map_count`` set to the array's size, rendered by
    ``_make_submission_file_text`` around ``_submitit_command_str`` (the command that runs the
    pickled worker). Nothing is written or submitted."""
    saved = executor.parameters
    # one worker is submitted as a plain job (map_array of one submission), several as an array
    executor.parameters = {**saved, "map_count": jobs} if jobs > 1 else dict(saved)
    try:
        return executor._make_submission_file_text(executor._submitit_command_str, "array-preview")
    finally:
        executor.parameters = saved
