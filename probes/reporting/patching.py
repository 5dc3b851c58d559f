"""``python -m analyses.patching RUN_DIR``: recovery of the behavioural terms by cross-model patching.

Writes ``figures/patching_recovery.png`` and the table it shows, ``figures/patching_recovery.csv``.
Cross-model activation patching (CMAP, Prakash et al. 2024, arXiv 2402.14811) runs the pre-RL model
with one site's activations replaced by the post-RL model's; the patched model's strategy
probabilities (prompt positions patched) and exact forced accuracies (trace positions patched) give
the mechanistic selection and improvement terms in accuracy units, and their *recovery* is the
patched term over the behavioural one (0 = the pre-RL model, 1 = the whole behavioural term;
:mod:`probes.patching.mechanistic`). Left: selection, right: improvement; one line per hook and
layer, post-RL into pre-RL (solid, 95% bootstrap band) and pre-RL into post-RL (dashed); the dotted
line is the verdict's recovery threshold. A panel whose behavioural term is 0 says so. The nats-based
curves of the earlier rule are the stage's own secondary figures (``routing_*.png``, ``execution.png``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from probes.reporting.rundir import figure_cli, load, save_figure  # noqa: E402

DIRECTIONS = (("post_into_pre", "post-RL into pre-RL", "-"), ("pre_into_post", "pre-RL into post-RL", "--"))
from probes.patching.figures import HOOK_COLORS  # noqa: E402


def _nan(x):
    return float("nan") if x is None else x


def recovery_rows(patching: dict) -> list[dict]:
    """One row per term (selection, improvement), direction, hook and layer."""
    rows = []
    for direction, _, _ in DIRECTIONS:
        curves = ((patching.get("mechanistic") or {}).get(direction) or {}).get("curves") or {}
        for panel in ("selection", "improvement"):
            for hook, curve in (curves.get(panel) or {}).items():
                for layer, r in enumerate(curve):
                    ci = r.get("ci") or [None, None]
                    rows.append({"panel": panel, "direction": direction, "hook": hook, "layer": layer,
                                 "recovery": r.get("value"), "lo": ci[0], "hi": ci[1], "reason": r.get("reason"),
                                 "behaviour": r.get("behaviour"), "mechanistic": r.get("mechanistic"), "n": r.get("n")})
    return rows


def recovery_figure(run: str | Path) -> Path:
    """Selection and improvement recovery against layer, both directions (PNG and CSV)."""
    run = Path(run)
    patching = load(run, "patching/patching.json")
    rows = recovery_rows(patching)
    threshold = ((patching.get("verdict") or {}).get("rule") or {}).get("recovery_threshold")
    # whether a term is read is the run's verdict (the behaviour stage's terms on all its problems)
    run_verdict = load(run, "results.json").get("verdict") if (run / "results.json").exists() else None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    n_patched = len((patching.get("problems") or {}).get("cmap") or [])
    for ax, panel in zip(axes, ("selection", "improvement")):
        mine = [r for r in rows if r["panel"] == panel]
        finite = [r for r in mine if r["recovery"] is not None and math.isfinite(r["recovery"])]
        judged = (run_verdict.get(panel) or {}) if run_verdict else ((patching.get("verdict") or {}).get(panel) or {})
        for direction, label, style in DIRECTIONS:
            for hook, color in HOOK_COLORS.items():
                pts = sorted((r for r in mine if r["direction"] == direction and r["hook"] == hook),
                             key=lambda r: r["layer"])
                if not pts:
                    continue
                xs = [r["layer"] for r in pts]
                ax.plot(xs, [_nan(r["recovery"]) for r in pts], style, marker="o", ms=3, color=color)
                if direction == "post_into_pre" and judged.get("sign") != 0:  # no bands for a ratio not read
                    ax.fill_between(xs, [_nan(r["lo"]) for r in pts], [_nan(r["hi"]) for r in pts],
                                    color=color, alpha=0.12, lw=0)
        ax.axhline(0, color="grey", lw=1.0, ls="-")
        ax.axhline(1, color="grey", lw=0.8, ls=(0, (4, 2)))
        if threshold is not None:
            ax.axhline(threshold, color="purple", lw=0.9, ls=":")
        # the scale of the point estimates (CI bands of a tiny behavioural term can span +-20 and hide the curve)
        vals = [r["recovery"] for r in finite] + [0.0, 1.0]
        lo, hi = min(vals), max(vals)
        pad = 0.1 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
        if finite and judged.get("sign") == 0:  # the rule does not read this recovery: say so on the panel
            ax.text(0.5, 0.97, "the behavioural term does not exclude 0 by the minimum\n"
                    "effect: this recovery is a ratio to a tiny term and is not read", transform=ax.transAxes,
                    ha="center", va="top", fontsize=8, bbox=dict(facecolor="white", alpha=0.85, edgecolor="grey"))
        if not finite:
            reason = next((r["reason"] for r in mine if r["reason"]), "no curves")
            ax.text(0.5, 0.5, f"recovery undefined:\n{reason}", transform=ax.transAxes, ha="center",
                    va="center", fontsize=8, wrap=True)
        beh = next((r["behaviour"] for r in mine if r["direction"] == "post_into_pre"), None)
        where = "prompt" if panel == "selection" else "trace"
        sub = "" if beh is None else f"\nbehavioural term {beh:+.3f} accuracy on the {n_patched} patched problems"
        ax.set_title(f"{panel}: {where} positions patched{sub}", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"recovery (fraction of the behavioural {panel} term)", fontsize=9)
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    hooks = sorted({r["hook"] for r in rows}, key=list(HOOK_COLORS).index)
    handles = [Line2D([], [], color=HOOK_COLORS[h], marker="o", ms=3, label=h) for h in hooks]
    handles += [Line2D([], [], color="k", ls=style, label=label) for _, label, style in DIRECTIONS]
    handles += [Line2D([], [], color="grey", lw=0.8, ls=(0, (4, 2)), label="1: the whole term"),
                Line2D([], [], color="grey", lw=1.0, ls="-", label="0: none of it")]
    handles += [Line2D([], [], color="purple", ls=":", lw=0.9, label=f"recovery threshold {threshold}")] \
        if threshold is not None else []
    fig.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(0.81, 0.5))
    fig.suptitle("Cross-model patching: how much of each behavioural term the post-RL residual stream carries "
                 "(band: 95% CI)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.81, 0.95))
    return save_figure(fig, run, "patching_recovery.png", rows, ["panel", "direction", "hook", "layer", "recovery",
                                                                "lo", "hi", "reason", "behaviour", "mechanistic", "n"])


def main(argv: list[str] | None = None) -> int:
    return figure_cli(argv, "patching", "patching/patching.json", recovery_figure)


if __name__ == "__main__":
    sys.exit(main())
