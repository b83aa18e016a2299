"""`bench`: the command line. Parsing lives here; each subcommand's work lives in its own module,
imported only when that subcommand runs so `bench --help` stays instant.

A ``UserError`` (or a bad flag) ends the program with one ``error: ...`` line and exit code 2;
``--debug`` shows the traceback instead. So does a store that stops answering mid-command (the
errors of MLflow, SQLAlchemy, requests and Optuna's storage, never any exception) and a full disk
(``ENOSPC``, ``EDQUOT``): the runner has failed and re-queued the trial it was running, so the same
command, rerun, resumes.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

from .errors import UserError

EXIT_USER_ERROR = 2
# bench.backbones is not imported here (it imports timm): `bench --help` stays instant
METHODS_HELP = ("comma-separated method names and sets: all, core (the seven of the design: full, linear, vpt, "
                "lora, adapter, ssf, rlrr), baselines, peft (Hugging Face peft's tuners), vision (adapter_plus, dtl, "
                "gps, spt_lora, spt_adapter) (default: all)")
BACKBONE_HELP = "backbone name, e.g. vit_large_patch16_224 or swin_base_patch4_window7_224 (an unknown name lists all)"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (no usage dump), exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message}\n")


def version() -> str:
    """The installed distribution's version (``peft-bench``); the package's own when not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("peft-bench")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _add_common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default="demo", help="demo | vtab1k | fgvc (default: demo)")
    p.add_argument("--backbone", default=None,
                   help=f"{BACKBONE_HELP} (default: the suite's, vit_base_patch16_224 for vtab1k and fgvc)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: every task of the suite)")
    p.add_argument("--seeds", default=None, help="comma-separated integer seeds for the final fits (default: the suite's)")
    p.add_argument("--trials", type=int, default=None, help="Optuna trials per (method, task) (default: the suite's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the suite's recipe)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the suite's recipe)")
    p.add_argument("--data-root", default=None, help="folder holding the suite's data (real suites)")
    p.add_argument("--pretrained", default=None,
                   help="local backbone weights file (.npz/.pth/.safetensors), or 'none' for a random init")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--out", default="runs", help="output folder: studies, MLflow store, caches (default: runs)")
    p.add_argument("--storage", default=None, help="Optuna storage URL shared by workers (default: SQLite under --out)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or SQLite under --out)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"),
                   help="autocast precision of training and evaluation (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--drop-path-rate", type=float, default=None, metavar="RATE",
                   help="timm's stochastic depth, rising linearly to RATE at the last block (default: 0; "
                        "the official RLRR/NOAH/SSF scripts use 0.1-0.5)")
    p.add_argument("--hparam", action="append", default=[], metavar="METHOD.NAME=VALUE",
                   help="fix a method hyperparameter instead of searching it, e.g. vpt.mode=shallow "
                        "(repeatable; a fixed variant gets its own studies and leaderboard row)")
    p.add_argument("--force", action="store_true", help="redo finished trials and final fits")
    from .plugin_flag import add_plugin_flag  # light: methods is imported only when --plugin is given
    add_plugin_flag(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Benchmark parameter-efficient fine-tuning methods for "
                                               "Vision Transformers (VTAB-1k, FGVC, demo).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("--version", action="version", version=f"bench {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    from .plugin_flag import add_plugin_flag  # --plugin FILE|MODULE: methods from outside the project

    p = sub.add_parser("methods", help="list registered methods, parameter counts and hyperparameters")
    p.add_argument("--backbone", default="vit_base_patch16_224",
                   help=f"{BACKBONE_HELP} (default: vit_base_patch16_224)")
    p.add_argument("--num-classes", type=int, default=100, help="head size for the 'with head' column")
    add_plugin_flag(p)
    p.set_defaults(handler="bench.commands.methods:main")

    p = sub.add_parser("check-method", help="run the conformance kit on one method (built-in or plugin): a table of "
                                            "checks, exit 1 on a failure")
    p.add_argument("name", metavar="NAME", help="a registered method name (a plugin's: with --plugin, or installed)")
    p.add_argument("--backbone", default=None,
                   help=f"{BACKBONE_HELP}, randomly initialised (default: a small random ViT and Swin)")
    add_plugin_flag(p)
    p.set_defaults(handler="bench.commands.check_method:main")

    p = sub.add_parser("data", help="data tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    c = data_sub.add_parser("check", help="validate a data root and print a table of tasks x splits")
    c.add_argument("--suite", required=True, help="vtab1k | fgvc | demo")
    c.add_argument("--data-root", default=None, help="the suite's data folder")
    c.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    c.add_argument("--hash", action="store_true", help="write or validate a SHA-256 manifest of the files")
    c.set_defaults(handler="bench.data.check:main")

    p = sub.add_parser("run", help="tune, fit the final seeds, test, track and report")
    p.add_argument("--methods", default="all",
                   help=METHODS_HELP)
    _add_common_run_args(p)
    p.add_argument("--jobs", default="auto",
                   help="local worker processes sharing the stores (default auto: one per CPU core on CPU, "
                        "one per GPU on GPU, each pinned to its GPU)")
    p.add_argument("--devices", default=None, metavar="0,2,3",
                   help="the GPUs the workers use, one worker pinned to each (default: every visible GPU)")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="no tuning: train the final fits with a paper's per-task settings "
                        "(bench/catalog_data/recipes: rlrr-paper, noah-paper)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its estimated cost, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not render the leaderboard at the end")
    p.add_argument("--report-dir", default=None,
                   help="where the leaderboard goes (default: the --out folder; `bench report --out reports` "
                        "regenerates the committed one)")
    from .run.launch import add_launcher_args  # light: submitit is imported only when a launcher runs
    add_launcher_args(p)  # --launcher slurm|local, --wait, --log-dir and the Slurm settings
    p.set_defaults(handler="bench.commands.run:main_run")

    p = sub.add_parser("tune", help="run one Optuna study (one method x one task)")
    p.add_argument("--method", required=True, help="method name")
    p.add_argument("--task", required=True, help="task name")
    _add_common_run_args(p)
    p.set_defaults(handler="bench.commands.run:main_tune")

    p = sub.add_parser("status", help="how far a sweep is: studies, trials and final fits per method, workers "
                                      "alive, time left (reads the stores, writes nothing)")
    p.add_argument("--out", default="runs", help="the run's output folder, whose stores are read unless given "
                                                 "(default: runs)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the SQLite file under --out)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the SQLite file under --out)")
    p.add_argument("--suite", default=None, help="only this suite (default: every suite in the storage)")
    p.set_defaults(handler="bench.commands.status:main")

    p = sub.add_parser("report", help="render leaderboards from MLflow")
    p.add_argument("--suite", default=None, help="demo | vtab1k | fgvc (default: every suite with runs)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    p.add_argument("--out", default="reports", help="output folder (default: reports)")
    p.add_argument("--storage", default=None, metavar="URL|FILE",
                   help="Optuna storage for the tuning analysis: a URL (sqlite:///..., postgresql://...) or a "
                        "journal/.db file (default: optuna.db, else optuna.journal, beside a SQLite MLflow store)")
    p.set_defaults(handler="bench.report:main")

    p = sub.add_parser("compare", help="paired comparison of two leaderboard rows: difference, CI, p, verdict")
    p.add_argument("a", metavar="A", help="a row name as in the leaderboard, e.g. lora or 'vpt (mode=shallow)'")
    p.add_argument("b", metavar="B", help="the row to compare A with")
    p.add_argument("--suite", default=None, help="demo | vtab1k | fgvc (default: the one suite with final runs)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    p.add_argument("--planned", action="store_true",
                   help="this one comparison was chosen before seeing the results: judge it by its own p (default: "
                        "p (Holm), corrected over the leaderboard's pairs, the same as the report's)")
    p.set_defaults(handler="bench.commands.compare:main")

    p = sub.add_parser("perf", help="measure speed and memory of every method")
    p.add_argument("--backbone", default="demo", help=f"{BACKBONE_HELP} (default: demo)")
    p.add_argument("--methods", default="all",
                   help=METHODS_HELP)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: 64 demo, 32 ViT-B)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--out", default="reports", help="where perf.md goes (default: reports)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    add_plugin_flag(p)
    p.set_defaults(handler="bench.commands.perf:main")

    p = sub.add_parser("gpu-check", help="GPU acceptance: every method a few bf16 steps on ViT-B/16, eager and "
                                         "compiled; images/s, MFU, peak memory, compile speed-up (CUDA only)")
    p.add_argument("--methods", default="all", help=METHODS_HELP)
    p.add_argument("--backbone", default="vit_base_patch16_224",
                   help=f"{BACKBONE_HELP}, randomly initialised (default: vit_base_patch16_224)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default: 10)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="no measurement starts after this many seconds; its row says it did not run (default: 540)")
    p.add_argument("--out", default="reports", help="where gpu_check_<device>.md goes (default: reports)")
    add_plugin_flag(p)
    p.set_defaults(handler="bench.commands.gpu_check:main")
    return parser


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# what a store that stops answering raises through bench: MLflow (its REST and SQL stores), SQLAlchemy
# (under MLflow and Optuna), requests (under MLflow's REST client), Optuna's wrapper of SQLAlchemy's errors
_STORE_ERRORS = (("mlflow.exceptions", "MlflowException"), ("sqlalchemy.exc", "SQLAlchemyError"),
                 ("requests.exceptions", "RequestException"), ("optuna.exceptions", "StorageInternalError"))


def _store_errors() -> tuple[type, ...]:
    """The types of ``_STORE_ERRORS`` whose library is loaded (one not loaded raised nothing): none
    is imported here, so `bench --help` stays instant."""
    found = (getattr(sys.modules.get(module), name, None) for module, name in _STORE_ERRORS)
    return tuple(cls for cls in found if isinstance(cls, type))


def _store_failure(exc: BaseException) -> str:
    """One line for a store error that reached ``main`` mid-command: which store (the library the
    traceback ends in), the first line of the underlying error, and what to do. The work is safe:
    the runner failed and re-queued the trial it ran, and queues an unfinished final fit again."""
    from .errors import first_line

    store = "tracking store (MLflow)"
    tb = exc.__traceback__
    while tb is not None:  # the deepest frame of optuna or mlflow names the store
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.partition(".")[0] in ("optuna", "mlflow"):
            store = "Optuna storage" if module.startswith("optuna") else "tracking store (MLflow)"
        tb = tb.tb_next
    line, inner = None, exc
    while inner is not None and line is None:  # the database driver's own error, where there is one
        orig = getattr(inner, "orig", None)  # (SQLAlchemy's first line may be a note about autoflush)
        if isinstance(orig, BaseException):
            line = f"({type(orig).__module__}.{type(orig).__name__}) {first_line(orig)}"
        inner = inner.__cause__
    if line is None:  # Optuna's own message guesses at "invalid data": its cause says what happened
        top = exc.__cause__ if type(exc).__name__ == "StorageInternalError" and exc.__cause__ else exc
        line = first_line(top)
        if len(line) < len(str(top).strip().split("\n", 1)[0]):  # e.g. urllib3's "Max retries exceeded ..."
            line += "..."
    if "disk is full" in line:  # SQLite's SQLITE_FULL
        return _disk_full(f"the disk of the {store}", line)
    return f"the {store} stopped answering ({line}); rerun the same command to resume"


def _disk_full(where: str, detail: str) -> str:
    return f"{where} is full ({detail}); free some space, then rerun the same command to resume"


def _resolve(handler: str):
    module, _, func = handler.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # bad flag (exit 2, one line) or --help (exit 0)
        return exc.code if isinstance(exc.code, int) else 0
    return run_guarded(lambda: _resolve(args.handler)(args), args.debug)


def run_guarded(call, debug: bool = False) -> int:
    """``call()``'s exit code, with the errors a user can cause or meet as one line and exit 2
    (``--debug``: the traceback). Every entry point runs through it: the CLI and local workers."""
    try:
        return int(call() or 0)
    except (UserError, getattr(sys.modules.get("methods.plugins"), "PluginError", UserError)) as exc:  # or a bad plugin
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except _store_errors() as exc:  # evaluated only when something was raised: the libraries are loaded then
        if debug:
            raise
        print(f"error: {_store_failure(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if debug or exc.errno not in _DISK_FULL:
            raise
        where = f"the disk holding {exc.filename}" if exc.filename else "the disk"
        print(f"error: {_disk_full(where, exc.strerror or 'no space left on device')}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
