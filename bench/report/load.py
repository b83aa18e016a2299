"""Reading MLflow: a suite's ``phase=final`` runs (FINISHED, and FAILED for the notes) as one tidy
frame, one row per run, with plain column names, the run's experiment identity
(``bench.identity.Experiment``, from its ``experiment`` tag) and the method variant. The schema
read is ``bench/tracking.py``'s. A report only reads: a missing or damaged store is an error,
never a new empty store or a half-read one.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import pandas as pd

import methods

from .. import tracking
from ..errors import UserError, first_line
from ..identity import Experiment

METRICS = (tracking.TEST_ACC, tracking.PARAMS_BACKBONE, tracking.PARAMS_TOTAL,
           tracking.TRAIN_IMG_PER_S, tracking.PEAK_MEM_MB)
VARIANT_PARAM = "mode"
# methods whose `mode` param changes what is compared (vpt deep/shallow, adapter parallel/sequential,
# convpass and repadapter block/attn), and their default modes, read from the registry
VARIANT_METHODS = tuple(m for m in methods.names() if VARIANT_PARAM in methods.get(m).defaults)
DEFAULT_MODE = {m: methods.get(m).defaults[VARIANT_PARAM] for m in VARIANT_METHODS}


def check_store(uri: str) -> None:
    """A report only reads: a SQLite file that is not there is an error, never a new empty store,
    and a damaged one is an error too (``tracking.check_sqlite``), never half read. A tracking
    server that is down fails in seconds (``tracking.fail_fast``, as for `bench run`)."""
    tracking.fail_fast()
    path = tracking.sqlite_path(uri)
    if path is not None and not path.is_file():
        raise UserError(f"no MLflow store at {path} (run `bench run` first, or pass --tracking-uri)")
    tracking.check_sqlite(path, "MLflow store")


@contextmanager
def _store(uri: str):
    """mlflow.search_runs reads the global tracking URI: point it at ``uri`` for the block only,
    and turn whatever a bad or unreachable store raises into one UserError line."""
    import mlflow

    before, env_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # this also sets $MLFLOW_TRACKING_URI: both are restored below
    try:
        yield mlflow
    except UserError:
        raise
    except Exception as exc:  # mlflow, sqlalchemy and requests each raise their own types
        raise UserError(f"cannot read MLflow store {uri}: {first_line(exc)}") from None
    finally:
        mlflow.set_tracking_uri(before)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def final_runs(uri: str, suite: str) -> pd.DataFrame:
    """The suite's FINISHED (and FAILED, for the notes) phase=final runs as a tidy frame."""
    with _store(uri) as mlflow:
        exp = mlflow.MlflowClient(uri).get_experiment_by_name(tracking.experiment_name(suite))
        if exp is None or exp.lifecycle_stage != "active":
            return _tidy(pd.DataFrame())
        raw = mlflow.search_runs(
            experiment_ids=[exp.experiment_id],
            filter_string=f"tags.phase = '{tracking.PHASE_FINAL}'",
            output_format="pandas",
        )
    return _tidy(raw)


def _tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """Plain column names, strings for tags and params, floats for metrics, the run's experiment
    (``identity.Experiment``, read from its ``experiment`` tag) and the method variant. Kept:
    FINISHED runs with a test accuracy (there is nothing to rank otherwise) and FAILED runs
    (``failed`` True); runs whose tag is not an identity of this version are left out and counted
    in ``attrs["unidentified"]``."""
    names = {"run_id": "run_id", "start_time": "start", "status": "status", "tags.method": "method",
             "tags.task": "task", "tags.seed": "seed", "tags.git_commit": "commit",
             f"tags.{tracking.EXPERIMENT_TAG}": "identity", "tags.failure_reason": "failure",
             f"params.{VARIANT_PARAM}": "mode", "params.data_sha256": "data",
             f"params.{tracking.DEVICE_NAME_PARAM}": "device_name",
             **{f"metrics.{m}": m for m in METRICS}}
    df = raw.reindex(columns=list(names)).rename(columns=names)
    for col in ("run_id", "status", "method", "task", "seed", "commit", "identity", "failure", "mode", "data",
                "device_name"):
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    df["commit"] = df["commit"].replace("", "unknown")
    for col in METRICS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    df["experiment"] = [_experiment(text) for text in df["identity"]]
    df["backbone"] = [e.backbone if e else "" for e in df["experiment"]]
    df["recipe"] = [e.recipe if e else "" for e in df["experiment"]]
    df["weights_sha256"] = [e.weights_sha256 if e else "" for e in df["experiment"]]
    df["variant"] = df["mode"].where(df["method"].isin(VARIANT_METHODS), "")
    df["failed"] = df["status"] == "FAILED"
    keep = (df["status"] == "FINISHED") & df[tracking.TEST_ACC].notna() | df["failed"]
    known = df["experiment"].notna()
    out = df[keep & known].drop(columns=["mode", "identity", "status"]).reset_index(drop=True)
    out.attrs["unidentified"] = int((keep & ~known).sum())
    return out


def _experiment(text: str) -> Experiment | None:
    try:
        return Experiment.from_json(text)
    except ValueError:
        return None
