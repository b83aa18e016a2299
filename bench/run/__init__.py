"""How `bench run` and `bench tune` run the protocol, one job per module:

- ``spec``: the request (the flags as plain values) and the run spec built from it, every check
  made before anything is written;
- ``protocol``: ``Runner``, for every (method, task) tune then fit the final seeds, built from
  ``context`` (backbone, stores, provenance, identity, hyperparameters to model and config),
  ``records`` (what each MLflow run records), ``tuning`` (a study's trials within its budget) and
  ``finals`` (a final fit's claim, training and record);
- ``study``: the Optuna side (storages, studies with their identity and role, the search space
  shared by every method, best parameters);
- ``coordination``: how workers sharing one storage divide the work (budgets, claims, heartbeats,
  dead workers);
- ``workers``: ``--jobs N`` local worker processes; ``split_guard``: the test split opened only in
  a final fit; ``plan``: ``--dry-run``'s plan and cost estimate;
- ``launch``: ``--launcher slurm|local``, the workers as one submitit job array (its flags, the
  stores it refuses, ``--wait``); ``array_worker``: the worker submitit runs and requeues;
  ``progress``: how far a sweep is, read from the stores (`bench status`, ``--wait``).
"""
