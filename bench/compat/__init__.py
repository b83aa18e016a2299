"""Other libraries' internals, one small adapter module per library.

Where only a library-internal API does what we need, the call lives here and nowhere else, and
``tests/test_compat.py`` checks it against the installed library, so an upgrade that changes it
fails one named test instead of a sweep: ``optuna_storage`` (claiming a waiting trial with the
storage's compare-and-set, heartbeats, SQLite's write lock) and ``timm_npz`` (timm's reader of
the original ``.npz`` ViT checkpoints), ``submitit_jobs`` (the sbatch script of a job array,
rendered without submitting it; checked by ``tests/test_launch.py``). peft's internals have theirs
in ``methods.peft_compat``.
"""
