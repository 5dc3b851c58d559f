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

from probes.reporting.rundir import save_png  # noqa: E402

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
    fig.tight_layout()
    return save_png(fig, path)


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
    from probes.tasks import current_task

    types = current_task().types
    styles = dict(zip(types, ("-", "--", ":", "-.")))
    for i, (name, s) in enumerate(summaries.items()):
        if s.get("status") != "ok":
            continue
        color = _COLORS.get(name, f"C{i}")
        for t in types:
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
        ga = np.array(dose.get("generated_alphas") or dose["alphas"])
        for key, style in (("generated", "--"), ("generated_first_word", ":")):
            if dose.get(key):
                for s, color in (("forward", "tab:green"), ("backward", "tab:red"), ("unparseable", "tab:gray")):
                    ax.plot(ga, [g[s] for g in dose[key]], style, color=color, marker=".",
                            label=f"{s} share ({key.replace('_', ' ')})")
        ax.legend(fontsize=7)
    ax.set_xlabel("alpha (multiples of mu_F - mu_B added at the prompt end)")
    ax.set_ylabel("probability / share of responses (fraction)")
    slope = dose.get("dpf_per_dose")
    ax.set_title(f"steering dose-response at {dose.get('site', '?')}"
                 + (f"\ndP(F)/d(alpha) = {_fmt_sc({'value': slope['mean'], 'ci': slope['ci']})}" if slope else ""),
                 fontsize=9)
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, path)


def plot_steering_headline(doses: Mapping[str, dict], path) -> Path:
    """The causal headline: P(F) at the first response token (95% CI) against the dose of the
    probe's difference-of-means direction, pre-RL and post-RL on one axis, each labelled with the
    change of P(F) per unit of dose (:func:`probes.probing.steering.steering_dose_response`)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for i, (name, dose) in enumerate(doses.items()):
        if dose.get("status") != "ok":
            continue
        color = _COLORS.get(name, f"C{i}")
        a = np.array(dose["alphas"])
        pf = np.array([r["mean"] for r in dose["p_forward"]])
        ci = np.array([r["ci"] for r in dose["p_forward"]])
        s = dose.get("dpf_per_dose") or {}
        ax.plot(a, pf, "-o", color=color, ms=3, label=f"{name} ({dose['site']}): dP(F)/d(alpha) = "
                f"{_fmt_sc({'value': s.get('mean'), 'ci': s.get('ci')})}")
        ax.fill_between(a, ci[:, 0], ci[:, 1], color=color, alpha=0.15, lw=0)
        drawn = True
    if not drawn:
        _empty(ax, "steering skipped for every model")
    else:
        ax.legend(fontsize=7)
    ax.set_xlabel("alpha (multiples of mu_F - mu_B added at the prompt end)")
    ax.set_ylabel("P(F) at the first response token")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("causal check: steering along the strategy probe's direction")
    return _save(fig, path)


def plot_propensity_curve(results: Mapping[str, dict], path) -> Path:
    """The headline probe figure: per layer, the within-type R^2 of the propensity probe at the
    prompt end (95% CI), each model beside its surface baselines (flat lines) and the ceiling
    (1: the target is the model's own log-odds); the panel title says whether it is informative
    (:func:`probes.probing.propensity.propensity_map`)."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    lines = []
    for i, (name, r) in enumerate(results.items()):
        color = _COLORS.get(name, f"C{i}")
        if r.get("status") != "ok":
            lines.append(f"{name}: {r.get('reason', 'skipped')}")
            continue
        c = r["curve"]
        xs = np.array(c["layers"])
        ys = np.array([v["value"] if v["value"] is not None else np.nan for v in c["r2"]])
        lo = np.array([(v["ci"] or [np.nan] * 2)[0] for v in c["r2"]], dtype=float)
        hi = np.array([(v["ci"] or [np.nan] * 2)[1] for v in c["r2"]], dtype=float)
        ax.plot(xs, ys, "o-", color=color, label=f"{name}: probe at {c['position']}")
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
        best = r["best_surface"]
        for key, style in ((best, "--"), ("type", ":")):
            v = (r["baselines"].get(key) or {}).get("r2", {}).get("value")
            if v is not None:
                ax.axhline(v, color=color, ls=style, lw=1, alpha=0.7, label=f"{name}: {key} baseline")
        h = r["headline"]
        lines.append(f"{name}: {'informative' if h['informative'] else 'NOT informative'} (layer {h['layer']}: "
                     f"R^2 minus best surface {_fmt_sc(h['difference'])})")
    ax.axhline(1.0, color="gray", lw=0.8, label="ceiling (the model's own log-odds)")
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("within-type R^2 of logit(F) - logit(B)")
    ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.05)
    ax.set_title("Does the residual stream say more than the prompt's surface?\n" + "\n".join(lines), fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return _save(fig, path)


def _fmt_sc(sc: dict) -> str:
    if not sc or sc.get("value") is None:
        return "undefined"
    ci = sc.get("ci")
    return f"{sc['value']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def _map_values(result: dict) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in result["map"]["r2"]], dtype=float)


def plot_propensity_maps(results: Mapping[str, dict], path) -> Path:
    """Where the decision forms, and how RL moved it: for each model, the within-type R^2 of the
    propensity probe at every prompt position (rows, in prompt order) x layer (columns), the
    cells whose difference to the best surface baseline has a 95% CI above 0 outlined and the
    earliest such cell marked (*); with two models, a last panel of their difference (second
    minus first) on the positions both hold."""
    ok = {n: r for n, r in results.items() if r.get("status") == "ok"}
    names = list(ok)
    panels = names + (["diff"] if len(names) == 2 else [])
    first = ok[names[0]]
    P, L = len(first["positions"]), len(first["layers"])
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 + (0.75 * L + 0.9) * len(panels), 1.4 + 0.3 * P),
                             squeeze=False)
    for ax, name in zip(axes[0], panels):
        if name == "diff":
            a, b = ok[names[0]], ok[names[1]]
            common = [p for p in b["positions"] if p in a["positions"]]
            va, vb = _map_values(a), _map_values(b)
            vals = np.array([vb[b["positions"].index(p)] - va[a["positions"].index(p)] for p in common])
            res, cmap, lim = b, "RdBu_r", max(0.05, float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1)
            im = ax.imshow(vals, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
            ax.set_title(f"{names[1]} - {names[0]}", fontsize=8)
            labels = [b["position_names"][b["positions"].index(p)] for p in common]
        else:
            res = ok[name]
            vals = _map_values(res)
            im = ax.imshow(vals, cmap="viridis", vmin=min(0.0, float(np.nanmin(vals)) if np.isfinite(vals).any()
                                                            else 0.0), vmax=1.0, aspect="auto")
            for p, row in enumerate(res["map"]["decodable"]):
                for j, dec in enumerate(row):
                    if dec:
                        ax.add_patch(plt.Rectangle((j - 0.5, p - 0.5), 1, 1, fill=False, ec="white", lw=1.5))
            e = res.get("earliest")
            if e:
                ax.text(res["layers"].index(e["layer"]) + 0.42, res["positions"].index(e["position"]) - 0.2, "*",
                        color="red", fontsize=12, ha="right", va="center")
            base = res["baselines"][res["best_surface"]]["r2"].get("value")
            ax.set_title(f"{name}: within-type R^2\n(best surface: {res['best_surface']}, "
                         f"{'n/a' if base is None else f'{base:.2f}'})", fontsize=8)
            labels = res["position_names"]
        for p in range(vals.shape[0]):
            for j in range(vals.shape[1]):
                if np.isfinite(vals[p, j]):
                    ax.text(j, p, f"{vals[p, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if (name != "diff" and vals[p, j] > 0.6) or name == "diff" else "white")
        ax.set_xticks(range(vals.shape[1]), [str(v) for v in res["layers"]])
        ax.set_yticks(range(vals.shape[0]), labels, fontsize=7)
        ax.set_xlabel("layer (block index)")
        fig.colorbar(im, ax=ax, fraction=0.05)
    fig.suptitle("where the within-type propensity is decodable (outlined: above the best surface baseline, "
                 "paired 95% CI; *: earliest)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
