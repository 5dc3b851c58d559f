"""``python -m analyses.grid GRID_DIR``: the table across pairs as a figure, and the grid's report.

``GRID_DIR`` is the folder of ``python -m probes.run --grid`` (``grid.json`` and one run folder
per pair). Writes ``figures/grid.png``: left, the behavioural decomposition of each pair's
accuracy change (delta, selection, improvement; Shapley split, accuracy units, 95% bootstrap
CIs); right, the recoveries from cross-model patching (the mechanistic selection and improvement
terms over the behavioural ones; 95% CIs; the dotted line is the verdict's recovery threshold),
with each pair's verdict label. :func:`write_grid_report` writes the
grid's ``report.md`` and ``report.html`` (the table, this figure, each pair's verdict).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from probes.reporting.rundir import load, save_figure  # noqa: E402


def _bar(ax, x, node, width, label, color):
    v = node.get("value")
    ci = node.get("ci")
    if v is None:
        ax.text(x, 0, "undef.", rotation=90, ha="center", va="bottom", fontsize=7, color=color)
        return
    err = None if not ci else np.array([[v - ci[0]], [ci[1] - v]]).clip(min=0)
    ax.bar([x], [v], width, yerr=err, capsize=3, color=color, label=label)


def grid_figure(grid_dir: str | Path) -> Path:
    """Behavioural decomposition and patching scores of every pair of a grid (``figures/grid.png``)."""
    grid_dir = Path(grid_dir)
    grid = load(grid_dir, "grid.json")
    rows = grid["pairs"]
    names = [r["pair"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    w = 0.25
    colors = {"delta": "tab:gray", "selection": "tab:blue", "improvement": "tab:orange"}
    for i, r in enumerate(rows):
        for j, term in enumerate(("delta", "selection", "improvement")):
            _bar(axes[0], i + (j - 1) * w, r["decomposition"][term], w, term if i == 0 else None, colors[term])
        for j, term in enumerate(("selection", "improvement")):
            _bar(axes[1], i + (j - 0.5) * w, r["verdict"][f"{term}_score"], w,
                 f"{term} recovery" if i == 0 else None, colors[term])
        axes[1].text(i, 1.02, r["verdict"]["label"], ha="center", va="bottom", fontsize=9, fontweight="bold",
                     transform=axes[1].get_xaxis_transform())
    for ax in axes:
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_xticks(np.arange(len(names)), [f"{r['sft']} ->\n{r['pair']}" for r in rows], fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("accuracy change (fraction correct)")
    axes[0].set_title("behaviour: delta = selection + improvement", fontsize=10)
    axes[1].set_ylabel("recovery (fraction of the behavioural term)")
    axes[1].set_title("patching: selection and improvement recoveries", fontsize=10, pad=16)
    thresholds = set()
    for r in rows:
        try:
            thresholds.add(load(grid_dir, f"{r['pair']}/results.json")["patching"]["verdict"]["rule"]["recovery_threshold"])
        except (OSError, KeyError, TypeError, ValueError):
            pass
    for t in thresholds:
        axes[1].axhline(t, color="k", ls=":", lw=0.8)
    fig.tight_layout()
    return save_figure(fig, grid_dir, "grid.png")


def write_grid_report(grid_dir: str | Path):
    """The grid's ``report.md`` and ``report.html`` (self-contained); returns their paths."""
    from probes.grid import grid_markdown
    from probes.report import Figure, Section, write_report

    grid_dir = Path(grid_dir)
    grid = load(grid_dir, "grid.json")
    rows = grid["pairs"]
    fig = grid_figure(grid_dir)
    pair_lines = []
    for r in rows:
        v = r["verdict"]

        def s(node):
            return "undefined" if node["value"] is None else f"{node['value']:+.2f}"

        regs = "".join(f"; **{x}**" for x in v.get("regressions") or [])
        pair_lines.append(f"- `{r['sft']}` -> `{r['pair']}`: **{v['label']}**{regs} (selection recovery "
                          f"{s(v['selection_score'])}, improvement recovery {s(v['improvement_score'])}); "
                          f"report `{r['report']}`")
    sections = [
        Section("Grid", "Each row is one shipped pair (the RL checkpoint and the SFT checkpoint its card names), "
                "run through the whole pipeline into its own folder. Behaviour: sampled accuracy at T = 1, "
                "P(forward) at the first response token, and the Shapley decomposition of the accuracy change "
                "with 95% bootstrap CIs. Mechanism: the verdict with every regression, the recoveries (the "
                "mechanistic term over the behavioural one, 95% CIs) and the best strategy probe (layer, held-out balanced accuracy).\n\n"
                + grid_markdown(rows),
                [Figure(str(fig.relative_to(grid_dir)), "behavioural decomposition (left) and patching recoveries "
                        "(right) of every pair, 95% CIs; dotted: the verdict's recovery threshold")]),
        Section("Pairs", "\n".join(pair_lines) or "no pair has results yet"),
        Section("Methods and sources",
                "- pairs: every checkpoint whose card (card.json) is an RL stage names its SFT init (probes.grid)\n"
                "- the task, the grid and the two mechanisms: Select and Improve (arXiv 2606.13125)\n"
                "- cross-model activation patching: Prakash et al. 2024 (arXiv 2402.14811)\n"
                "- probes: Hewitt and Liang 2019 (arXiv 1909.03368); Marks and Tegmark 2023 (arXiv 2310.06824)\n"
                f"- organism root: `{grid.get('organism_root')}`"),
    ]
    return write_report(grid_dir, "The grid: what RL changed, pair by pair", sections)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not (Path(argv[0]) / "grid.json").exists():
        print("usage: python -m analyses.grid GRID_DIR  (a folder written by python -m probes.run --grid)",
              file=sys.stderr)
        return 2
    print(grid_figure(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
