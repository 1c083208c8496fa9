"""Compare evaluated models: their `scripts/evaluate.py` reports side by side, as a table and a bar chart.

It imports nothing that imports the `evaluate` library, so that `make demo`'s script, which cannot
import that library (scripts/evaluate.py shadows it there), renders the comparison in-process.
"""

from __future__ import annotations

from pathlib import Path

# Columns of the comparison of several evaluated models: (title, where the number is in a report,
# format). Arrows say which way is better.
COMPARISON_COLUMNS = (
    ("CHAIR_i ↓", ("captions", "chair_i"), "{:.3f}"),
    ("CHAIR_s ↓", ("captions", "chair_s"), "{:.3f}"),
    ("POPE F1 ↑", ("pope", "all", "f1"), "{:.3f}"),
    ("object recall ↑", ("captions", "recall"), "{:.3f}"),
    ("mean caption words", ("captions", "mean_caption_words"), "{:.1f}"),
)


# The breakdown beside them: where the wrong mentions come from. The prior's columns are empty ("-")
# for a report of a world without companions.
BREAKDOWN_COLUMNS = (
    ("CHAIR_i at matched length ↓", ("captions", "chair_i_matched_length"), "{:.3f}"),
    ("absent companions", ("captions", "hallucinations_by_kind", "absent_companion"), "{}"),
    ("wrong shape", ("captions", "hallucinations_by_kind", "wrong_shape"), "{}"),
    ("wrong colour", ("captions", "hallucinations_by_kind", "wrong_colour"), "{}"),
    ("swapped", ("captions", "hallucinations_by_kind", "swapped"), "{}"),
    ("co-occurrence lift ↓", ("captions", "companions", "lift"), "{:.3f}"),
    ("companion recall ↑", ("captions", "companions", "recall_when_present"), "{:.3f}"),
)


def _report_value(report: dict, path: tuple[str, ...]) -> float:
    for key in path:
        report = report[key]
    return report


def _breakdown_cell(report: dict, path: tuple[str, ...], form: str) -> str:
    try:
        return form.format(_report_value(report, path))
    except KeyError:  # a report from before the column existed, or of a world without companions
        return "-"


def comparison_markdown(reports: dict[str, dict]) -> str:
    """One row per evaluated model (name -> its report.json), the headline metrics as columns with
    CHAIR_i's 95% interval over resampled scenes (how far apart two rows must be to differ), then the
    breakdown of the wrong mentions by kind and the co-occurrence prior, as a second table."""
    titles = [title for title, _, _ in COMPARISON_COLUMNS] + ["CHAIR_i 95% interval"]
    lines = ["| model | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    for name, report in reports.items():
        cells = [form.format(_report_value(report, path)) for _, path, form in COMPARISON_COLUMNS]
        cells.append("{:.3f}-{:.3f}".format(*report["captions"]["intervals_95"]["chair_i"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    breakdown = [title for title, _, _ in BREAKDOWN_COLUMNS]
    lines += ["", "| model | " + " | ".join(breakdown) + " |", "|---|" + "---|" * len(breakdown)]
    for name, report in reports.items():
        lines.append(
            f"| {name} | "
            + " | ".join(_breakdown_cell(report, p, form) for _, p, form in BREAKDOWN_COLUMNS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def comparison_chart(reports: dict[str, dict], path: Path) -> None:
    """A bar chart of the same numbers: the four rates grouped per metric, caption length beside them."""
    # Imported here: matplotlib takes a while to import and only this chart needs it.
    from matplotlib import style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rates, (length_title, length_path, _) = COMPARISON_COLUMNS[:-1], COMPARISON_COLUMNS[-1]
    with style.context("default"):
        figure = Figure(figsize=(9, 3.6), layout="constrained")
        rate_axes, length_axes = figure.subplots(1, 2, width_ratios=(4, 1))
        width = 0.8 / len(reports)
        for index, (name, report) in enumerate(reports.items()):
            offsets = [column + (index - (len(reports) - 1) / 2) * width for column in range(len(rates))]
            rate_axes.bar(offsets, [_report_value(report, p) for _, p, _ in rates], width, label=name)
            length_axes.bar([index], [_report_value(report, length_path)], 0.8, color=f"C{index}")
        rate_axes.set_xticks(range(len(rates)), [title for title, _, _ in rates])
        rate_axes.set_ylim(0, 1)
        rate_axes.legend(fontsize="small")
        length_axes.set_xticks(range(len(reports)), list(reports), rotation=30, ha="right", fontsize="small")
        length_axes.set_title(length_title, fontsize="medium")
        FigureCanvasAgg(figure).print_png(str(path))
