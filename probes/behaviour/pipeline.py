"""The behaviour of a checkpoint and the decomposition against a reference, as a library.

:func:`held_out_problems` (the stratified held-out set every stage reads), :func:`evaluate_cached`
(a checkpoint's per-problem rows, cached by weights hash, problems and settings),
:func:`run_behaviour` (both checkpoints and the decomposition) and :func:`format_table`.
``python -m probes.behaviour`` (:mod:`probes.behaviour.__main__`) is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from activations.hashing import sha256_json, weights_sha256 as checkpoint_weights_sha256
from probes.tasks import current_task

SCHEMA_VERSION = 1


def parse_steps(text: str) -> tuple[int, ...]:
    """``"1-10"`` or ``"5,6,7"`` to a tuple of chain lengths."""
    try:
        if "-" in text:
            a, b = text.split("-")
            steps = tuple(range(int(a), int(b) + 1))
        else:
            steps = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps {text!r}: use a range like 1-10 or a list like 5,6,7") from None
    if not steps or min(steps) < 1:
        raise argparse.ArgumentTypeError("--steps must name chain lengths >= 1")
    return steps


def held_out_problems(n: int, seed: int, steps: tuple[int, ...]):
    """``n`` distinct held-out problems of lengths ``steps``, stratified by the current task's own
    strata (:func:`probes.tasks.current_task`, ``sample_problems``; the finite-field task: round-robin
    over field x type x steps from a seed stream separate from every training stream).

    Raises:
        ValueError: a stratum has fewer distinct problems than it is asked for.
    """
    return current_task().sample_problems(n, seed, tuple(steps))


def load_model(path: str):
    """``(model, tokenizer)`` of a checkpoint through :func:`activations.load.load_checkpoint`:
    ``dtype``, ``device`` and ``device_map`` come from the enclosing
    :func:`activations.load.load_options` (``python -m probes.run`` sets the run's), else float32
    on the CPU.

    Raises:
        SystemExit: status 2, after a one-line ``error:`` on stderr, when the checkpoint cannot be loaded.
    """
    from activations.load import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None  # the exit status of a bad checkpoint in `probes.run` too
    return ckpt.model, ckpt.tokenizer


def rows_cache_file(cache_dir: str | Path, weights_sha256: str, problems, settings) -> Path:
    """Where the per-problem rows of one (weights, problems, settings) triple are cached:
    ``CACHE_DIR/<sha256 of the three>.jsonl`` (``batch_size`` is left out: it changes speed, not results)."""
    key = {"weights": weights_sha256, "problems": [p.id for p in problems],
           "settings": {k: v for k, v in sorted(settings.__dict__.items()) if k != "batch_size"}}
    return Path(cache_dir) / (sha256_json(key)[:32] + ".jsonl")


def evaluate_cached(model_dir, problems, settings, cache_dir=None, progress=True, weights_sha256=None):
    """:func:`probes.behaviour.evaluate.evaluate_model` on one checkpoint, through a cache of its
    per-problem rows when ``cache_dir`` is given (so a reference shared by several RL runs is
    measured once). A cache file that cannot be read back whole, or belongs to other problems,
    is logged, ignored and rewritten. ``weights_sha256``: the checkpoint's :func:`activations.hashing.weights_sha256`
    when the caller has it already (the weights are then not read twice); computed when None.

    Returns:
        One :class:`~probes.behaviour.evaluate.ProblemBehaviour` per problem, in order.
    """
    from probes.behaviour.evaluate import ProblemBehaviour, evaluate_model
    from activations.io import LineError, read_jsonl, write_jsonl

    f = None
    if cache_dir:
        f = rows_cache_file(cache_dir, weights_sha256 or checkpoint_weights_sha256(model_dir), problems, settings)
    if f is not None and f.exists():
        recs = [r for _, r in read_jsonl(f)]
        try:
            if len(recs) != len(problems) or any(isinstance(r, LineError) for r in recs):
                raise ValueError(f"{len(recs)} readable rows for {len(problems)} problems")
            rows = [ProblemBehaviour.from_dict(r, p) for r, p in zip(recs, problems)]
            logging.info("behaviour rows of %s read from the cache %s", model_dir, f)
            return rows
        except (ValueError, KeyError, TypeError) as e:
            logging.warning("ignoring the unreadable behaviour cache %s (%s); measuring again", f, e)
    model, tok = load_model(model_dir)
    logging.info("evaluating %s on %d problems", model_dir, len(problems))
    rows = evaluate_model(model, tok, problems, settings, progress=progress)
    if f is not None:
        write_jsonl(f, [r.to_dict() for r in rows])
    return rows


def run_behaviour(model_dir, reference_dir, problems, settings, n_boot=1000, progress=True, responses_out=None,
                 cache_dir=None, weights_sha256=None):
    """Evaluate one or two checkpoints on the same problems; returns the JSON-ready dict.

    ``cache_dir``: reuse (and store) each checkpoint's per-problem rows there, keyed by its weights'
    hash, the problems and the settings (:func:`evaluate_cached`). ``weights_sha256``: hashes the
    caller has already computed, by role (``{"model": ..., "reference": ...}``; either may be missing)."""
    from probes.behaviour.decompose import decompose, summarize
    from probes.behaviour.evaluate import summarize_behaviour
    from activations.io import write_jsonl

    from activations.load import load_tokenizer
    from probes.behaviour.evaluate import resolve_forced

    result: dict = {"schema_version": SCHEMA_VERSION, "model": str(model_dir), "reference": reference_dir and str(reference_dir),
                    "settings": dict(settings.__dict__), "models": {}}
    rows = {}
    for role, d in (("model", model_dir), ("reference", reference_dir)):
        if d is None:
            continue
        rows[role] = evaluate_cached(d, problems, settings, cache_dir, progress,
                                     weights_sha256=(weights_sha256 or {}).get(role))
        result["models"][role] = summarize_behaviour(rows[role], n_boot=n_boot, seed=settings.seed)
        if responses_out:
            write_jsonl(Path(responses_out).with_suffix(f".{role}.jsonl"), [r.to_dict() for r in rows[role]])
    method, reason, n_forced = resolve_forced(settings, load_tokenizer(str(model_dir)))  # loadable: measured above
    result["forced_accuracy"] = {"method": method, "reason": reason, "samples_per_strategy": n_forced}
    if "reference" in rows:
        ref, new = rows["reference"], rows["model"]
        dec = decompose(np.stack([r.pi for r in ref]), np.stack([r.a for r in ref]),
                        np.stack([r.pi for r in new]), np.stack([r.a for r in new]))
        keys = np.array([p.stratum for p in problems])
        types = np.array([p.type for p in problems])
        result["decomposition"] = {
            "pooled": summarize(dec, None, n_boot, settings.seed),
            "by_type": {t: summarize(dec, types == t, n_boot, settings.seed) for t in current_task().types},
            "strata": {k: summarize(dec, keys == k, n_boot, settings.seed) for k in sorted(set(keys))},
        }
    return result


def format_table(result: dict) -> str:
    """A readable summary table of a behaviour result."""
    lines = []
    for role, s in result["models"].items():
        acc = s["accuracy"]
        lines.append(f"== {role}: {result[role]}")
        lines.append(f"  accuracy  greedy {acc['greedy']['mean']:.3f}  sampled(T=1) {acc['sampled']['mean']:.3f}"
                     f"  implied sum_s pi*a {acc['implied']['mean']:.3f}   pass@k "
                     + " ".join(f"{k}:{v:.3f}" for k, v in s["pass_at_k"].items()))
        lines.append(f"  {'type':<11} {'P(F) T=1':>9} {'P(B) T=1':>9} {'unparse':>8} {'a(F)':>6} {'a(B)':>6}")
        for t in current_task().types:
            sh = s["strategy_share"][t]["sampled"]
            fa = s["forced_accuracy"][t]
            lines.append(f"  {t:<11} {sh['forward']:>9.3f} {sh['backward']:>9.3f} {sh['unparseable']:>8.3f}"
                         f" {fa['forward']['mean']:>6.3f} {fa['backward']['mean']:>6.3f}")
        samp = s.get("forced_accuracy_sampled")
        if samp:  # the exact forced accuracy beside the sampled one, within sampling error?
            for t in current_task().types:
                cells = []
                for st in ("forward", "backward"):
                    e, m = s["forced_accuracy"][t][st], samp[t][st]
                    half = 0.5 / (m["n"] * result["settings"].get("n_forced", 1) or 1)  # half a sample: a 0/N CI is [0, 0]
                    inside = m["ci"][0] - half <= e["mean"] <= m["ci"][1] + half
                    cells.append(f"a({st[0].upper()}) exact {e['mean']:.3f} sampled {m['mean']:.3f} "
                                 f"[{m['ci'][0]:.3f},{m['ci'][1]:.3f}]{'' if inside else ' OUTSIDE'}")
                lines.append(f"  {t:<11} " + "  ".join(cells))
        diff = acc.get("implied_minus_sampled")
        if diff:
            lines.append(f"  implied - sampled accuracy {diff['mean']:+.3f} [{diff['ci'][0]:+.3f},{diff['ci'][1]:+.3f}]"
                         f" ({'consistent' if diff['consistent'] else 'INCONSISTENT'}: the CI "
                         f"{'contains' if diff['consistent'] else 'excludes'} 0)")
        by_k: dict[str, list[float]] = {}
        for key, v in s["accuracy_by_stratum"].items():  # strata TYPE/kN/...: the k part; another task's, whole
            parts = key.split("/")
            by_k.setdefault(parts[1] if len(parts) > 1 else key, []).append(v["sampled"])
        order = sorted(by_k, key=lambda k: (not (k[:1] == "k" and k[1:].isdigit()), int(k[1:]) if k[1:].isdigit() else 0, k))
        lines.append("  sampled accuracy by k: " + " ".join(f"{k}:{np.mean(by_k[k]):.2f}" for k in order))
    if "decomposition" in result:
        d = result["decomposition"]
        lines.append("== decomposition (reference -> model), Shapley split, 95% bootstrap CIs")
        for name, node in [("pooled", d["pooled"])] + [(t, v) for t, v in d["by_type"].items()]:
            lines.append(f"  {name:<11} delta {node['delta']:+.3f} [{node['delta_ci'][0]:+.3f},{node['delta_ci'][1]:+.3f}]"
                         f"  selection {node['selection']:+.3f} [{node['selection_ci'][0]:+.3f},{node['selection_ci'][1]:+.3f}]"
                         f"  improvement {node['improvement']:+.3f} [{node['improvement_ci'][0]:+.3f},{node['improvement_ci'][1]:+.3f}]")
    return "\n".join(lines)
