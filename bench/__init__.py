"""peft-bench: fair, reproducible comparison of PEFT methods for Vision Transformers.

The layers, top down: ``cli`` parses the command line and ``commands`` holds one thin module per
command; ``run`` runs the protocol (spec, tuning, final fits, coordination of workers); ``train``
is the training loop (with ``device``, ``compiled`` and ``checkpoints``); ``report`` renders leaderboards,
statistics and plots from what MLflow holds; ``backbones`` builds timm models and loads weights;
``data`` serves every suite's splits; ``identity`` defines what makes runs one experiment,
``catalog`` and ``recipes`` read the suites and paper recipes (data, not code), ``tracking`` names
what MLflow records; ``compat`` keeps other libraries' internals, one adapter each. The methods
themselves are the separate ``methods`` package.
"""

import os

__version__ = "0.1.0"

# No network traffic unless the user points a command at a server (--tracking-uri http://...,
# --storage postgresql://...). MLflow 3 sends usage telemetry (and resolves its host) from every
# process unless MLFLOW_DISABLE_TELEMETRY is set (or it detects CI); it reads the switch when it is
# imported, and every bench module imports mlflow after this package. A user's own setting wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # the same for huggingface_hub (under peft)
