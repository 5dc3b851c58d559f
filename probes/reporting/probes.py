"""``python -m analyses.probes RUN_DIR``: the strategy probe, layer by layer, before and after RL.

Writes ``figures/probes_strategy_curve.png`` and the table it shows,
``figures/probes_strategy_curve.csv``: for each model (pre-RL, post-RL) and layer, the held-out
balanced accuracy of the logistic probe (with its 95% bootstrap CI) and of the
difference-of-means probe (Marks and Tegmark 2023, arXiv 2310.06824) that read, from the residual
stream at the end of the prompt, which strategy the model is about to use; the control-task
selectivity (Hewitt and Liang 2019, arXiv 1909.03368); and, as flat lines, the majority-class and
problem-type baselines (the type alone nearly predicts the strategy of a model that follows the
natural one). A model whose probe was skipped (one strategy only) is named with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from probes.reporting.rundir import figure_cli, load, save_figure  # noqa: E402

MODELS = (("pre", "pre-RL", "tab:blue"), ("post", "post-RL", "tab:red"))


def _metric(node: dict | None, name: str = "balanced_accuracy") -> tuple[float | None, list | None]:
    m = ((node or {}).get("test") or {}).get(name) or {}
    return m.get("value"), m.get("ci")


def strategy_rows(probes: dict, target: str = "strategy") -> list[dict]:
    """One row per model and layer: logistic and difference-of-means balanced accuracy (with CI
    bounds) and the selectivity of the logistic probe's accuracy (fractions)."""
    rows = []
    for model, _, _ in MODELS:
        node = (probes.get("models") or {}).get(model, {}).get(target) or {}
        if node.get("status") != "ok":
            continue
        for r in node.get("per_layer", []):
            lv, lci = _metric(r.get("logistic"))
            dv, dci = _metric(r.get("diffmeans"))
            sel = ((r.get("selectivity") or {}).get("accuracy") or {}).get("value")
            rows.append({"model": model, "layer": r["layer"], "site": r.get("site"),
                         "logistic": lv, "logistic_lo": lci[0] if lci else None, "logistic_hi": lci[1] if lci else None,
                         "diffmeans": dv, "diffmeans_lo": dci[0] if dci else None,
                         "diffmeans_hi": dci[1] if dci else None, "selectivity": sel,
                         "best": r["layer"] == node.get("best_layer")})
    return rows


def strategy_curve_figure(run: str | Path, target: str = "strategy") -> Path:
    """Per-layer held-out balanced accuracy of the ``target`` probe of both models (PNG and CSV)."""
    run = Path(run)
    probes = load(run, "probes/probes.json")
    rows = strategy_rows(probes, target)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    notes = []
    for model, label, color in MODELS:
        node = (probes.get("models") or {}).get(model, {}).get(target) or {}
        mine = [r for r in rows if r["model"] == model]
        if not mine:
            notes.append(f"{label}: {node.get('reason') or 'no probe'}")
            continue
        xs = [r["layer"] for r in mine]
        ys = [r["logistic"] if r["logistic"] is not None else float("nan") for r in mine]
        ax.plot(xs, ys, "o-", color=color, label=f"{label} logistic")
        lo = [r["logistic_lo"] if r["logistic_lo"] is not None else float("nan") for r in mine]
        hi = [r["logistic_hi"] if r["logistic_hi"] is not None else float("nan") for r in mine]
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
        ax.plot(xs, [r["diffmeans"] if r["diffmeans"] is not None else float("nan") for r in mine], "s--",
                color=color, alpha=0.7, label=f"{label} diff-of-means")
        base = node.get("baselines") or {}
        for key, style in (("majority", ":"), ("type", "-.")):
            v = ((base.get(key) or {}).get("balanced_accuracy") or {}).get("value")
            if v is not None:
                ax.axhline(v, color=color, ls=style, lw=1, alpha=0.6, label=f"{label} {key} baseline")
    ax.set_xlabel(f"layer (blocks.L.{probes.get('settings', {}).get('hook', 'hook_resid_post')} at "
                  f"{probes.get('settings', {}).get('position', 'prompt_end')})")
    ax.set_ylabel("held-out balanced accuracy (fraction)")
    ax.set_ylim(-0.02, 1.05)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{target} probe: which strategy is the model about to use?")
    if notes:
        ax.text(0.02, 0.04, "\n".join(notes), transform=ax.transAxes, fontsize=8, va="bottom", wrap=True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, run, f"probes_{target}_curve.png", rows,
                       ["model", "layer", "site", "logistic", "logistic_lo", "logistic_hi", "diffmeans", "diffmeans_lo",
                        "diffmeans_hi", "selectivity", "best"])


def main(argv: list[str] | None = None) -> int:
    return figure_cli(argv, "probes", "probes/probes.json", strategy_curve_figure)


if __name__ == "__main__":
    sys.exit(main())
