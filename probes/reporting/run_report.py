"""The run's report: ``report.md`` and ``report.html`` with the figures of every stage.

Written by the verdict stage from ``results.json`` and the stages' JSON (:func:`write_run_report`);
the probe section's words come from :func:`probe_text`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from probes.results import fmt_score
from probes.runfolder import RunFolder


def probe_text(probes: dict) -> str:
    """The probe section's words: per model, whether the within-type propensity probe is
    informative (:mod:`probes.probing.propensity`), where it forms, the sampled-strategy AUROC
    against its ceiling, and the steering headline."""
    out = ["The headline target is the model's own strategy propensity within a problem type: "
           "logit(F) - logit(B) at the first response token, minus its type's training mean. Probes read the "
           "residual stream (ridge, grouped CV) at every prompt slot x layer; baselines see only the prompt's "
           "surface (the task's surface features, prompt tokens, all of them). Rule: "
           + str(next((pm.get("rule") for pm in (probes.get("propensity") or {}).values() if pm.get("rule")), "")) + ".",
           ""]
    def auc(sc: dict) -> str:
        return "undefined" if sc.get("value") is None else f"{sc['value']:.3f}" + (
            f" [{sc['ci'][0]:.3f}, {sc['ci'][1]:.3f}]" if sc.get("ci") else "")

    order = ("pre", "post")
    prop = probes.get("propensity") or {}
    for model, pm in sorted(prop.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 2):
        h = pm.get("headline") or {}
        out.append(f"- **{model}-RL: {h.get('statement') or pm.get('reason', 'skipped')}**")
        e = pm.get("earliest")
        if pm.get("status") == "ok":
            out.append("  - earliest (position, layer) above the best surface baseline: "
                       + (f"{e['position_name']} (`{e['position']}`), layer {e['layer']}" if e else "none"))
            smp = pm.get("samples") or {}
            if smp.get("auroc"):
                a = smp["auroc"]
                out.append(f"  - sampled strategies ({smp['n_samples']} samples): within-type AUROC probe "
                           f"{auc(a['probe'])}, Bayes ceiling (the model's own log-odds) {auc(a['ceiling'])}, best "
                           f"surface {auc(a['surface'])}")
            elif smp.get("reason"):
                out.append(f"  - sampled strategies: {smp['reason']}")
        if pm.get("map_note"):
            out.append(f"  - {pm['map_note']}")
    for model, d in (probes.get("steering") or {}).items():
        if d.get("status") == "ok" and d.get("dpf_per_dose"):
            sl = d["dpf_per_dose"]
            out.append(f"- causal check, {model}-RL: steering along the strategy probe's difference of means at "
                       f"{d['site']} changes P(F) by {fmt_score(sl['mean'], sl['ci'])} per unit of dose")
        elif d.get("reason"):
            out.append(f"- causal check, {model}-RL: skipped ({d['reason']})")
    out.append("\nThe map's change from pre-RL to post-RL (its last panel) is the probe-side evidence of selection, "
               "beside the patching curves below. Details: probes/probes.json (`propensity`, `steering`, `models`).")
    return "\n".join(out)


def write_run_report(cfg, run: RunFolder, res: dict):
    from probes.reporting.behaviour import decomposition_figure, strategy_figure
    from probes.reporting.patching import recovery_figure
    from probes.reporting.probes import strategy_curve_figure
    from probes.reporting.verdict import verdict_table
    from probes.behaviour.pipeline import format_table
    from probes.report import Figure, Section, write_report

    for sub in ("probes", "patching"):  # copies of an earlier run's stage figures
        for stale in (run.root / "figures").glob(f"{sub}_*.png"):
            stale.unlink()
    figs = [strategy_figure(run.root), decomposition_figure(run.root)]
    headline = {"probes": None, "patching": None}
    if (run.root / "probes" / "probes.json").exists():
        headline["probes"] = strategy_curve_figure(run.root)
    if (run.root / "patching" / "patching.json").exists():
        headline["patching"] = recovery_figure(run.root)
    for sub in ("probes", "patching"):
        listed = ((res.get(sub) or {}).get("figures") or [])  # the stage's own order (strategy first)
        rank = {Path(x).name: i for i, x in enumerate(listed)}
        for f in sorted((run.root / sub).rglob("*.png"), key=lambda f: (rank.get(f.name, len(rank)), f.name)):
            dest = run.root / "figures" / f"{sub}_{f.name}"
            shutil.copy2(f, dest)
            figs.append(dest)

    def probe_figures() -> list:
        # the stage's own order leads (within-type propensity, its map, the steering headline); the
        # type-saturated strategy curve (analyses.probes) comes after them, as secondary
        own = section_figures("probes", "")[1 if headline["probes"] else 0:]
        lead = [f for f in own if f.path.split("probes_", 1)[-1].startswith(("propensity_", "steering_dose"))]
        rest = [f for f in own if f not in lead]
        sec = [Figure(str(headline["probes"].relative_to(run.root)), "secondary: the greedy strategy probe's "
                      "held-out balanced accuracy per layer with baselines (saturated by the problem type; "
                      "analyses.probes)")] if headline["probes"] else []
        return lead + sec + rest

    def section_figures(sub: str, caption: str) -> list:
        out = [Figure(str(headline[sub].relative_to(run.root)), caption)] if headline[sub] else []
        return out + [Figure(str(f.relative_to(run.root)), f.stem.replace("_", " ")) for f in figs
                      if f.name.startswith(f"{sub}_")]

    v = res["verdict"]

    fmt = fmt_score
    pooled = res["decomposition"]["pooled"]

    def not_read(term: str) -> str:  # as the console: a ratio to a term that does not count is not read
        if (v.get(term) or {}).get("recovery_read", True) or v[f"{term}_score"] is None:
            return ""
        return (f" (not read: the behavioural {term} term does not exclude 0 by the minimum effect, so this ratio "
                "is not evidence)")

    sections = [
        Section("Verdict", f"**{v['statement']}**\n\n"
                + "".join(f"- **{r['text']}**\n" for r in v.get("regressions") or [])
                + f"- selection recovery (the mechanistic selection term over the behavioural one; post-RL residual "
                f"stream into the pre-RL model at the prompt positions, {v.get('score_site')}): "
                f"{fmt(v['selection_score'], v['selection_score_ci'])}"
                + (f" ({v['selection_score_undefined_reason']})" if v["selection_score"] is None else "")
                + not_read("selection") + "\n"
                f"- improvement recovery (likewise at the trace positions of each strategy's canonical trace, exact "
                f"forced accuracy): {fmt(v['improvement_score'], v['improvement_score_ci'])}"
                + (f" ({v['improvement_score_undefined_reason']})" if v["improvement_score"] is None else "")
                + not_read("improvement") + "\n"
                f"- behaviour: delta {fmt(pooled['delta'], pooled['delta_ci'])} = selection "
                f"{fmt(pooled['selection'], pooled['selection_ci'])} + improvement "
                f"{fmt(pooled['improvement'], pooled['improvement_ci'])}\n"
                f"- forced accuracy: {(res['behaviour'].get('forced_accuracy') or {}).get('method', 'sampled')} "
                f"({(res['behaviour'].get('forced_accuracy') or {}).get('reason', '')})\n"
                f"- pre-RL: `{cfg.pre_rl}`; post-RL: `{cfg.post_rl}`\n"
                f"- task: {res['task']['name']} (`{res['task']['spec']}`)"
                + "".join(f"\n- skipped, {part}: {why}" for part, why in res["task"]["skipped"].items()) + "\n\n"
                f"The rule: {v.get('rule_text')}.\n\n"
                "The evidence (analyses.verdict):\n\n" + verdict_table(res)),
        Section("Behaviour", "```\n" + format_table(json.loads((run.root / "behaviour" / "behaviour.json").read_text()))
                + "\n```", [Figure("figures/behaviour_strategy.png", "P(forward) at the first response token, by type and k")]),
        Section("Decomposition",
                "| term | value | 95% CI |\n| --- | --- | --- |\n"
                + "\n".join(f"| {k} | {pooled[k]:+.4f} | [{pooled[k + '_ci'][0]:+.4f}, {pooled[k + '_ci'][1]:+.4f}] |"
                            for k in ("delta", "selection", "improvement", "interaction"))
                + "\n\nShapley split: selection = sum_s (pi' - pi)(a + a')/2, improvement = sum_s (pi + pi')/2 (a' - a); "
                  "interaction is the one-sided ordering's at the pre-RL model's values.",
                [Figure("figures/behaviour_decomposition.png", "delta = selection + improvement, with 95% bootstrap CIs")]),
        Section("Probes", probe_text(res.get("probes") or {}), probe_figures()),
        Section("Patching", "Cross-model patching in the behaviour's units (the mechanistic decomposition: the "
                "post-RL residual stream written into the pre-RL model, at the prompt positions for selection and at "
                "the trace positions for improvement), then the secondary nats-based curves (routing_*, execution), "
                "counterfactual and attribution patching (patching/patching.json). Patched problems: "
                f"{len((res.get('problems') or {}).get('patching') or [])} of the run's "
                f"{len((res.get('problems') or {}).get('behaviour') or [])}.",
                section_figures("patching", "recovery of the behavioural selection and improvement terms per layer "
                                "and hook (solid: post-RL into pre-RL; dashed: pre-RL into post-RL; analyses.patching)")),
        Section("Methods and sources",
                "- decomposition: acc = sum_s pi(s|x) a(s|x); Shapley split; percentile bootstrap over problems\n"
                "- probes: Hewitt and Liang 2019 (arXiv 1909.03368); Marks and Tegmark 2023 (arXiv 2310.06824); "
                "arXiv 2606.02907\n"
                "- cross-model activation patching: Prakash et al. 2024 (arXiv 2402.14811)\n"
                "- counterfactual patching: Zhang and Nanda 2023 (arXiv 2309.16042); Heimersheim and Nanda 2024 "
                "(arXiv 2404.15255)\n- attribution patching: Kramar et al. 2024 (arXiv 2403.00745)\n"
                "- the task and the two mechanisms: Select and Improve (arXiv 2606.13125)\n"
                "- stage times: " + ", ".join(f"{k} {t:.1f} s" for k, t in res["stage_seconds"].items() if t is not None)
                + ", verdict and report (this stage) a few seconds"),
    ]
    return write_report(run.root, "What did RL change? Strategy selection vs strategy improvement", sections)

