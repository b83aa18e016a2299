"""Comparison scripts: the project's methods against their authors' official code, which each script
reads at run time from a checkout given with ``--repo`` (``load.py``). No official code is committed
here; what each script measured is recorded in docs/measurements.md."""
