"""Figures of the probe results (matplotlib, Agg backend, PNG), one function per figure.

Each function takes the JSON-able results (:func:`probes.probing.sweep.probe_layers` summaries,
:func:`probes.probing.transfer.probe_transfer`, :func:`probes.probing.steering.steering_dose_response`)
so figures can be redrawn from ``probes.json`` alone, and returns the path written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_COLORS = {"pre": "tab:blue", "post": "tab:orange"}


def _series(per_layer: list[dict], probe: str, metric: str, part: str = "test"):
    xs, ys, lo, hi = [], [], [], []
    for r in per_layer:
        s = r.get(probe, {})
        s = s.get(part, s) if isinstance(s, dict) else {}
        m = s.get(metric) if isinstance(s, dict) else None
        if not isinstance(m, dict) or m.get("value") is None:
            continue
        xs.append(r["layer"])
        ys.append(m["value"])
        ci = m.get("ci") or [m["value"], m["value"]]
        lo.append(ci[0])
        hi.append(ci[1])
    return np.array(xs), np.array(ys), np.array(lo), np.array(hi)


def _save(fig, path) -> Path:
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if "layer" in ax.get_xlabel():
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _empty(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True, fontsize=9)


def plot_layer_curves(summaries: Mapping[str, dict], path, metric: str = "balanced_accuracy") -> Path:
    """Per-layer test score of the logistic and difference-of-means probes of each model, with
    95% CI bands, the control task and shuffled-label null, and the baselines as lines.

    Args:
        summaries: model name (``pre``, ``post``) -> a classification sweep summary.
        metric: ``accuracy``, ``balanced_accuracy`` or ``auroc``.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for i, (name, s) in enumerate(summaries.items()):
        color = _COLORS.get(name, f"C{i}")
        if s.get("status") != "ok":
            ax.plot([], [], color=color, label=f"{name}: skipped ({s.get('reason', '')[:50]})")
            continue
        pl = s["per_layer"]
        for probe, style in (("logistic", "-"), ("diffmeans", "--")):
            x, y, lo, hi = _series(pl, probe, metric)
            if x.size:
                drawn = True
                ax.plot(x, y, style, color=color, marker="o", ms=3, label=f"{name} {probe}")
                ax.fill_between(x, lo, hi, color=color, alpha=0.15)
        for probe, style in (("control", ":"), ("shuffled", "-.")):
            x, y, lo, hi = _series(pl, probe, metric)
            if x.size:
                ax.plot(x, y, style, color=color, alpha=0.6, label=f"{name} {probe}")
        for j, (bname, b) in enumerate((s.get("baselines") or {}).items()):
            m = b.get(metric) if isinstance(b, dict) else None
            if isinstance(m, dict) and m.get("value") is not None:
                ax.axhline(m["value"], color=color, lw=0.8, alpha=0.5, ls=(0, (1, 1 + j)))
                ax.annotate(f"{name} {bname}", (1.0, m["value"]), xycoords=("axes fraction", "data"),
                            fontsize=7, color=color, ha="right", va="bottom")
    if metric in ("balanced_accuracy", "auroc"):
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    if not drawn:
        _empty(ax, "no probe results to draw")
    target = next(iter(summaries.values()), {}).get("target", "target")
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} on held-out chains (fraction)")
    ax.set_title(f"linear probes for {target}, per layer (95% CI)")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def plot_selectivity(summaries: Mapping[str, dict], path) -> Path:
    """Per-layer selectivity (probe accuracy minus control-task accuracy, Hewitt and Liang
    2019) with paired 95% CIs, for each model."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for i, (name, s) in enumerate(summaries.items()):
        if s.get("status") != "ok":
            continue
        xs, ys, lo, hi = [], [], [], []
        for r in s["per_layer"]:
            sel = (r.get("selectivity") or {}).get("accuracy") or {}
            if sel.get("value") is None:
                continue
            xs.append(r["layer"])
            ys.append(sel["value"])
            ci = sel.get("ci") or [sel["value"]] * 2
            lo.append(ci[0])
            hi.append(ci[1])
        if xs:
            drawn = True
            color = _COLORS.get(name, f"C{i}")
            ax.errorbar(xs, ys, yerr=[np.array(ys) - lo, np.array(hi) - ys], color=color, marker="o", ms=3,
                        capsize=2, label=name)
    ax.axhline(0, color="gray", lw=0.8)
    if not drawn:
        _empty(ax, "no selectivity (control task skipped)")
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("selectivity: probe - control accuracy (fraction)")
    ax.set_title("selectivity per layer (95% CI, paired bootstrap)")
    if drawn:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_within_type(summaries: Mapping[str, dict], path, metric: str = "balanced_accuracy") -> Path:
    """Per-layer score of the logistic probe within each problem type, for each model (the
    type is nearly a format proxy of the strategy, so within-type scores are the informative
    ones)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    styles = {"evaluation": "-", "inversion": "--"}
    for i, (name, s) in enumerate(summaries.items()):
        if s.get("status") != "ok":
            continue
        color = _COLORS.get(name, f"C{i}")
        for t in ("evaluation", "inversion"):
            xs, ys, lo, hi = [], [], [], []
            for r in s["per_layer"]:
                m = (((r.get("within_type") or {}).get("logistic") or {}).get(t) or {}).get(metric) or {}
                if m.get("value") is None:
                    continue
                xs.append(r["layer"])
                ys.append(m["value"])
                ci = m.get("ci") or [m["value"]] * 2
                lo.append(ci[0])
                hi.append(ci[1])
            if xs:
                drawn = True
                ax.plot(xs, ys, styles[t], color=color, marker="o", ms=3, label=f"{name} {t}")
                ax.fill_between(xs, lo, hi, color=color, alpha=0.12)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    if not drawn:
        _empty(ax, f"no within-type {metric} (a type with one class, or skipped)")
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} within type (fraction)")
    ax.set_title("logistic probe within each problem type (95% CI)")
    if drawn:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_regression_curves(summaries: Mapping[str, dict], path) -> Path:
    """Per-layer held-out R^2 of the ridge probe of a continuous target (propensity, nats),
    with 95% CIs and the shuffled null, for each model."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for i, (name, s) in enumerate(summaries.items()):
        if s.get("status") != "ok":
            continue
        color = _COLORS.get(name, f"C{i}")
        for probe, style in (("ridge", "-"), ("shuffled", "-.")):
            x, y, lo, hi = _series(s["per_layer"], probe, "r2")
            if x.size:
                drawn = True
                ax.plot(x, y, style, color=color, marker="o", ms=3, label=f"{name} {probe}")
                ax.fill_between(x, lo, hi, color=color, alpha=0.12)
    ax.axhline(0, color="gray", lw=0.8)
    if not drawn:
        _empty(ax, "no regression results")
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("R^2 on held-out chains (dimensionless)")
    ax.set_title("ridge probe of log P(F)/P(B) (95% CI)")
    if drawn:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_transfer(transfer: dict, path) -> Path:
    """Transfer between models per layer: each model's probe scored on the other model's test
    rows next to the other model's own probe (accuracy, 95% CI), and the cosine between the
    two models' probe directions."""
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    if transfer.get("status") != "ok":
        _empty(ax, f"transfer skipped: {transfer.get('reason', '')}")
        _empty(ax2, "")
    else:
        a, b = transfer["names"]
        pl = transfer["per_layer"]
        for key, style, color in ((f"{a}_to_{b}", "--", _COLORS.get(b, "C1")), (f"{b}_own", "-", _COLORS.get(b, "C1")),
                                  (f"{b}_to_{a}", "--", _COLORS.get(a, "C0")), (f"{a}_own", "-", _COLORS.get(a, "C0"))):
            rows = [(r["layer"], r[key]["accuracy"]) for r in pl if r.get(key, {}).get("accuracy", {}).get("value") is not None]
            if rows:
                x = np.array([r[0] for r in rows])
                y = np.array([r[1]["value"] for r in rows])
                ci = np.array([r[1].get("ci") or [r[1]["value"]] * 2 for r in rows])
                label = key.replace("_to_", " probe on ").replace("_own", " own probe")
                ax.plot(x, y, style, color=color, marker="o", ms=3, label=label)
                ax.fill_between(x, ci[:, 0], ci[:, 1], color=color, alpha=0.1)
        ax.set_ylabel("accuracy on shared test chains (fraction)")
        ax.legend(fontsize=8)
        for key, style in (("cosine_logistic", "-"), ("cosine_diffmeans", "--")):
            rows = [(r["layer"], r[key]) for r in pl if r.get(key) is not None]
            if rows:
                ax2.plot([r[0] for r in rows], [r[1] for r in rows], style, marker="o", ms=3, color="k",
                         label=key.replace("cosine_", ""))
        ax2.axhline(0, color="gray", lw=0.8)
        ax2.legend(fontsize=8)
    ax.set_title("probe transfer between models")
    ax2.set_xlabel("layer (block index)")
    ax2.set_ylabel("cosine of probe directions (dimensionless)")
    return _save(fig, path)


def plot_dose_response(dose: dict, path) -> Path:
    """Steering dose-response: mean P(F) at the first response token (95% CI) and the share of
    greedy responses of each strategy, against the multiple of the difference-of-means
    direction added at the prompt end."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if dose.get("status") == "skipped" or not dose.get("alphas"):
        _empty(ax, f"steering skipped: {dose.get('reason', '')}")
    else:
        a = np.array(dose["alphas"])
        pf = np.array([r["mean"] for r in dose["p_forward"]])
        ci = np.array([r["ci"] for r in dose["p_forward"]])
        ax.plot(a, pf, "-o", color="k", ms=3, label="P(F) at first token")
        ax.fill_between(a, ci[:, 0], ci[:, 1], color="k", alpha=0.12)
        for key, style in (("generated", "--"), ("generated_first_word", ":")):
            if dose.get(key):
                for s, color in (("forward", "tab:green"), ("backward", "tab:red"), ("unparseable", "tab:gray")):
                    ax.plot(a, [g[s] for g in dose[key]], style, color=color, marker=".",
                            label=f"{s} share ({key.replace('_', ' ')})")
        ax.legend(fontsize=7)
    ax.set_xlabel("alpha (multiples of mu_F - mu_B added at the prompt end)")
    ax.set_ylabel("probability / share of responses (fraction)")
    ax.set_title(f"steering dose-response at {dose.get('site', '?')}")
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, path)
