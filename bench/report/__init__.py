"""`bench report`: leaderboards rendered from what MLflow holds, never written by hand.

For each suite it reads the FINISHED runs tagged ``phase=final`` of the experiment
``peft-bench/<suite>`` (schema: ``bench/tracking.py``), aggregates them with pandas and writes
``<out>/<suite>.md`` (GitHub pipe tables via tabulate): one leaderboard per backbone the suite's
runs used, each with its statistics section (``stats``, ``stats_section``: 95% CI of each mean,
average ranks, Friedman, Wilcoxon-Holm pairs, ``<suite>_cd.png``); then the trade-off plots
(``tradeoff``: ``<suite>_params.png``, ``_throughput.png``, ``_memory.png`` with the Pareto front)
and the tuning analysis of the Optuna studies (``tuning``, ``<suite>_tuning.png``; the storage of
``--storage``, else the one beside a SQLite MLflow store). ``<suite>_stats.json`` holds the
statistics machine-readably: those of the first leaderboard (the suite's own backbone when it has
runs) at the top level, other backbones' under ``other_backbones``; rows are named as in their
table (without the ‡ mark). Everything is a function of the stores' content alone (no timestamps,
stable sorting, fixed float formats, seeded bootstrap, PNGs without metadata), so the same stores
render byte-identical files.

Rules the table follows, beyond the schema:
- One leaderboard per backbone (the ``backbone`` param of each run; a run that records none, which
  ``bench run`` never writes, counts as on the suite's backbone): results of two backbones never
  share a row, a mean or a bold mark. The paper column and Δ appear only in the leaderboard of the
  suite's own backbone (``backbone`` in its catalog file), the one the published rows were
  measured on: a ViT-L or DINOv2 row is never compared with ViT-B/16 numbers.
- One row per experiment: a cell only ever aggregates runs of one identity (protocol: epochs,
  warm-up, batch, trials; backbone; weights hash; data hash; hyperparameters fixed with --hparam).
  The suite's main identity is the one most final runs share; a row of another identity is
  labelled with what differs, e.g. ``lora (rank=4)``, ``lora (epochs=1)``; a randomly initialised
  backbone always shows as ``(random init)``.
- Columns are the catalog's tasks (catalog order) that at least one row has a final run for;
  the suite's other tasks are named in a note and are in no mean.
- A (row, task, seed) fitted more than once (a ``--force`` rerun) counts once: its most
  recently started run.
- A task a row has no run for shows "-", its means are over the tasks it has, and a note
  (marked "‡") names the missing tasks. A seed whose final fit FAILED (e.g. diverged) and was
  never redone marks its cell "§" and a note names it: a mean over survivors is never shown as
  if complete.
- The current commit is that of the checkout rendering the report; a cell with a run from any
  other commit is marked "†" (stale: rerun it with the current code).
- The variant (``mode`` param of vpt/adapter) picks the paper's reference row.

The modules, one job each, in the order a report is made:

- ``load``: MLflow's final runs of a suite -> one tidy frame (``check_store``, ``final_runs``).
- ``cells``: runs -> rows, cells (mean ± std over seeds) and the per-row summary.
- ``paper``: the published reference rows, the paper column and Δ.
- ``stats``: the numbers of the statistics (ranks, Friedman, Wilcoxon-Holm, intervals), pure;
  ``stats_section``: their markdown and the CD diagram; ``stats_json``: ``<suite>_stats.json``.
- ``board``: one backbone's leaderboard as markdown (the table and its notes).
- ``tradeoff``: the trade-off plots and Pareto fronts; ``tuning``: the tuning analysis of the
  Optuna studies.
- ``document``: a suite's whole report in memory (markdown, JSON, PNGs).
- ``write``: ``bench report`` itself (``main``) and a suite's files written all or nothing.
- ``format``: the one number formatter and markdown table of the reports; ``png``: the one PNG
  writer.

The names other code uses are re-exported here: ``from bench import report``, then
``report.main``, ``report.final_runs``, ``report.load_reference``, ``report.leaderboard``, ...
"""
from .board import FAILED_SEED, PARTIAL, STALE, Board, leaderboard
from .cells import board_runs, by_backbone, checkout_commit, label_rows, ppt, row_name, summarize
from .document import Rendered, render, render_markdown
from .format import ci_text, fmt, fmt_p, markdown_table
from .load import DEFAULT_MODE, METRICS, VARIANT_METHODS, VARIANT_PARAM, check_store, final_runs
from .paper import PAPER_PROTOCOL, PAPER_ROW, REFERENCE_DIR, load_reference
from .tuning import tuning_source
from .write import main, write_report

__all__ = [
    "DEFAULT_MODE", "FAILED_SEED", "METRICS", "PAPER_PROTOCOL", "PAPER_ROW", "PARTIAL", "REFERENCE_DIR", "STALE",
    "VARIANT_METHODS", "VARIANT_PARAM", "Board", "Rendered", "board_runs", "by_backbone", "check_store",
    "checkout_commit", "ci_text", "final_runs", "fmt", "fmt_p", "label_rows", "leaderboard", "load_reference",
    "main", "markdown_table", "ppt", "render", "render_markdown", "row_name", "summarize", "tuning_source",
    "write_report",
]
