"""A suite's whole report, rendered in memory: the markdown of ``<suite>.md`` (one leaderboard per
backbone, each with its statistics section; then the trade-offs, the tuning analysis and the
published reference), the JSON of ``<suite>_stats.json`` and the PNGs by file name. Writing them
is ``write``'s job.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .. import catalog, tracking
from . import stats_section, tradeoff
from .board import Board, leaderboard
from .cells import by_backbone, checkout_commit, row_name
from .paper import load_reference, not_compared, paper_table
from .stats_json import suite_json
from .tuning import section as tuning_section


@dataclass
class Rendered:
    """A suite's report: the markdown, the JSON and the PNGs by file name (in reading order)."""
    text: str
    summary: pd.DataFrame
    stats_json: dict
    pngs: dict[str, bytes]


def cd_name(suite: catalog.Suite, backbone: str, first: bool) -> str:
    return f"{suite.name}_cd.png" if first else f"{suite.name}_cd_{backbone}.png"


def board_stats(board: Board, suite: catalog.Suite, first: bool, level: str,
                pngs: dict[str, bytes]) -> list[str]:
    """The statistics section of one board (rows with a failed seed left out, as in its Avg rank
    column); its CD diagram goes into ``pngs``."""
    stats = board.stats
    name = None
    if stats.pairs:
        name = cd_name(suite, board.backbone, first)
        title = suite.title if first else f"{suite.title} on {board.backbone}"
        pngs[name] = stats_section.cd_png(stats, title)
    return stats_section.section(stats, name, level)


def render(suite: catalog.Suite, all_runs: pd.DataFrame, commit: tuple[str, str] | None = None,
           tuning: tuple[list, str] | None = None) -> Rendered:
    """The whole report of a suite. ``commit``: (the current commit, where it comes from); by
    default the checkout's (``checkout_commit``). ``tuning``: (the suite's tuning studies, where
    they were read) from ``bench.report.tuning.tuning_source``, or (None, why there are none)."""
    commit = commit or checkout_commit(all_runs[~all_runs["failed"]])
    reference = load_reference(suite.name)
    boards = [leaderboard(suite, runs, commit, backbone == suite.backbone, backbone)
              for backbone, runs in by_backbone(suite, all_runs)]
    several = len(boards) > 1
    pngs: dict[str, bytes] = {}
    lines = [f"# {suite.title} leaderboard", ""]
    if not several:
        b, = boards
        lines += [f"Rendered by `bench report` from {b.n_runs} finished final runs on backbone `{b.backbone}` in "
                  f"the MLflow experiment `{tracking.experiment_name(suite.name)}` ({b.summary.shape[0]} rows, "
                  f"{len(b.tasks)} tasks). Current commit: {commit[0]}.", "", *b.lines]
        if reference is not None and b.backbone != suite.backbone:
            lines.append(f"- {not_compared(suite, b.backbone)}")
        lines += ["", *board_stats(b, suite, True, "##", pngs)]
    else:
        lines += [f"Rendered by `bench report` from {sum(b.n_runs for b in boards)} finished final runs in the "
                  f"MLflow experiment `{tracking.experiment_name(suite.name)}` on {len(boards)} backbones: one "
                  f"leaderboard per backbone (rows, means and bold marks never mix backbones). Current commit: "
                  f"{commit[0]}.", ""]
        for i, b in enumerate(boards):
            own = b.backbone == suite.backbone
            lines += [f"## Backbone `{b.backbone}`" + (" (the published rows' backbone)" if own else ""), "",
                      f"{b.n_runs} finished final runs ({b.summary.shape[0]} rows, {len(b.tasks)} tasks).", "",
                      *b.lines]
            if reference is not None and not own:
                lines.append(f"- {not_compared(suite, b.backbone)}")
            lines += ["", *board_stats(b, suite, i == 0, "###", pngs), ""]
    summary = pd.concat([b.summary.assign(backbone=b.backbone)
                         .rename(index=lambda label, b=b: row_name(label, b.backbone, suite, several))
                         for b in boards])
    trade_lines, trade_pngs = tradeoff.section(summary, suite.name, suite.title)
    lines += ["", *trade_lines, ""]
    pngs.update(trade_pngs)
    if tuning is not None:
        results, where = tuning
        if results is None:
            lines += ["## Tuning (Optuna)", "", f"Tuning analysis omitted: {where.rstrip('.')}.", ""]
        else:
            tune_lines, tune_pngs = tuning_section(results, where, suite.name, suite.title)
            lines += ["", *tune_lines, ""]
            pngs.update(tune_pngs)
    if reference is not None:
        shown = {t for b in boards for t in b.tasks}
        lines += ["## Published reference", "",
                  f"As transcribed in bench/catalog_data/reference/{suite.name}_reported.csv ('-': not transcribed, "
                  f"never imputed). Rows ending in _star use SSF-style data augmentation: another protocol, "
                  f"never the reference of a run without it.", "",
                  paper_table(reference, [t for t in suite.tasks if t in shown]), ""]
    if all_runs.attrs.get("unidentified"):
        lines += [f"Not counted: {all_runs.attrs['unidentified']} final run(s) written by an older version of bench, "
                  "without an experiment identity (`bench.identity`): rerun them to count them.", ""]
    # one blank line between blocks, however the sections above ended
    text = "\n".join(line for i, line in enumerate(lines) if line or not (i and lines[i - 1] == ""))
    return Rendered(text, summary, suite_json(suite, boards), pngs)


def render_markdown(suite: catalog.Suite, all_runs: pd.DataFrame,
                    commit: tuple[str, str] | None = None) -> tuple[str, pd.DataFrame]:
    """The ``<suite>.md`` text without a tuning section, and the per-row summary the plots draw."""
    r = render(suite, all_runs, commit)
    return r.text, r.summary
