"""``python -m analyses.behaviour RUN_DIR``: strategy shares and the decomposition of a run.

Writes ``figures/behaviour_strategy.png`` (P(forward) at temperature 1 by problem type and
chain length, pre-RL against post-RL) and ``figures/behaviour_decomposition.png`` (delta,
selection and improvement with 95% bootstrap CIs, pooled and by type).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from probes.reporting.rundir import figure_cli, save_figure  # noqa: E402


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def strategy_figure(run: Path) -> Path:
    """P(forward) (first-token probability, T = 1) by type and k for both models."""
    from matplotlib.ticker import MaxNLocator

    from probes.runfolder import task_of

    task = task_of(run)  # the run's own task, also when drawn later by analyses.behaviour
    fig, axes = plt.subplots(1, len(task.types), figsize=(4.5 * len(task.types), 3.4), sharey=True, squeeze=False)
    axes = axes[0]
    for role, label, style in (("reference", "pre-RL", "o--"), ("model", "post-RL", "s-")):
        rows = _rows(run / "behaviour" / f"behaviour.{role}.jsonl")
        for ax, t in zip(axes, task.types):
            by_k = defaultdict(list)
            for r in rows:
                if r["type"] == t:
                    by_k[r["steps"]].append(r["pi"][0])
            ks = sorted(by_k)
            ax.plot(ks, [np.mean(by_k[k]) for k in ks], style, label=label)
            natural = (getattr(task, "natural_strategy", None) or {}).get(t)
            ax.set_title(f"{t}" + (f" (natural: {natural})" if natural else ""))
            ax.set_xlabel("chain length k (steps)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("P(forward) at first token")
    axes[0].set_ylim(-0.02, 1.02)
    axes[-1].legend()
    fig.tight_layout()
    return save_figure(fig, run, "behaviour_strategy.png")


def decomposition_figure(run: Path) -> Path:
    """Delta, selection and improvement (Shapley), pooled and by type, with 95% CIs."""
    beh = json.loads((run / "behaviour" / "behaviour.json").read_text())
    d = beh["decomposition"]
    groups = [("pooled", d["pooled"])] + list(d["by_type"].items())
    terms = ("delta", "selection", "improvement")
    fig, ax = plt.subplots(figsize=(7, 3.4))
    w = 0.25
    for j, term in enumerate(terms):
        xs = np.arange(len(groups)) + (j - 1) * w
        vals = [g[term] for _, g in groups]
        err = np.array([[g[term] - g[term + "_ci"][0], g[term + "_ci"][1] - g[term]] for _, g in groups]).T
        ax.bar(xs, vals, w, yerr=err, capsize=3, label=term)
    ax.axhline(0, color="k", lw=0.7)
    ax.set_xticks(np.arange(len(groups)), [n for n, _ in groups])
    ax.set_ylabel("accuracy change (fraction correct)")
    ax.set_title("RL's accuracy change: selection + improvement (Shapley split)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, run, "behaviour_decomposition.png")


def main(argv: list[str] | None = None) -> int:
    return figure_cli(argv, "behaviour", "behaviour/behaviour.json", strategy_figure, decomposition_figure)


if __name__ == "__main__":
    sys.exit(main())
