"""The patching stage end to end: from two checkpoints to ``patching.json`` and its figures.

:func:`run_patching` loads the pre-RL and post-RL checkpoints, checks that they can be patched
(:func:`activations.pair.check_pair`), and runs, in order:

1. **routing CMAP** (both directions, at each of ``routing_positions``): recovery curves of the
   strategy logit difference (``routing_<positions>.png``);
2. **execution CMAP** (both directions, trace positions, forced strategies): recovery curves of
   the step log-probability (``execution.png``);
3. **the verdict** from the two scores at the score site (:mod:`probes.patching.verdict`);
4. **counterfactual patching** within each model (denoising and noising layer x position
   heatmaps, ``counterfactual_<model>_<mode>.png``);
5. **attribution patching** within each model on the denoising grid, its agreement with the exact
   heatmap and exact confirmation of its top hits (``attribution_<model>.png``);
6. **the behavioural check**: greedy generations of pre-RL, post-RL and pre-RL with the post-RL
   activations held at the score site (``behaviour.png``).

``patching.json`` (``schema_version`` 1) holds every number: ``settings``, ``models``,
``routing[positions][direction]``, ``execution[direction]`` (each with ``curves[hook]``: one
recovery per layer, see :meth:`probes.patching.recovery.Recovery.to_dict`), ``verdict``,
``counterfactual[model][mode]``, ``attribution[model]``, ``behaviour``, ``figures``,
``timings_s``. Files are written atomically (write, then rename).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from activations.backends import make_backend
from activations.load import load_checkpoint
from activations.pair import check_pair
from probes.behavior.generate import max_trace_words, tokens_per_word
from probes.patching.attribution import agreement, attribution_patching, confirm_top_hits
from probes.patching.behaviour import behaviour_summary, patched_generate
from probes.patching.cmap import cmap, execution_inputs, routing_inputs
from probes.patching.config import PatchingConfig
from probes.patching.counterfactual import MODES, counterfactual_patching, pair_inputs
from probes.patching.donor import Donor
from probes.patching.figures import plot_attribution, plot_behaviour, plot_heatmap, plot_recovery_curves
from probes.patching.metrics import StrategyLogitDiff
from probes.patching.verdict import VerdictRule, decide
from probes.task.problems import sample_problems

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RESULTS_FILE = "patching.json"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON atomically (a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    os.replace(tmp, path)
    return path


def run_patching(cfg: PatchingConfig) -> dict[str, Any]:
    """Run the patching stage (see the module docstring) and write its results into ``cfg.out``.

    Returns:
        The results dict written to ``patching.json``.

    Raises:
        CheckpointError: a checkpoint cannot be loaded.
        PairMismatchError: the two checkpoints cannot be patched (different architecture or
            tokenizer; the message names the first difference).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pre_ckpt = load_checkpoint(cfg.pre, dtype=cfg.dtype, device=cfg.device)
    post_ckpt = load_checkpoint(cfg.post, dtype=cfg.dtype, device=cfg.device)
    check_pair(pre_ckpt, post_ckpt)
    pre, post = make_backend(cfg.backend, pre_ckpt), make_backend(cfg.backend, post_ckpt)
    tok = pre_ckpt.tokenizer
    n_layers = pre.dims.n_layers
    score_layer = cfg.score_layer % n_layers
    hooks = list(cfg.hooks) + ([cfg.score_hook] if cfg.score_hook not in cfg.hooks else [])
    common = dict(tol=cfg.tol, n_boot=cfg.n_boot, seed=cfg.seed, max_rows=cfg.max_rows)
    problems = sample_problems(cfg.n_problems, cfg.seed, fields=tuple(cfg.fields), steps=tuple(cfg.steps))
    figures: list[str] = []
    timings["load"] = time.perf_counter() - t0

    # 1. routing
    t = time.perf_counter()
    batch, metric = routing_inputs(tok, problems, chat=cfg.chat)
    routing_positions = list(cfg.routing_positions) + (["prompt"] if "prompt" not in cfg.routing_positions else [])
    routing = {}
    for pos in routing_positions:
        routing[pos] = cmap(pre, post, batch, metric, hooks, pos, **common)
        if pos in cfg.routing_positions:
            figures.append(plot_recovery_curves(routing[pos], out / f"routing_{pos}.png",
                                                f"Routing CMAP: strategy logit difference, patched at {pos}").name)
    timings["routing"] = time.perf_counter() - t

    # 2. execution
    t = time.perf_counter()
    ebatch, emetric, groups = execution_inputs(tok, problems, cfg.strategies, chat=cfg.chat)
    execution = cmap(pre, post, ebatch, emetric, hooks, "response", groups=groups, **common)
    figures.append(plot_recovery_curves(execution, out / "execution.png",
                                        f"Execution CMAP: step log-prob under forced {'/'.join(cfg.strategies)}, "
                                        "patched at trace positions").name)
    timings["execution"] = time.perf_counter() - t

    # 3. verdict
    selection = routing["prompt"]["post_into_pre"].at(cfg.score_hook, score_layer)
    improvement = execution["post_into_pre"].at(cfg.score_hook, score_layer)
    rule = VerdictRule(cfg.recovery_threshold, cfg.min_routing_gap, cfg.min_execution_gap)
    verdict = decide(selection, improvement, rule)
    verdict["score_site"] = f"blocks.{score_layer}.{cfg.score_hook}"

    # 4-5. counterfactual and attribution, within each model
    t = time.perf_counter()
    counterfactual: dict[str, Any] = {}
    attribution: dict[str, Any] = {}
    if cfg.counterfactual_n > 0:
        cf_problems = sample_problems(cfg.counterfactual_n, cfg.seed + 1, fields=tuple(cfg.fields),
                                      steps=(cfg.cf_steps,))
        pairs = pair_inputs(tok, cf_problems, chat=cfg.chat)
        for name, backend in (("pre", pre), ("post", post)):
            counterfactual[name] = {}
            maps = {}
            for mode in MODES:
                hm = counterfactual_patching(backend, tok, cf_problems, cfg.counterfactual_hooks, mode, pairs=pairs,
                                             **common, desc=f"counterfactual {name} {mode}")
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
        bprobs = problems[:cfg.behaviour_n]
        prompts = [p.prompt for p in bprobs]
        budget = cfg.max_new_tokens or max_trace_words(max(p.steps for p in bprobs)) * tokens_per_word(tok)
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
        behaviour = {"site": site, "max_new_tokens": budget, "n": len(bprobs), "settings": settings}
        figures.append(plot_behaviour(settings, out / "behaviour.png",
                                      f"Greedy generation, post-RL activations held at {site}").name)
    timings["behaviour"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    results = {
        "schema_version": SCHEMA_VERSION,
        "settings": cfg.model_dump(),
        "models": {"pre": pre_ckpt.describe(), "post": post_ckpt.describe(), "tokenizer_sha256": pre_ckpt.tokenizer_hash},
        "problems": {"cmap": [p.id for p in problems]},
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
