"""``results.json``: the machine-readable results of a run, the verdict, and its console summary.

:func:`assemble_results` builds the file from the stages' JSON (keys in the README, "results.json";
schema :data:`probes.runfolder.RESULTS_SCHEMA_VERSION`); :func:`run_verdict` applies the verdict rule
(:func:`probes.patching.verdict.decide`) to the behaviour stage's terms and the patching stage's
recoveries; :func:`verdict_lines` is what the command line prints.
"""

from __future__ import annotations

from probes.runfolder import RESULTS_SCHEMA_VERSION as SCHEMA_VERSION
from probes.runfolder import RunFolder, read_results
from probes.stages import STAGE_NAMES


def assemble_results(cfg, run: RunFolder, outs: dict) -> dict:
    """The machine-readable results (``results.json``; keys documented in the README)."""
    beh = outs["behaviour"]
    dec = beh["decomposition"]
    pooled = dec["pooled"]
    patch = outs.get("patching") or {}
    verdict = run_verdict(pooled, patch.get("verdict") or {})
    decomposition = {
        "pooled": {**{k: pooled[k] for k in ("n", "delta", "delta_ci", "selection", "selection_ci", "improvement",
                                             "improvement_ci")},
                   "interaction": pooled["at_reference"]["interaction"],
                   "interaction_ci": pooled["at_reference"]["interaction_ci"],
                   "at_reference": pooled["at_reference"], "at_model": pooled["at_model"]},
        "by_type": dec["by_type"],
        "strata": dec["strata"],
    }
    timings = {s: (run.stage_info(s) or {}).get("seconds") for s in STAGE_NAMES if s != "verdict"}  # this stage is running
    used = {s: ((run.stage_info(s) or {}).get("outputs") or {}).get("problems") for s in STAGE_NAMES if s != "verdict"}
    return {
        "schema_version": SCHEMA_VERSION,
        "pre_rl": cfg.pre_rl, "post_rl": cfg.post_rl,
        "task": task_summary(cfg.task, beh, patch, outs.get("probes") or {}),
        "verdict": verdict,
        "decomposition": decomposition,
        "behaviour": {"pre_rl": beh["models"]["reference"], "post_rl": beh["models"]["model"], "settings": beh["settings"],
                     "forced_accuracy": beh.get("forced_accuracy")},
        "problems": used,
        "probes": outs.get("probes"),
        "patching": patch,
        "stage_seconds": timings,
    }


def task_summary(spec: str, beh: dict, patch: dict, probes: dict) -> dict:
    """The run's task: its spec and name, which optional members it has, and what the run skipped
    for want of one (``{"part": "why"}``)."""
    from probes.tasks import OPTIONAL, current_task, has

    task = current_task()
    skipped = {f"patching: {k}" if k != "all" else "patching": v for k, v in (patch.get("skipped") or {}).items()}
    forced = beh.get("forced_accuracy") or {}
    if forced.get("method") == "sampled" and not has(task, "canonical_response"):
        skipped["exact forced accuracy"] = forced.get("reason", "the task has no canonical responses")
    for model, pm in (probes.get("propensity") or {}).items():
        if pm.get("map_note") and not has(task, "prompt_slots"):
            skipped["the probes' position x layer map"] = pm["map_note"]
            break
    return {"spec": spec, "name": task.name, "has": {m: has(task, m) for m in OPTIONAL}, "skipped": skipped}


def run_verdict(pooled: dict, pv: dict) -> dict:
    """The run's verdict: the behaviour stage's terms (all the run's problems, 95% CIs) and the
    patching stage's recoveries at the score site, under the rule the patching stage recorded
    (:func:`probes.patching.verdict.decide`)."""
    from probes.patching.verdict import TERMS, VerdictRule, decide

    rule = VerdictRule(**pv["rule"]) if pv.get("rule") else VerdictRule()
    beh = {k: {"mean": pooled[k], "ci": pooled[k + "_ci"]} for k in ("delta", "selection", "improvement")}
    rec = {t: (pv.get(t) or {}).get("recovery") for t in TERMS}
    d = decide(beh, rec, rule)
    out = {"label": d["label"], "statement": d["statement"], "regressions": d["regressions"]}
    for t in TERMS:
        r = rec[t] or {}
        out[f"{t}_score"] = r.get("value")
        out[f"{t}_score_ci"] = r.get("ci")
        out[f"{t}_score_undefined_reason"] = r.get("reason") if rec[t] else "the patching stage did not run"
        out[t] = d[t]
    forms = pv.get("forms_at") or {}  # where a term forms is read only for a term that counts
    out.update({"score_site": pv.get("score_site"), "forms_at": {t: forms.get(t) if d[t]["counts"] else None for t in TERMS},
                "secondary": pv.get("secondary"),
                "rule": d["rule"], "rule_text": d["rule_text"],
                "behaviour": {"delta": pooled["delta"], "selection": pooled["selection"],
                              "improvement": pooled["improvement"], "delta_ci": pooled["delta_ci"],
                              "selection_ci": pooled["selection_ci"], "improvement_ci": pooled["improvement_ci"]}})
    return out


def fmt_score(val, ci) -> str:
    """``+v [+lo, +hi]`` to 3 decimals (``undefined`` for None; :func:`probes.patching.verdict._fmt`)."""
    from probes.patching.verdict import _fmt

    return "undefined" if val is None else _fmt(val, ci)


def verdict_lines(run: RunFolder) -> list[str]:
    """The verdict in a few lines (from ``results.json``), with each stage's time."""
    from probes.patching.verdict import score_judgement

    res = read_results(run.root)
    v = res["verdict"]
    lines = [f"verdict: {v['label']}"]
    lines += [f"  REGRESSION: {r['text']}" for r in v.get("regressions") or []]
    for k in ("selection", "improvement"):
        passes, why = score_judgement(res, k)
        node = v.get(k) or {}
        b = node.get("behaviour") or {}
        status = {True: "counts", False: "does not count"}.get(passes, "")
        tail = f" ({status}: {why})" if status and why else f" ({status or why})" if status or why else ""
        beh = f"behavioural {fmt_score(b.get('mean'), b.get('ci'))}" if b.get("ci") else ""
        rec = (f"recovery {fmt_score(v[f'{k}_score'], v[f'{k}_score_ci'])}" if node.get("recovery_read", True)
               else "recovery not read")
        lines.append(f"  {k}: " + ", ".join(x for x in (beh, rec) if x) + tail)
    forms = v.get("forms_at") or {}
    if any(forms.get(k) is not None for k in ("selection", "improvement")):
        lines.append(f"  where it forms ({v.get('score_site', '').split('.')[-1]}, first layer with recovery CI above "
                     f"{(v.get('rule') or {}).get('recovery_threshold')}): " + ", ".join(
                         f"{k} layer {forms[k]}" for k in ("selection", "improvement") if forms.get(k) is not None))
    b = v["behaviour"]
    from probes.patching.verdict import signed

    lines.append(f"  behaviour: delta {signed(b['delta'])} = selection {signed(b['selection'])} + improvement "
                 f"{signed(b['improvement'])}")
    prop = ((res.get("probes") or {}).get("propensity")) or {}
    for model, pm in sorted(prop.items(), key=lambda kv: ("pre", "post").index(kv[0]) if kv[0] in ("pre", "post") else 2):
        h = pm.get("headline") or {}
        e = pm.get("earliest")
        where = f"; earliest above the surface: {e['position_name']} layer {e['layer']}" if e else ""
        lines.append(f"  probe ({model}-RL, within-type propensity): "
                     + (h.get("statement") or pm.get("reason", "skipped")).split(":")[0] + where)
    t = res.get("task") or {}
    from probes.tasks import DEFAULT_TASK

    if t.get("spec") not in (None, DEFAULT_TASK):
        lines.append(f"  task: {t.get('name')} ({t['spec']})")
    lines += [f"  skipped: {part}: {why}" for part, why in (t.get("skipped") or {}).items()]
    secs = {s: (run.stage_info(s) or {}).get("seconds") for s in STAGE_NAMES}
    lines.append("  stage times: " + ", ".join(f"{s} {t:.1f} s" for s, t in secs.items() if t is not None))
    return lines

