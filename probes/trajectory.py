"""``python -m probes.trajectory``: what RL changed, and when, along a run's intermediate checkpoints.

::

    python -m probes.trajectory --start checkpoints/organism/sft-fb \\
        --snapshots runs/trajectory/rl-fb-hard/snapshots --out runs/trajectory/fb-hard

``--snapshots DIR`` holds step-numbered checkpoint folders: ``step-N`` (``keep_every`` in a
training stage's ``optim``, :func:`probes.train.checkpoint.snapshot_callback`) or ``checkpoint-N``
(the layout transformers' and TRL's trainers write). Each snapshot is run against the start, as
``python -m probes.run`` runs a pair, into ``OUT/step-N`` (:func:`probes.pipeline.run_pipeline`: its stages
resume per snapshot), with one problem set shared by every snapshot (the same ``n_problems``,
``steps`` and ``seed``) and lighter settings than a single pair's run (:data:`TRAJECTORY_DEFAULTS`).
A snapshot that cannot be loaded (a file missing, truncated or corrupt:
:func:`activations.load.check_checkpoint_files`, or an error while it runs) is reported, recorded
with its reason and skipped.

Per snapshot (``trajectory.json``, ``steps``): the behavioural decomposition (delta, selection,
improvement, 95% CIs, accuracy units), the forward share per problem type (``forward_share``: the
mean P(F) at the first response token, the share of forward samples at temperature 1), the headline probe
(the within-type propensity probe of the snapshot: within-type R^2 at the prompt end and whether it
is informative, :mod:`probes.probing.propensity`) and the verdict's two recoveries with its label.

**When a term moves** (``flips``): the first snapshot step at which the term's mean over the
problems has passed half its value at the last snapshot, with a 95% percentile bootstrap CI of
that step (problems resampled jointly across snapshots, so each draw is one curve). It is
computed for a term whose value at the last snapshot counts under the verdict's rule (its CI
excludes 0 by the minimum effect, :class:`probes.patching.verdict.VerdictRule`); otherwise the
reason is given instead of a step. For every term also (``extremes``) the snapshot where it was
largest among those where it counts, or, when it never counts, where it was largest at all and
the steps where its CI excludes 0, so that a term that moved and came back is not lost.

Writes ``OUT/trajectory.json``, ``OUT/report.md`` / ``report.html`` and
``OUT/figures/trajectory.png``; prints one line per snapshot with its stage, then the table.
Exit status 2 for bad arguments, 1 when no snapshot could be run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from probes.runfolder import read_results

TRAJECTORY_DEFAULTS: dict[str, Any] = {
    "n_problems": 200, "samples": 1, "steer_n": 64, "steer_generate": False, "probe_targets": ["strategy"],
    "patching": {"n_problems": 64},
}
"""The run settings of each snapshot (each may be overridden with ``--config``): half the problems
of a single run, one sample per problem, steering without generation, the strategy probe only,
64 problems patched; the terms' CIs widen accordingly (about 1.4x)."""

_STEP = re.compile(r"^(?:step|checkpoint)-(\d+)$")
TERMS = ("delta", "selection", "improvement")


def find_snapshots(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-N`` / ``checkpoint-N`` subfolder, by step.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: no step-numbered subfolder (the message says which names are read).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP.match(p.name)))
    if not found:
        raise ValueError(f"{folder} has no step-numbered snapshot folders (step-N from keep_every, or checkpoint-N "
                         "from a transformers / TRL trainer)")
    return found


def _a(row: dict) -> list[float]:
    if row.get("a_exact") is not None:
        return [float(x) for x in row["a_exact"]]
    fc = row.get("forced_correct") or {}
    return [float(np.mean(fc[s])) if fc.get(s) else 0.0 for s in ("forward", "backward")]


def problem_terms(run: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Problem ids and per-problem ``delta``, ``selection``, ``improvement`` ``[N]`` (accuracy
    units) of one pair's run folder, from its behaviour rows (:func:`probes.behaviour.decompose.decompose`)."""
    from probes.behaviour.decompose import decompose

    def rows(name):
        return [json.loads(x) for x in (run / "behaviour" / name).read_text().splitlines() if x.strip()]

    ref, new = rows("behaviour.reference.jsonl"), rows("behaviour.model.jsonl")
    ids = [r["id"] for r in new]
    if ids != [r["id"] for r in ref]:
        raise ValueError(f"{run}: the two behaviour files list different problems")
    dec = decompose(np.array([r["pi"][:2] for r in ref]), np.array([_a(r) for r in ref]),
                    np.array([r["pi"][:2] for r in new]), np.array([_a(r) for r in new]))
    return ids, {t: getattr(dec, t) for t in TERMS}


def flip_step(steps: np.ndarray, curves: np.ndarray) -> int | None:
    """The first of ``steps`` ``[K]`` at which the curve ``[K]`` has passed half its last value
    (in the last value's direction), or None when the last value is 0."""
    final = curves[-1]
    if final == 0:
        return None
    passed = np.nonzero(np.sign(final) * curves >= abs(final) / 2)[0]
    return int(steps[passed[0]])


def flip_with_ci(steps: np.ndarray, per_problem: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """:func:`flip_step` of the mean curve of ``per_problem`` ``[K snapshots, N problems]``, with a
    percentile bootstrap CI over problems (:func:`probes.bootstrap.resample_counts`: one resample of
    the problems per draw, shared by the snapshots). Returns ``{"step", "ci", "n_boot"}``."""
    from probes.bootstrap import resample_counts

    N = per_problem.shape[1]
    point = flip_step(steps, per_problem.mean(1))
    curves = per_problem @ resample_counts(N, n_boot=n_boot, seed=seed).T / N  # [K, n_boot]: each draw's mean curve
    draws = [f for f in (flip_step(steps, curves[:, b]) for b in range(n_boot)) if f is not None]
    ci = None
    if draws:
        lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2], method="inverted_cdf")
        ci = [int(lo), int(hi)]
    return {"step": point, "ci": ci, "n_boot": n_boot}


def snapshot_summary(run: Path) -> dict:
    """The numbers of one snapshot's run folder (``results.json``; see the module docstring)."""
    res = read_results(run)
    pooled = res["decomposition"]["pooled"]
    out: dict[str, Any] = {t: {"value": pooled[t], "ci": pooled[f"{t}_ci"]} for t in TERMS}
    out["forward_share"] = _forward_shares(run)
    v = res["verdict"]
    out["verdict"] = v["label"]
    out["regressions"] = [r.get("text") for r in v.get("regressions") or []]
    for t in ("selection", "improvement"):
        out[f"{t}_recovery"] = {"value": v.get(f"{t}_score"), "ci": v.get(f"{t}_score_ci"),
                                "read": (v.get(t) or {}).get("recovery_read", True)}
    prop = ((res.get("probes") or {}).get("propensity") or {}).get("post") or {}
    h = prop.get("headline") or {}
    out["probe"] = {"r2": (h.get("r2") or {}).get("value"), "r2_ci": (h.get("r2") or {}).get("ci"),
                    "layer": h.get("layer"), "informative": h.get("informative"),
                    "reason": prop.get("reason")}
    return out


def _forward_shares(run: Path) -> dict:
    """The snapshot's share of forward samples per problem type: the mean over the type's problems
    of P(F) at the first response token (temperature 1, exact; the behaviour rows' ``pi``)."""
    rows = [json.loads(x) for x in (run / "behaviour" / "behaviour.model.jsonl").read_text().splitlines() if x.strip()]
    return {t: float(np.mean([r["pi"][0] for r in rows if r["type"] == t])) for t in sorted({r["type"] for r in rows})}


def run_trajectory(start: str, snapshots: list[tuple[int, Path]], out: Path, overrides: dict | None = None,
                   n_boot: int = 1000, log=print) -> dict:
    """Run every snapshot against ``start`` and write ``trajectory.json`` and the report.

    Returns:
        The ``trajectory.json`` dict: ``start``, ``settings``, ``steps`` (per snapshot: ``step``,
        ``path``, and the numbers of :func:`snapshot_summary`, or ``skipped`` with the reason),
        ``flips`` (per term: ``step``, ``ci``, or ``reason``), ``extremes`` (per term: the snapshot
        where it was largest among those where it counts, and every step where it counts) and
        ``seconds``.
    """
    from activations.load import check_checkpoint_files
    from probes.patching.verdict import VerdictRule
    from probes.pipeline import run_pipeline
    from probes.runconfig import RunConfig
    from probes.runfolder import write_json

    from probes.tasks import load_task

    settings = {**TRAJECTORY_DEFAULTS, "behaviour_cache": str(Path(out) / "behaviour-cache"), **(overrides or {})}
    types = tuple(load_task(settings.get("task")).types)  # a bad task: one TaskError, not a skip per snapshot
    rows, done = [], []
    t_all = time.time()
    for k, (step, path) in enumerate(snapshots, 1):
        tag = f"[snapshot {k}/{len(snapshots)} step {step}]"
        t0 = time.time()
        try:
            check_checkpoint_files(str(path))
            cfg = RunConfig(pre_rl=start, post_rl=str(path), out=str(out / f"step-{step}"), name=f"step-{step}",
                            **settings)
            log(f"{tag} {path}")
            run_pipeline(cfg, prefix=f"{tag} ")
            summary = snapshot_summary(cfg.folder)
        except (ImportError, NameError, AttributeError, TypeError, SyntaxError):
            raise  # a bug of this code, not a bad snapshot: never hidden as a skip
        except Exception as e:  # an unloadable snapshot is reported and skipped, never fatal
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log(f"{tag} skipped: {reason}")
            rows.append({"step": step, "path": str(path), "skipped": reason})
            continue
        rows.append({"step": step, "path": str(path), **summary, "seconds": round(time.time() - t0, 1)})
        done.append((step, cfg.folder))
        log(f"{tag} done in {time.time() - t0:.0f} s: selection {_fmt(summary['selection'])}, improvement "
            f"{_fmt(summary['improvement'])}, verdict {summary['verdict']}")
    result = {"schema_version": 1, "start": start, "settings": settings, "types": list(types), "steps": rows, "flips": {},
              "seconds": round(time.time() - t_all, 1)}
    if done:
        result["flips"] = _flips(done, rows, VerdictRule(), n_boot)
        result["extremes"] = _extremes(rows, VerdictRule())
    write_json(out / "trajectory.json", result)
    _report(out, result)
    return result


def _flips(done: list[tuple[int, Path]], rows: list[dict], rule, n_boot: int) -> dict:
    steps = np.array([s for s, _ in done])
    ids0, per = None, {t: [] for t in TERMS}
    for _, folder in done:
        ids, terms = problem_terms(folder)
        if ids0 is None:
            ids0 = ids
        elif ids != ids0:
            raise ValueError(f"{folder}: another problem set than the first snapshot's; rerun with one n_problems, "
                             "steps and seed for every snapshot")
        for t in TERMS:
            per[t].append(terms[t])
    last = next(r for r in reversed(rows) if "skipped" not in r)
    out = {}
    for t in TERMS:
        v = last[t]
        lo, hi = v["ci"]
        if not (lo > rule.min_effect or hi < -rule.min_effect):
            out[t] = {"step": None, "reason": f"its value at the last snapshot, {_fmt(v)}, does not exclude 0 by the "
                      f"minimum effect {rule.min_effect}: it never moved enough to time"}
            continue
        out[t] = flip_with_ci(steps, np.stack(per[t]), n_boot=n_boot)
        out[t]["final"] = v
        out[t]["definition"] = "first snapshot step where the term's mean has passed half its value at the last snapshot"
    return out


def _extremes(rows: list[dict], rule) -> dict:
    """Per term, the snapshot where it was largest in size among those where it counts (its CI
    excludes 0 by the minimum effect), so that a term that moved and came back is not lost behind
    a flip defined by the last value; None with a reason when it never counted."""
    out = {}
    for t in TERMS:
        ok = [r for r in rows if "skipped" not in r]
        counting = [r for r in ok if r[t]["ci"][0] > rule.min_effect or r[t]["ci"][1] < -rule.min_effect]
        if not counting:
            if not ok:
                out[t] = {"step": None, "reason": "no snapshot ran"}
                continue
            r = max(ok, key=lambda r: abs(r[t]["value"]))
            out[t] = {"step": None, "largest": {"step": r["step"], "value": r[t]["value"], "ci": r[t]["ci"]},
                      "excludes_zero_at": [x["step"] for x in ok if x[t]["ci"][0] > 0 or x[t]["ci"][1] < 0],
                      "reason": f"at no snapshot does its CI exclude 0 by the minimum effect {rule.min_effect}"}
            continue
        r = max(counting, key=lambda r: abs(r[t]["value"]))
        out[t] = {"step": r["step"], "value": r[t]["value"], "ci": r[t]["ci"],
                  "steps_counting": [x["step"] for x in counting]}
    return out


def _fmt(v: dict) -> str:
    if v.get("value") is None:
        return "undefined"
    ci = v.get("ci")
    return f"{v['value']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def table(result: dict) -> str:
    """The trajectory as a markdown table, one row per snapshot."""
    types = tuple(result.get("types") or ("evaluation", "inversion"))
    head = ("| step | delta | selection | improvement | " + "".join(f"P(F) {t} | " for t in types)
            + "probe R^2 (post) | selection recovery | verdict |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in result["steps"]:
        if "skipped" in r:
            lines.append(f"| {r['step']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        fs = r["forward_share"]
        p = r["probe"]
        rec = r["selection_recovery"]
        r2 = "n/a" if p["r2"] is None else f"{p['r2']:.2f}"
        lines.append(
            f"| {r['step']} | {_fmt(r['delta'])} | {_fmt(r['selection'])} | {_fmt(r['improvement'])} | "
            + "".join(f"{_share(fs.get(t))} | " for t in types) +
            f"{r2} | "
            f"{_fmt(rec) if rec['read'] else 'not read'} | {r['verdict']}"
            + (" + REGRESSION" if r.get("regressions") else "") + " |")
    return "\n".join(lines)


def _share(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _figure(out: Path, result: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in result["steps"] if "skipped" not in r]
    steps = [r["step"] for r in ok]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for t, color in (("delta", "k"), ("selection", "tab:blue"), ("improvement", "tab:red")):
        v = np.array([r[t]["value"] for r in ok])
        lo = np.array([r[t]["ci"][0] for r in ok])
        hi = np.array([r[t]["ci"][1] for r in ok])
        f = result["flips"].get(t) or {}
        lab = t + (f" (half by step {f['step']}, 95% CI {f['ci']})" if f.get("step") is not None else "")
        ax.plot(steps, v, "o-", color=color, ms=3, label=lab)
        ax.fill_between(steps, lo, hi, color=color, alpha=0.15, lw=0)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylabel("change in accuracy vs the start (fraction)")
    ax.legend(fontsize=7)
    ax.set_title("the decomposition along RL (95% bootstrap CIs over problems)", fontsize=9)
    for t, style in zip(result.get("types") or ("evaluation", "inversion"), ("-", "--")):
        ax2.plot(steps, [r["forward_share"].get(t) for r in ok], style, color="tab:green", marker=".",
                 label=f"P(F) at T = 1, {t}")
    ax2.plot(steps, [r["probe"]["r2"] for r in ok], "s:", color="tab:purple", ms=3,
             label="within-type propensity probe R^2 (snapshot)")
    ax2.plot(steps, [r["selection_recovery"]["value"] if r["selection_recovery"]["read"] else None for r in ok],
             "^-", color="tab:blue", ms=3, label="selection recovery (patching; where read)")
    ax2.set_ylim(-0.05, 1.1)
    ax2.set_xlabel("RL step")
    ax2.set_ylabel("fraction")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    from probes.reporting.rundir import save_png

    return save_png(fig, out / "figures" / "trajectory.png")


def _report(out: Path, result: dict) -> None:
    from probes.report import Figure, Section, write_report

    flips = "\n".join(f"- {t}: " + (f"passes half its final value at step {f['step']} (95% CI {f['ci']})"
                                     if f.get("step") is not None else (f.get("reason") or "undefined"))
                      + _extreme_text(result, t) for t, f in result["flips"].items())
    figs = [Figure(str(_figure(out, result).relative_to(out)), "terms, strategy shares, probe and recovery per step")] \
        if any("skipped" not in r for r in result["steps"]) else []
    write_report(out, "The RL trajectory", [
        Section("When did it change?", flips or "no snapshot could be run"),
        Section("Per snapshot", f"Start: `{result['start']}`; settings: `{json.dumps(result['settings'])}`.\n\n"
                + table(result), figs),
    ])


def _extreme_text(result: dict, t: str) -> str:
    e = (result.get("extremes") or {}).get(t) or {}
    if e.get("step") is None:
        big = e.get("largest")
        if not big:
            return ""
        ex = e.get("excludes_zero_at") or []
        return (f"; largest along the way: {_fmt(big)} at step {big['step']}, never counting ({e['reason']})"
                + (f"; its CI excludes 0 (by less than the minimum effect) at steps {', '.join(map(str, ex))}"
                   if ex else ""))
    return (f"; largest where it counts: {_fmt(e)} at step {e['step']} (it counts at steps "
            f"{', '.join(str(s) for s in e['steps_counting'])})")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m probes.trajectory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", required=True, metavar="DIR", help="the checkpoint RL started from (the SFT model)")
    ap.add_argument("--snapshots", required=True, metavar="DIR", help="folder of step-N / checkpoint-N snapshots")
    ap.add_argument("--out", metavar="DIR", help="output folder (default runs/trajectory-NAME)")
    ap.add_argument("--config", metavar="FILE.yaml", help="RunConfig fields that override the trajectory defaults")
    ap.add_argument("--every", type=int, default=1, help="use every k-th snapshot (default: all)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws of the flip steps")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not Path(args.start).is_dir():
        ap.error(f"--start {args.start}: no such checkpoint directory")
    try:
        snaps = find_snapshots(args.snapshots)[:: max(1, args.every)]
    except (FileNotFoundError, ValueError) as e:
        ap.error(f"--snapshots: {e}")
    overrides = {}
    if args.config:
        import yaml

        try:
            overrides = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            ap.error(f"--config {args.config}: {e}")
        if not isinstance(overrides, dict):
            ap.error(f"--config {args.config}: expected a YAML mapping")
    out = Path(args.out or f"runs/trajectory-{Path(args.snapshots).resolve().parent.name}")
    print(f"trajectory: {len(snaps)} snapshot(s) of {args.snapshots} against {args.start} -> {out}", file=sys.stderr)
    from probes.tasks import TaskError

    try:
        res = run_trajectory(args.start, snaps, out, overrides, n_boot=args.n_boot,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
    except TaskError as e:  # a bad task: once, before any snapshot
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(res))
    for t, f in res["flips"].items():
        print(f"{t}: " + (f"half of its final value by step {f['step']} (95% CI {f['ci']})" if f.get("step") is not None
                          else f.get("reason", "")) + _extreme_text(res, t))
    print(f"wrote {out / 'trajectory.json'} and {out / 'report.html'} in {res['seconds']:.0f} s")
    return 0 if any("skipped" not in r for r in res["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
