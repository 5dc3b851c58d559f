"""Figures of the patching results: one function per figure, PNG, labelled axes with units.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot
state, no display needed), so they render the same in tests, on servers and in notebooks.

- :func:`plot_term_curves`: recovery of the behavioural selection and improvement terms against
  layer (the verdict's curves);
- :func:`plot_recovery_curves`: recovery (fraction of the gap) against layer, one line per hook,
  95% CI bands, one panel per direction;
- :func:`plot_heatmap`: layer x position normalised logit difference of a counterfactual sweep,
  one panel per hook;
- :func:`plot_attribution`: AtP estimates against exact patching, per cell;
- :func:`plot_behaviour`: strategy share and accuracy of the recipient, the donor and the
  patched generations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from probes.patching.attribution import Attribution
from probes.reporting.rundir import save_png
from probes.patching.cmap import CurveResult
from probes.patching.counterfactual import Heatmap

HOOK_COLORS = {"hook_resid_pre": "tab:blue", "hook_attn_out": "tab:orange", "hook_mlp_out": "tab:green",
               "hook_resid_post": "tab:red"}
"""The colour of each block hook in every patching figure (matplotlib's default cycle)."""



def _save(fig: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(fig)
    return save_png(fig, path)


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, wrap=True)


def plot_recovery_curves(curves: Mapping[str, CurveResult], path: str | os.PathLike, title: str) -> Path:
    """Recovery against layer for each direction (panels) and hook (lines), with CI bands.

    Undefined recoveries (donor and recipient agree) leave gaps and a note in the panel.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(5.2 * max(1, len(curves)), 4.0), layout="constrained")
    axes = fig.subplots(1, max(1, len(curves)), squeeze=False)[0]
    for ax, (direction, res) in zip(axes, curves.items()):
        layers = np.arange(res.n_layers)
        any_defined = False
        for hook in res.hooks:
            recs = res.curve(hook)
            y = np.array([np.nan if r.value is None else r.value for r in recs])
            lo = np.array([np.nan if r.ci is None else r.ci[0] for r in recs])
            hi = np.array([np.nan if r.ci is None else r.ci[1] for r in recs])
            any_defined |= bool(np.isfinite(y).any())
            line = ax.plot(layers, y, marker="o", label=hook)[0]
            ax.fill_between(layers, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.set_ylabel("recovery (fraction of gap; 0 = recipient, 1 = donor)")
        unit = res.metric.get("unit", "")
        ax.set_title(f"{direction.replace('_', ' ')} @ {res.positions}\n"
                     f"{res.metric.get('name', '')}: recipient {float(res.recipient.mean()):.2f}, "
                     f"donor {float(res.donor.mean()):.2f} {unit}", fontsize=9)
        if not any_defined:
            _note(ax, "undefined: donor and recipient agree\n" + (res.recoveries[0].reason or ""))
        else:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_term_curves(curves: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | os.PathLike,
                     threshold: float | None, title: str) -> Path:
    """Recovery of the behavioural selection and improvement terms against layer (panels: the two
    terms; lines: hooks; solid with a 95% CI band: post-RL into pre-RL, dashed: pre-RL into post-RL).

    Args:
        curves: ``{direction: {term: {hook: [TermRecovery per layer]}}}``
            (:func:`probes.patching.mechanistic.recovery_curves` per direction).
        threshold: the verdict's recovery threshold (a dotted line), or None.

    Returns:
        The path written.
    """
    terms = ("selection", "improvement")
    fig = Figure(figsize=(10.4, 4.0), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    colors = HOOK_COLORS
    for ax, term in zip(axes, terms):
        any_defined, beh = False, None
        for direction, style in (("post_into_pre", "-"), ("pre_into_post", "--")):
            for hook, recs in (curves.get(direction, {}).get(term) or {}).items():
                layers = np.arange(len(recs))
                y = np.array([np.nan if r.value is None else r.value for r in recs])
                any_defined |= bool(np.isfinite(y).any())
                color = colors.get(hook)
                ax.plot(layers, y, style, marker="o", ms=3, color=color,
                        label=hook if direction == "post_into_pre" else None)
                if direction == "post_into_pre":
                    beh = recs[0] if recs else beh
                    lo = np.array([np.nan if r.ci is None else r.ci[0] for r in recs])
                    hi = np.array([np.nan if r.ci is None else r.ci[1] for r in recs])
                    ax.fill_between(layers, lo, hi, color=color, alpha=0.15, linewidth=0)
                    ax.set_xticks(layers)
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.axhline(1, color="grey", lw=0.8, ls="--")
        if threshold is not None:
            ax.axhline(threshold, color="k", lw=0.8, ls=":")
        values = [r.value for d in curves.values() for recs in (d.get(term) or {}).values() for r in recs
                  if r.value is not None and np.isfinite(r.value)]
        lo, hi = min(values + [0.0]), max(values + [1.0])
        ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))  # the point estimates, not a tiny term's CI band
        ax.set_xlabel("layer")
        ax.set_ylabel(f"recovery (fraction of the behavioural {term} term)", fontsize=8)
        sub = "" if beh is None else f"\nbehavioural term {beh.behaviour:+.3f} accuracy (post-RL minus pre-RL), n={beh.n}"
        where = "prompt" if term == "selection" else "trace"
        ax.set_title(f"{term}: {where} positions patched{sub}", fontsize=9)
        if not any_defined:
            _note(ax, "undefined: " + ((beh.reason if beh is not None else None) or "no curves"))
        else:
            ax.legend(fontsize=7, title="solid: post into pre\ndashed: pre into post", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_heatmap(hm: Heatmap, path: str | os.PathLike, title: str) -> Path:
    """Layer x position normalised logit difference (0 = corrupt, 1 = clean), one panel per hook.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(max(6.0, 0.42 * hm.n_positions + 1.5), 1.2 + 0.9 * (hm.n_layers + 1) * len(hm.hooks)),
                 layout="constrained")
    axes = fig.subplots(len(hm.hooks), 1, squeeze=False)[:, 0]
    for ax, hook in zip(axes, hm.hooks):
        grid = hm.grid(hook)
        im = ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", origin="lower")
        ax.set_yticks(range(hm.n_layers))
        ax.set_ylabel(f"layer\n({hook})", fontsize=8)
        ax.set_xticks(range(hm.n_positions))
        ax.set_xticklabels(hm.position_labels, rotation=60, fontsize=7)
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("normalised logit diff\n(0 = corrupt, 1 = clean)", fontsize=7)
        if not hm.defined:
            _note(ax, "undefined: clean and corrupt runs agree")
    axes[-1].set_xlabel("token position (clean/corrupt where they differ)")
    fig.suptitle(f"{title} ({hm.mode}; clean {float(hm.clean.mean()):.2f}, corrupt {float(hm.corrupt.mean()):.2f} nats)",
                 fontsize=10)
    return _save(fig, path)


def plot_attribution(atp: Attribution, exact: np.ndarray, agree: Mapping[str, Any], path: str | os.PathLike,
                     title: str) -> Path:
    """AtP estimate against exact patching for every cell (both as fractions of the gap).

    Args:
        atp: the AtP result.
        exact: ``[K]`` exact normalised effects of the same cells.
        agree: :func:`probes.patching.attribution.agreement` of the two.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(4.8, 4.4), layout="constrained")
    ax = fig.subplots()
    est = atp.values()
    per = atp.n_layers * atp.n_positions
    for i, hook in enumerate(atp.hooks):
        sl = slice(i * per, (i + 1) * per)
        ax.scatter(exact[sl], est[sl], s=10, alpha=0.7, label=hook)
    finite = np.isfinite(est) & np.isfinite(exact)
    if finite.any():
        lim = [min(est[finite].min(), exact[finite].min(), 0) - 0.05, max(est[finite].max(), exact[finite].max(), 1) + 0.05]
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=7)
    else:
        _note(ax, "undefined: donor and recipient agree")
    ax.set_xlabel("exact patching (fraction of gap)")
    ax.set_ylabel("attribution patching estimate (fraction of gap)")
    rho = agree.get("spearman")
    rec = agree.get("top_k_recall")
    ax.set_title(f"{title}\nSpearman {'n/a' if rho is None else f'{rho:.2f}'}, "
                 f"top-{agree.get('top_k')} recall {'n/a' if rec is None else f'{rec:.2f}'}", fontsize=9)
    return _save(fig, path)


def plot_behaviour(summary: Mapping[str, Any], path: str | os.PathLike, title: str) -> Path:
    """Forward-strategy share and accuracy (fractions of problems, 95% CIs) of the recipient, the
    donor and each patched generation.

    Args:
        summary: ``{"name": behaviour_summary(...)}`` per held-patch setting.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(5.2 * max(1, len(summary)), 3.8), layout="constrained")
    axes = fig.subplots(1, max(1, len(summary)), squeeze=False)[0]
    for ax, (name, s) in zip(axes, summary.items()):
        who = ["recipient", "donor", "patched"]
        x = np.arange(len(who))
        for j, (key, lab) in enumerate((("forward_share", "forward share"), ("accuracy", "accuracy"))):
            m = np.array([s[w][key]["mean"] for w in who])
            ci = [s[w][key]["ci"] or (m[k], m[k]) for k, w in enumerate(who)]
            err = np.array([[m[k] - c[0] for k, c in enumerate(ci)], [c[1] - m[k] for k, c in enumerate(ci)]])
            ax.bar(x + (j - 0.5) * 0.38, m, width=0.38, yerr=np.clip(err, 0, None), capsize=3, label=lab)
        ax.set_xticks(x)
        ax.set_xticklabels(who)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of problems")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
