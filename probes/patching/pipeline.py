"""The patching stage end to end: from two checkpoints to ``patching.json`` and its figures.

:func:`run_patching` loads the pre-RL and post-RL checkpoints, checks that they can be patched
(:func:`activations.pair.check_pair`), and runs, in order:

1. **the mechanistic decomposition** (both directions, :mod:`probes.patching.mechanistic`): the
   donor's activations at every (hook, layer) written into the recipient at the prompt positions
   (``pi_patched``) and at the response positions of each strategy's canonical trace (exact
   ``a_patched``), the mechanistic selection and improvement terms in accuracy units and their
   recoveries (``mechanistic.png``);
2. **secondary evidence in nats** from the same sweeps: recovery curves of the strategy logit
   difference (``routing_<positions>.png``) and of the trace log-probability per token
   (``execution.png``);
3. **the verdict** at the score site (:mod:`probes.patching.verdict`);
4. **counterfactual patching** within each model (denoising and noising layer x position
   heatmaps, ``counterfactual_<model>_<mode>.png``);
5. **attribution patching** within each model on the denoising grid, its agreement with the exact
   heatmap and exact confirmation of its top hits (``attribution_<model>.png``);
6. **the behavioural check**: greedy generations of pre-RL, post-RL and pre-RL with the post-RL
   activations held at the score site (``behaviour.png``).

``patching.json`` (``schema_version`` 2) holds every number: ``settings``, ``models``,
``problems`` (the ids patched), ``behaviour_terms`` (the behavioural delta, selection and
improvement on those problems, from the sweep's exact unpatched ``pi`` and ``a``),
``mechanistic[direction]`` (``curves[term][hook]``: one
:meth:`~probes.patching.mechanistic.TermRecovery.to_dict` per layer; ``forms_at[term][hook]``: the
earliest layer whose recovery CI is above the threshold), ``per_problem`` (the unpatched ``pi``
and ``a`` of both models), ``routing[positions][direction]``, ``execution[direction]`` (each with ``curves[hook]``: one
recovery per layer, see :meth:`probes.patching.recovery.Recovery.to_dict`), ``verdict``,
``counterfactual[model][mode]``, ``attribution[model]``, ``behaviour``, ``figures``,
``timings_s``. Files are written atomically (write, then rename).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from activations.backends import make_backend
from activations.load import load_checkpoint
from activations.io import write_json
from activations.pair import check_pair
from probes.behaviour.generate import max_trace_words, tokens_per_word
from probes.bootstrap import mean_ci
from probes.patching.attribution import agreement, attribution_patching, confirm_top_hits
from probes.patching.behaviour import behaviour_summary, patched_generate
from probes.patching.cells import layer_cells
from probes.patching.cmap import CurveResult
from probes.patching.config import PatchingConfig
from probes.patching.counterfactual import MODES, PairError, counterfactual_patching, pair_inputs
from probes.patching.donor import Donor
from probes.patching.figures import (plot_attribution, plot_behaviour, plot_heatmap, plot_recovery_curves,
                                     plot_term_curves)
from probes.patching.mechanistic import PatchedBehaviour, earliest_layer, patched_behaviour, recovery_curves
from probes.patching.metrics import StrategyLogitDiff
from probes.patching.recovery import recoveries
from probes.patching.verdict import TERMS, VerdictRule, decide
from probes.tasks import STRATEGIES, current_task, has
from probes.tasks import TaskProblem as Problem

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
RESULTS_FILE = "patching.json"
DEFAULT_CLI_PROBLEMS = 32
"""Problems drawn when :func:`run_patching` is given none and ``n_problems`` is None."""


def stratified_subset(problems: Sequence[Problem], n: int | None) -> list[Problem]:
    """At most ``n`` of ``problems``, the same number from each stratum (field x type x chain
    length) as far as the strata allow: round-robin over the strata in order of first appearance,
    each stratum's problems in their order (None or ``n >= len``: all of them, in order).

    For the held-out problems of :func:`probes.behaviour.__main__.held_out_problems`, which are
    drawn round-robin over the same strata, this is their first ``n``.
    """
    if n is None or n >= len(problems):
        return list(problems)
    strata: dict[tuple, list[Problem]] = {}
    for p in problems:
        strata.setdefault(p.stratum, []).append(p)
    queues = list(strata.values())
    chosen: set[str] = set()
    i = 0
    while len(chosen) < n:
        q = queues[i % len(queues)]
        j = i // len(queues)
        if j < len(q):
            chosen.add(q[j].id)
        i += 1
    return [p for p in problems if p.id in chosen]


def counterfactual_problems(problems: Sequence[Problem], n: int, steps: int | None) -> list[Problem]:
    """Up to ``n`` problems of one chain length (counterfactual pairs align token by token) from
    ``problems``: ``steps`` if given, else the median chain length; both types alternate."""
    if n <= 0 or not problems:
        return []
    ks = sorted(p.length for p in problems)
    k = steps if steps is not None else ks[len(ks) // 2]
    return stratified_subset([p for p in problems if p.length == k], n)


def run_patching(cfg: PatchingConfig, problems: Sequence[Problem] | None = None) -> dict[str, Any]:
    """Run the patching stage (see the module docstring) and write its results into ``cfg.out``.

    Args:
        cfg: the settings.
        problems: the problems to measure (a run's held-out problems); a stratified subset of
            ``cfg.n_problems`` of them is patched (:func:`stratified_subset`). None: draw
            ``cfg.n_problems`` with the behaviour stage's sampler
            (:func:`probes.behaviour.pipeline.held_out_problems`, ``cfg.steps``, ``cfg.seed``).

    Returns:
        The results dict written to ``patching.json``.

    Raises:
        CheckpointError: a checkpoint cannot be loaded.
        PairMismatchError: the two checkpoints cannot be patched (different architecture or
            tokenizer; the message names the first difference).
    """
    from probes.behaviour.pipeline import held_out_problems

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pre_ckpt = load_checkpoint(cfg.pre, dtype=cfg.dtype, device=cfg.device)
    post_ckpt = load_checkpoint(cfg.post, dtype=cfg.dtype, device=cfg.device)
    check_pair(pre_ckpt, post_ckpt, chat=cfg.chat)
    pre, post = make_backend(cfg.backend, pre_ckpt), make_backend(cfg.backend, post_ckpt)
    tok = pre_ckpt.tokenizer
    n_layers = pre.dims.n_layers
    score_layer = cfg.score_layer % n_layers
    hooks = list(cfg.hooks) + ([cfg.score_hook] if cfg.score_hook not in cfg.hooks else [])
    if problems is None:
        problems = held_out_problems(cfg.n_problems or DEFAULT_CLI_PROBLEMS, cfg.seed, tuple(cfg.steps))
    problems = stratified_subset(problems, cfg.n_problems)
    figures: list[str] = []
    timings["load"] = time.perf_counter() - t0
    task = current_task()
    skipped: dict[str, str] = {}
    if not has(task, "canonical_response"):
        skipped["all"] = NO_CANONICAL
        results = {"schema_version": SCHEMA_VERSION, "settings": cfg.model_dump(), "skipped": skipped,
                   "problems": {"cmap": [], "counterfactual": []}, "verdict": None, "figures": [],
                   "timings_s": timings}
        write_json(out / RESULTS_FILE, results)
        log.warning("patching skipped: %s", NO_CANONICAL)
        return results
    if not has(task, "twin"):
        skipped["counterfactual"] = NO_TWINS

    # 1-2. the mechanistic decomposition, both directions (routing at the prompt, execution on the traces)
    t = time.perf_counter()
    routing_positions = ["prompt"] + [p for p in cfg.routing_positions if p != "prompt"]
    common = dict(routing_positions=routing_positions, strategies=cfg.strategies, chat=cfg.chat,
                  max_rows=cfg.max_rows)
    pbs = {"post_into_pre": patched_behaviour(pre, post, tok, problems, hooks, direction="post_into_pre", **common),
           "pre_into_post": patched_behaviour(post, pre, tok, problems, hooks, direction="pre_into_post", **common)}
    timings["mechanistic"] = time.perf_counter() - t
    boot = dict(n_boot=cfg.n_boot, seed=cfg.seed)
    mech: dict[str, Any] = {}
    curves_by_dir = {}
    for d, pb in pbs.items():
        curves = recovery_curves(pb, **boot)
        curves_by_dir[d] = curves
        mech[d] = {
            "recipient": {"pi": _mean_rows(pb.pi_r), "a": _mean_rows(pb.a_r)},
            "donor": {"pi": _mean_rows(pb.pi_d), "a": _mean_rows(pb.a_d)},
            "curves": {term: {h: [r.to_dict() for r in c] for h, c in by_hook.items()}
                       for term, by_hook in curves.items()},
            "forms_at": {term: {h: earliest_layer(c, cfg.recovery_threshold) for h, c in by_hook.items()}
                         for term, by_hook in curves.items()},
        }
    figures.append(plot_term_curves(curves_by_dir, out / "mechanistic.png", cfg.recovery_threshold,
                                    "Recovery of the behavioural terms by cross-model patching").name)

    # secondary evidence in nats (the rule before issue 17), from the same sweeps
    common_rec = dict(tol=cfg.tol, n_boot=cfg.n_boot, seed=cfg.seed)
    routing = {pos: {d: _logit_diff_curves(pb, pos, **common_rec) for d, pb in pbs.items()} for pos in routing_positions}
    execution = {d: _trace_curves(pb, problems, **common_rec) for d, pb in pbs.items()}
    for pos in cfg.routing_positions:
        figures.append(plot_recovery_curves(routing[pos], out / f"routing_{pos}.png",
                                            f"Secondary: strategy logit difference, patched at {pos}").name)
    figures.append(plot_recovery_curves(execution, out / "execution.png",
                                        "Secondary: trace log-prob per token under forced strategies, "
                                        "patched at trace positions").name)

    # 3. the verdict at the score site, in the behaviour's units
    rule = VerdictRule(cfg.recovery_threshold, cfg.min_effect)
    den = pbs["post_into_pre"]
    beh_terms = behaviour_terms(den, **boot)
    at_site = {term: curves_by_dir["post_into_pre"][term][cfg.score_hook][score_layer].to_dict() for term in TERMS}
    verdict = decide(beh_terms, at_site, rule)
    verdict["score_site"] = f"blocks.{score_layer}.{cfg.score_hook}"
    verdict["forms_at"] = {term: mech["post_into_pre"]["forms_at"][term][cfg.score_hook] for term in TERMS}
    verdict["secondary"] = {
        "selection": routing["prompt"]["post_into_pre"].at(cfg.score_hook, score_layer).to_dict(),
        "improvement": execution["post_into_pre"].at(cfg.score_hook, score_layer).to_dict(),
        "note": "secondary evidence, not the rule: recoveries of the strategy logit difference (nats) and of the "
                "trace log-probability per token averaged over both forced strategies (nats/token)",
    }

    # 4-5. counterfactual and attribution, within each model
    t = time.perf_counter()
    counterfactual: dict[str, Any] = {}
    attribution: dict[str, Any] = {}
    cf_problems = ([] if "counterfactual" in skipped
                   else counterfactual_problems(problems, cfg.counterfactual_n, cfg.counterfactual_steps))
    pairs, cf_pairs = None, {"requested": len(cf_problems), "used": 0, "skipped": {}}
    if "counterfactual" in skipped:
        cf_pairs["skipped_because"] = skipped["counterfactual"]
    if cf_problems:
        try:
            pairs = pair_inputs(tok, cf_problems, chat=cfg.chat)
            cf_pairs = pairs.summary()
            cf_problems = pairs.problems
        except PairError as e:  # no pair aligns under this tokenizer: the heatmaps are skipped, the stage goes on
            log.warning("counterfactual patching skipped: %s", e)
            cf_pairs["skipped_because"] = str(e)
            cf_problems = []
    if pairs is not None:
        for name, backend in (("pre", pre), ("post", post)):
            counterfactual[name] = {}
            maps = {}
            for mode in MODES:
                hm = counterfactual_patching(backend, tok, cf_problems, cfg.counterfactual_hooks, mode, pairs=pairs,
                                             **common_rec, max_rows=cfg.max_rows, desc=f"counterfactual {name} {mode}")
                maps[mode] = hm
                counterfactual[name][mode] = hm.to_dict()
                figures.append(plot_heatmap(hm, out / f"counterfactual_{name}_{mode}.png",
                                            f"{name}-RL: eval <-> inv pairs").name)
            attribution[name] = _attribution(backend, tok, pairs, maps["denoising"], cfg, out, name, figures)
    timings["counterfactual_and_attribution"] = time.perf_counter() - t

    # 6. behaviour
    t = time.perf_counter()
    behaviour: dict[str, Any] = {}
    if cfg.behaviour_n > 0:
        bprobs = stratified_subset(problems, cfg.behaviour_n)
        prompts = [p.prompt for p in bprobs]
        budget = cfg.max_new_tokens or max_trace_words(max(p.length for p in bprobs)) * tokens_per_word(tok)
        gen_kw = dict(max_new_tokens=budget, batch_size=max(1, cfg.max_rows // 4), chat=cfg.chat)
        own_pre = patched_generate(pre, None, tok, prompts, desc="generate pre-RL", **gen_kw)
        own_post = patched_generate(post, None, tok, prompts, desc="generate post-RL", **gen_kw)
        site = f"blocks.{score_layer}.{cfg.score_hook}"
        settings = {}
        for pos in cfg.behaviour_positions:
            patched = patched_generate(pre, post, tok, prompts, [site], pos, desc=f"generate post into pre @ {pos}",
                                       **gen_kw)
            settings[f"post_into_pre_{pos}"] = behaviour_summary(bprobs, own_pre, own_post, patched,
                                                                 n_boot=cfg.n_boot, seed=cfg.seed)
            settings[f"post_into_pre_{pos}"]["examples"] = [
                {"problem": p.id, "pre": a, "post": b, "patched": c}
                for p, a, b, c in list(zip(bprobs, own_pre, own_post, patched))[:3]]
        behaviour = {"site": site, "max_new_tokens": budget, "n": len(bprobs), "settings": settings,
                     "problems": [p.id for p in bprobs]}
        figures.append(plot_behaviour(settings, out / "behaviour.png",
                                      f"Greedy generation, post-RL activations held at {site}").name)
    timings["behaviour"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    results = {
        "schema_version": SCHEMA_VERSION,
        "settings": cfg.model_dump(),
        "models": {"pre": pre_ckpt.describe(), "post": post_ckpt.describe(), "tokenizer_sha256": pre_ckpt.tokenizer_hash},
        "problems": {"cmap": [p.id for p in problems], "counterfactual": [p.id for p in cf_problems]},
        "counterfactual_pairs": cf_pairs,
        "skipped": skipped,
        "behaviour_terms": beh_terms,
        "mechanistic": mech,
        "per_problem": _per_problem(den, problems),
        "routing": {pos: {d: r.to_dict() for d, r in routing[pos].items()} for pos in routing_positions},
        "execution": {d: r.to_dict() for d, r in execution.items()},
        "verdict": verdict,
        "counterfactual": counterfactual,
        "attribution": attribution,
        "behaviour": behaviour,
        "figures": figures,
        "timings_s": timings,
    }
    write_json(out / RESULTS_FILE, results)
    log.info("wrote %s: verdict %s", out / RESULTS_FILE, verdict["label"])
    return results


NO_CANONICAL = ("the task has no canonical responses (canonical_response): the mechanistic decomposition needs each "
                "strategy's exact forced accuracy under patching, so no recovery is measured (the verdict's recovery "
                "scores are undefined)")
"""Why the patching stage is skipped for a task without ``canonical_response``."""
NO_TWINS = ("the task has no counterfactual twins (twin): counterfactual and attribution patching need a problem and "
            "its twin")
"""Why counterfactual and attribution patching are skipped for a task without ``twin``."""


def _mean_rows(x: np.ndarray) -> dict[str, float]:
    return {s: float(x[:, j].mean()) for j, s in enumerate(STRATEGIES)}


def _per_problem(pb: PatchedBehaviour, problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """The unpatched ``pi`` and exact ``a`` of both models on each patched problem (to check
    against the behaviour stage's rows)."""
    return [{"id": p.id, "pi_pre": pb.pi_r[i].tolist(), "pi_post": pb.pi_d[i].tolist(), "a_pre": pb.a_r[i].tolist(),
             "a_post": pb.a_d[i].tolist()} for i, p in enumerate(problems)]


def behaviour_terms(pb: PatchedBehaviour, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The behavioural delta, selection and improvement (Shapley split) on the patched problems,
    from the sweep's unpatched exact ``pi`` and ``a``: ``{term: {"mean", "ci", "n"}}``."""
    from probes.behaviour.decompose import decompose

    dec = decompose(pb.pi_r, pb.a_r, pb.pi_d, pb.a_d)
    return {k: mean_ci(getattr(dec, k), n_boot=n_boot, seed=seed) for k in ("delta", "selection", "improvement")}


def _curve(pb: PatchedBehaviour, positions: str, metric: dict, rec: np.ndarray, don: np.ndarray, patched: np.ndarray,
           groups: list[str], **kw: Any) -> CurveResult:
    cells = layer_cells(pb.hooks, pb.n_layers, positions)
    r, d, p = (torch.as_tensor(x, dtype=torch.float64) for x in (rec, don, patched))
    return CurveResult(direction=pb.direction, positions=positions, metric=metric, hooks=list(pb.hooks),
                       n_layers=pb.n_layers, cells=cells, recipient=r, donor=d, patched=p,
                       recoveries=recoveries(p, r, d, groups=groups, **kw), groups=groups)


def _log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, 1e-300))


def _logit_diff_curves(pb: PatchedBehaviour, pos: str, **kw: Any) -> CurveResult:
    """Secondary: recovery of the strategy logit difference ``log pi(F) - log pi(B)`` (nats)."""
    ld = lambda x: _log(x[..., 0]) - _log(x[..., 1])  # noqa: E731
    return _curve(pb, pos, {"name": "strategy_logit_diff", "unit": "nats"}, ld(pb.pi_r), ld(pb.pi_d),
                  ld(pb.pi_patched[pos]), [str(i) for i in range(pb.pi_r.shape[0])], **kw)


def _trace_curves(pb: PatchedBehaviour, problems: Sequence[Problem], **kw: Any) -> CurveResult:
    """Secondary: recovery of the mean log-probability per token of the canonical traces, one row
    per (problem, swept strategy) (nats/token)."""
    cols = [j for j, s in enumerate(STRATEGIES) if s in pb.strategies]
    per = lambda x: (x[..., cols] / pb.n_targets[:, cols]).reshape(*x.shape[:-2], -1)  # noqa: E731
    groups = [p.id for p in problems for _ in cols]
    return _curve(pb, "response", {"name": "trace_logprob_per_token", "unit": "nats/token"}, per(pb.logp_r),
                  per(pb.logp_d), per(pb.logp_patched), groups, **kw)


def _attribution(backend: Any, tok: Any, pairs: Any, exact_map: Any, cfg: PatchingConfig, out: Path, name: str,
                 figures: list[str]) -> dict[str, Any]:
    """AtP on the denoising grid of one model, its agreement with the exact heatmap, and exact
    confirmation of its top hits."""
    hooks = list(cfg.counterfactual_hooks)
    metric = StrategyLogitDiff(tok, chat=cfg.chat)
    donor = Donor.read(backend, pairs.clean, [f"blocks.*.{h}" for h in hooks])
    atp = attribution_patching(backend, pairs.corrupt, donor, metric, hooks, n_positions=pairs.n_positions,
                               recipient=exact_map.corrupt, donor_values=exact_map.clean, tol=cfg.tol,
                               n_boot=cfg.n_boot, seed=cfg.seed, groups=pairs.groups)
    exact = np.array([np.nan if r.value is None else r.value for r in exact_map.recoveries])
    agree = agreement(atp.values(), exact, cfg.attribution_top_k)
    hits = confirm_top_hits(backend, pairs.corrupt, donor, metric, atp, k=cfg.attribution_top_k,
                            min_effect=cfg.confirm_min_effect, tol=cfg.tol, n_boot=cfg.n_boot, seed=cfg.seed,
                            groups=pairs.groups, max_rows=cfg.max_rows)
    figures.append(plot_attribution(atp, exact, agree, out / f"attribution_{name}.png",
                                    f"{name}-RL: attribution vs exact (denoising)").name)
    return {
        "setting": "denoising on eval <-> inv pairs (recipient = corrupt, donor = clean)",
        "hooks": hooks,
        "agreement": agree,
        "top_hits": hits,
        "confirmed": int(sum(h["confirmed"] for h in hits)),
        "estimates": {h: _grid(atp.values(), i, atp.n_layers, atp.n_positions) for i, h in enumerate(hooks)},
    }


def _grid(values: np.ndarray, i: int, n_layers: int, n_positions: int) -> list[list[float | None]]:
    size = n_layers * n_positions
    g = values[i * size:(i + 1) * size].reshape(n_layers, n_positions)
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in g]
