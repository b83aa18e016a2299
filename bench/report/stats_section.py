"""The statistics section under a leaderboard (markdown) and its critical-difference diagram
(PNG), from ``stats.SuiteStats``. Kept apart from the numbers so that ``bench compare`` and
the JSON use them without any formatting.

The markdown lists the pairs of the best-ranked row with every other row (18 rows make 153 pairs:
all of them are in ``<suite>_stats.json``) and every other pair that is significant. The diagram
is scikit-posthocs' ``critical_difference_diagram`` with the Holm-corrected Wilcoxon p-values of
the table (the test Benavoli et al. 2016 recommend over Nemenyi's), so diagram and table agree.
Its bars are the maximal groups of rows no pair of which differs (``stats.cliques``); a bar
is drawn from its best- to its worst-ranked member with a dot on each member, so it can pass over
a row that is not in it: the caption lists every bar's rows and names such rows.
"""
from __future__ import annotations

import pandas as pd

from . import stats as st
from .format import ci_text, fmt, fmt_p, markdown_table
from .png import figure, png_bytes


DISAGREES = "¶"  # the mark of a pair whose mean difference points the other way from its signed ranks


def favours_text(p: st.Pair) -> str:
    """The row the signed ranks favour, with their sums (W+ for A, W− for B), marked ¶ where the
    mean difference favours the other row."""
    name = p.favours or "neither"
    return f"{name} ({p.w_plus:g} / {p.w_minus:g})" + (f" {DISAGREES}" if p.mean_disagrees else "")


def pair_rows(pairs: list[st.Pair]) -> str:
    rows = [[p.a, p.b, fmt(p.mean_diff, 2, sign=True), ci_text(p.ci95, 2, sign=True), favours_text(p),
             fmt_p(p.p), fmt_p(p.p_holm), f"{p.wins}/{p.ties}/{p.losses}",
             "yes" if p.p_holm < st.ALPHA else "no"] for p in pairs]
    headers = ["A", "B", "Mean diff (A − B)", "95% CI", "Signed ranks favour (W+ / W−)", "p", "p (Holm)",
               "W/T/L of A", "Significant"]
    return markdown_table(rows, headers)


def cd_caption(stats: st.SuiteStats) -> list[str]:
    """What the diagram's bars say, true whether or not the groups are contiguous in rank: each bar's
    rows listed, and any row a bar passes over without being in it."""
    groups = st.cliques(stats)
    text = ("- Critical difference diagram: each row sits at its average rank (1 = best, left). A thick bar "
            "joins a group of rows no two of which differ significantly (Holm-corrected Wilcoxon, p (Holm) ≥ "
            f"{st.ALPHA}); a dot on the bar marks each row of its group. Two rows that are in no group together "
            "differ significantly. A long bar means the tasks cannot separate its rows, whatever their means say.")
    if not groups:
        return [text + " No bar: every pair differs significantly."]
    lines = [text + " The bars, best-ranked first:"]
    for group in groups:
        over = st.passed_over(stats, group)
        line = f"  - {', '.join(group)}"
        if over:
            line += (f" (the bar passes over {', '.join(over)}, which {'is' if len(over) == 1 else 'are'} not in "
                     f"this group: each differs significantly from at least one of its rows)")
        lines.append(line)
    return lines


def section(stats: st.SuiteStats, cd_png: str | None, level: str = "##") -> list[str]:
    """Markdown lines: what is compared, Friedman, the pairwise table, the CD diagram; or one
    line saying why the tests are omitted."""
    n, k = len(stats.tasks), len(stats.rows)
    lines = [f"{level} Statistics: which differences are real", ""]
    if stats.left_out:
        lines += [f"Not compared (no final run for every task shown): {', '.join(stats.left_out)}.", ""]
    if stats.failed:
        lines += [f"Not compared (a seed's final fit failed and was not redone, § in the leaderboard: a cell over "
                  f"the surviving seeds is no contest): {', '.join(stats.failed)}.", ""]
    if stats.omitted and not stats.average_rank:
        return lines + [f"Statistics omitted: {stats.omitted}.", ""]
    lines += [f"Compared: {k} rows on the {n} tasks they all have. Avg rank: the mean over tasks of the row's "
              f"rank on the task (1 = the highest cell; ties share the average rank).", ""]
    if stats.omitted:
        return lines + [f"Tests omitted: {stats.omitted}.", ""]
    m = len(stats.pairs)
    if stats.friedman is None:
        lines.append(f"- Friedman test: not defined for {k} rows; the one Wilcoxon test below is the test.")
    else:
        chi2, p = stats.friedman
        verdict = ("the rows' ranks differ" if p < st.ALPHA
                   else "no evidence that the rows' ranks differ at all; read the pairs below with that in mind")
        lines.append(f"- Friedman test over {k} rows × {n} tasks (per-task mean accuracy): χ² = {fmt(chi2, 2)}, "
                     f"p = {fmt_p(p)}: {verdict}.")
    lines.append(f"- Pairs: two-sided Wilcoxon signed-rank test over the {n} tasks on the per-task means, with zero "
                 f"differences split between the signs (zsplit, Demšar 2006): p; Holm-corrected over all {m} pairs: "
                 f"p (Holm); significant: p (Holm) < {st.ALPHA}. A significant pair's winner is the row its "
                 f"signed ranks favour: W+ (the rank sum of the tasks A wins) against W− (those B wins), the "
                 f"statistic the test is about, not the sign of the mean difference; {DISAGREES} marks a pair "
                 f"whose mean difference favours the other row (a few large differences against many small "
                 f"ones). Mean diff: mean over tasks of A − B in points, its 95% CI a percentile bootstrap over "
                 f"tasks and, within each, seeds ({st.N_BOOT} resamples, fixed seed). W/T/L: tasks where A's "
                 f"cell is higher / equal / lower at the table's precision.")
    floor = st.min_wilcoxon_p(n)
    if floor * m >= st.ALPHA and m > 1:
        lines.append(f"- With {n} tasks the smallest p a Wilcoxon test can give is {fmt_p(floor)} (A better on "
                     f"every task); Holm multiplies the smallest p by {m}, so no pair can be significant here: "
                     f"more tasks are needed to tell these rows apart, not more seeds.")
    elif floor >= st.ALPHA:
        lines.append(f"- With {n} tasks the smallest p a Wilcoxon test can give is {fmt_p(floor)}: no pair can "
                     f"be significant at {st.ALPHA}.")
    significant = [p for p in stats.pairs if p.p_holm < st.ALPHA]
    best = stats.rows[0]
    shown = [p for p in stats.pairs if p.a == best] + [p for p in significant if p.a != best]
    lines.append(f"- {len(significant)} of {m} pairs differ significantly. Below: {best} (the best average rank) "
                 f"against every other row" + (", then the other significant pairs" if len(shown) > k - 1 else "")
                 + "; every pair is in the JSON beside this file.")
    lines += ["", pair_rows(shown), ""]
    disagree = [p for p in shown if p.mean_disagrees]
    if disagree:
        lines += [f"- {DISAGREES} " + "; ".join(
            f"{p.a} vs {p.b}: the signed ranks favour {p.favours}, the mean difference "
            f"({fmt(p.mean_diff, 2, sign=True)}) the other row" + (" (significant: the verdict follows the ranks)"
                                                                   if p.p_holm < st.ALPHA else "")
            for p in disagree) + ".", ""]
    if cd_png:
        lines += [f"![Critical difference diagram]({cd_png})", "", *cd_caption(stats), ""]
    return lines


def cd_png(stats: st.SuiteStats, title: str) -> bytes:
    """The critical-difference diagram of the compared rows (scikit-posthocs), as PNG bytes."""
    from scikit_posthocs import critical_difference_diagram

    ranks = pd.Series(stats.average_rank).loc[stats.rows]
    k = len(stats.rows)
    fig = figure(8.0, 1.6 + 0.28 * ((k + 1) // 2 + k // 3))
    ax = fig.add_subplot()
    drawn = critical_difference_diagram(ranks, st.p_matrix(stats), alpha=st.ALPHA, ax=ax,
                                        label_fmt_left="{label} ({rank:.2f})",
                                        label_fmt_right="({rank:.2f}) {label}",
                                        label_props={"fontsize": 8},
                                        crossbar_props={"marker": "o", "markersize": 4})
    for line in [ln for bar in drawn["crossbars"] for ln in bar]:
        # the library draws each bar through a set of rows: sort its points, so that the order of
        # a set (the hash seed) never changes a pixel
        xs, ys = line.get_data()
        line.set_data(sorted(xs), ys)
    ax.set_title(f"{title}: average rank over {len(stats.tasks)} tasks (a bar: its dotted rows do not differ "
                 f"significantly)",
                 fontsize=9, pad=24)
    # the labels sit outside the axes, where tight_layout does not look: leave them room
    fig.subplots_adjust(left=0.22, right=0.78, top=1 - 0.75 / fig.get_figheight(), bottom=0.04)
    return png_bytes(fig)
