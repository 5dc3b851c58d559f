"""``python -m analyses.verdict RUN_DIR``: the verdict and the evidence behind it, as one table.

Writes ``figures/verdict.md`` (a markdown table) and prints it. Rows: the label and its rule; every
regression (a behavioural term significantly below zero); for selection and improvement, the
behavioural term (Shapley split, accuracy units) and its recovery by cross-model patching (the
mechanistic term over the behavioural one, post-RL into pre-RL at the score site; prompt positions
for selection, trace positions for improvement), with whether the term counts under the rule and
why not; the secondary nats-based recoveries; the behavioural decomposition; and the best strategy
probe of each model (layer, held-out balanced accuracy). 95% bootstrap CIs over problems.
"""

from __future__ import annotations

import sys
from pathlib import Path

from activations.io import atomic_write_text
from probes.reporting.rundir import figure_path, load, run_dir_from_argv
from probes.grid import best_probe
from probes.patching.verdict import score_judgement


def _ci(value, ci, fmt="+.3f") -> str:
    if value is None:
        return "undefined"
    return format(value, fmt) + (f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else "")


def verdict_table(results: dict) -> str:
    """The verdict table (markdown) from a run's ``results.json``."""
    v = results["verdict"]
    pooled = results["decomposition"]["pooled"]
    rows = [("verdict", f"**{v['label']}**", v.get("rule_text") or "")]
    for r in v.get("regressions") or []:
        rows.append(("regression", f"**{r['text']}**", "a behavioural term whose CI lies below -min_effect"))
    for k in ("selection", "improvement"):
        passes, why = score_judgement(results, k)
        status = {True: "counts", False: "does not count", None: "no verdict evidence"}[passes]
        rows.append((f"{k} recovery (patching, fraction of the behavioural term)",
                     _ci(v[f"{k}_score"], v[f"{k}_score_ci"]), status + (f": {why}" if why else "")))
    for k in ("selection", "improvement"):
        sec = (v.get("secondary") or {}).get(k)
        if sec:
            unit = "nats" if k == "selection" else "nats/token"
            rows.append((f"secondary: {k} recovery in {unit}", _ci(sec.get("value"), sec.get("ci")),
                         f"gap {sec.get('gap_signed', 0):+.3f} {unit}; evidence, not the rule"))
    for k in ("delta", "selection", "improvement", "interaction"):
        rows.append((f"behaviour: {k} (accuracy)", _ci(pooled[k], pooled.get(f"{k}_ci")),
                     "Shapley split" if k != "interaction" else "one-sided, at the pre-RL values"))
    for m, name in (("pre", "pre-RL"), ("post", "post-RL")):
        b = best_probe(results.get("probes"), m)
        val = "-" if b["layer"] is None else f"layer {b['layer']}: {_ci(b['balanced_accuracy'], b['ci'], '.2f')}"
        rows.append((f"strategy probe, {name} (held-out balanced accuracy)", val, b.get("reason") or ""))
    out = ["| quantity | value [95% CI] | note |", "| --- | --- | --- |"]
    out += [f"| {a} | {b} | {c.replace('|', '/')} |" for a, b, c in rows]
    return "\n".join(out)


def write_verdict_table(run: str | Path) -> Path:
    """``figures/verdict.md`` from ``results.json``; returns its path."""
    out = figure_path(run, "verdict.md")
    atomic_write_text(out, verdict_table(load(run, "results.json")) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    run = run_dir_from_argv(argv, "verdict", "results.json")
    if run is None:
        return 2
    out = write_verdict_table(run)
    print(out.read_text(), end="")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
