"""One call from activation stores and labels to ``probes.json`` and its figures.

:func:`run_probes` probes one or more models' stores (same problems) for each target, on one
shared split by problem chain; with two models it adds transfer and direction cosines; given the
models themselves it adds the steering dose-response at each model's best strategy layer.
:func:`probe_report` is the pre-RL / post-RL pair (issue #5's acceptance run)::

    probe_report("runs/x/cache/pre", "runs/x/cache/post", "runs/x/behaviour.pre.jsonl",
                 "runs/x/behaviour.post.jsonl", "runs/x/probes", models=("ckpt/pre", "ckpt/post"))

``probes.json`` (``schema_version`` 2): ``config``, ``settings`` (hooks, position, targets,
steering doses), ``split`` (held-out chains, shared by every model, hook and target),
``models[NAME][TARGET]`` (the :func:`~probes.probing.sweep.probe_layers` summaries of the
primary hook), ``transfer[TARGET]`` (:func:`~probes.probing.transfer.probe_transfer`),
``sites[HOOK]`` (``models`` and ``transfer`` of every hook, when several are probed),
``propensity[NAME]`` (the headline: the within-type propensity probe at every prompt slot x layer
against the surface baselines, :func:`~probes.probing.propensity.propensity_map`),
``steering[NAME]`` (:func:`~probes.probing.steering.steering_dose_response` at the primary hook,
or ``status = "skipped"`` with the reason) and ``figures`` (the propensity curve, its map and the
steering headline first) (paths relative to the output
folder; hooks after the first prefix theirs with the hook name). Written atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from activations.io import to_jsonable, write_json
from probes.probing import figures
from probes.probing.source import ProbeSet, open_store, read_probe_set
from probes.probing.splits import outer_split
from probes.probing.config import DEFAULT_STEER_ALPHAS, ProbeConfig
from probes.probing.sweep import LayerProbes, probe_layers
from probes.probing.targets import TARGETS, Labels, build_target, load_labels
from probes.probing.transfer import probe_transfer

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DEFAULT_TARGETS: tuple[str, ...] = ("strategy", "correct")
"""The default targets: the strategy about to be used (the type-saturated curve, secondary to the
within-type propensity map, :mod:`probes.probing.propensity`) and greedy correctness. ``type`` and
the pooled ``propensity`` regression remain available (``python -m probes.fit --target``)."""


def align_probe_sets(sets: Mapping[str, ProbeSet]) -> dict[str, ProbeSet]:
    """Restrict every probe set to the rows ``(problem id, position)`` all of them hold, in the
    first set's order (stores of two models on the same problems align row for row)."""
    names = list(sets)
    first = sets[names[0]]
    shared = set(zip(first.keys, first.positions))
    for n in names[1:]:
        shared &= set(zip(sets[n].keys, sets[n].positions))
    order = [k for k in zip(first.keys, first.positions) if k in shared]
    out = {}
    for n in names:
        ps = sets[n]
        where = {k: i for i, k in enumerate(zip(ps.keys, ps.positions))}
        idx = np.array([where[k] for k in order], dtype=np.int64)
        out[n] = ProbeSet(X=ps.X[:, idx], layers=ps.layers, hook=ps.hook, keys=[ps.keys[i] for i in idx],
                          positions=[ps.positions[i] for i in idx], groups=ps.groups[idx])
    dropped = {n: sets[n].n_rows - len(order) for n in names if sets[n].n_rows != len(order)}
    if dropped:
        log.warning("rows not shared by every store were dropped: %s", dropped)
    return out


def _shared_test_groups(ps: ProbeSet, strategy_targets: list, cfg: ProbeConfig, tries: int = 20) -> np.ndarray:
    """Held-out chains shared by every model and target: the first seeded grouped split whose
    sides both hold both strategies for every model whose strategy target is not skipped."""
    groups = ps.groups
    first = None
    for t in range(tries):
        train, test = outer_split(groups, cfg.test_size, cfg.seed + 7919 * t)
        first = first if first is not None else test
        ok = True
        for tg in strategy_targets:
            if tg.skipped:
                continue
            for side in (train, test):
                side = side[tg.valid[side]]
                if len(np.unique(tg.y[side])) < 2:
                    ok = False
        if ok:
            return np.unique(groups[test])
    return np.unique(groups[first])


def _load_backend(m):
    """The backend (nnsight) of a model given as a path, an ``activations.load.Checkpoint``, or a
    ``(model, tokenizer)`` pair; None for None."""
    if m is None:
        return None
    from activations.backends import make_backend
    from activations.load import Checkpoint, load_checkpoint

    if isinstance(m, (str, os.PathLike)):
        ck = load_checkpoint(m)
    elif hasattr(m, "model") and hasattr(m, "tokenizer"):
        ck = m
    else:
        ck = Checkpoint.from_model(*m)
    return make_backend("nnsight", ck)


def run_probes(
    stores: Mapping[str, Any],
    labels: Mapping[str, Labels | str | Path],
    out_dir: str | Path,
    *,
    targets: Sequence[str] = DEFAULT_TARGETS,
    hook: str | Sequence[str] = "hook_resid_post",
    position: str = "prompt_end",
    layers: Sequence[int] | None = None,
    config: ProbeConfig | None = None,
    models: Mapping[str, Any] | None = None,
    steer_alphas: Sequence[float] = DEFAULT_STEER_ALPHAS,
    steer_n: int = 256,
    steer_generate: bool = True,
    steer_max_new_tokens: int | None = None,
    progress: bool = True,
    chat: bool = False,
) -> dict:
    """Probe each model's store for each target; write ``probes.json`` and figures to ``out_dir``.

    Args:
        stores: model name -> store directory or opened store (an
            :class:`~activations.store.ActivationStore` or anything with its read API).
        labels: model name -> :class:`~probes.probing.targets.Labels` or a labels JSONL path
            (that model's behaviour rows: its greedy strategy, correctness, logit difference).
        out_dir: output folder (``probes.json``, ``figures/*.png``).
        targets: names from :data:`~probes.probing.targets.TARGETS`.
        hook: one block hook or several (``hook_resid_post``, ``hook_attn_out``, ...), each probed
            at every layer; the first is the primary one (``models``, ``transfer``, steering).
        position, layers: what to read (:func:`~probes.probing.source.read_probe_set`).
        config: :class:`~probes.probing.sweep.ProbeConfig`.
        models: model name -> checkpoint directory, ``Checkpoint`` or ``(model, tokenizer)``; when
            given, the steering dose-response runs at the model's best strategy layer.
        steer_alphas: doses (multiples of ``mu_F - mu_B``). steer_n: held-out prompts steered.
        steer_generate: also generate greedy responses under steering.
        steer_max_new_tokens: their budget in tokens (None: the longest correct trace of the
            steered problems, :func:`probes.behaviour.generate.max_trace_tokens`).
        progress: tqdm bars.
        chat: steer prompts rendered in the models' chat template
            (:func:`activations.batch.render_prompt`), as the stores were cached.

    Returns:
        The dict written to ``probes.json`` (see the module docstring); with several hooks,
        ``sites[HOOK]`` holds each hook's ``models`` and ``transfer``.

    Raises:
        ValueError: an unknown target, or ``labels`` without an entry for a store.
        KeyError: a store without a requested hook.
    """
    cfg = config or ProbeConfig()
    hooks = [hook] if isinstance(hook, str) else list(hook)
    if not hooks:
        raise ValueError("no hook given")
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"unknown target {t!r}: use one of {list(TARGETS)}")
    missing = [n for n in stores if n not in labels]
    if missing:
        raise ValueError(f"no labels for model(s) {missing}")
    out_dir = Path(out_dir)
    labs = {n: (v if isinstance(v, Labels) else load_labels(v)) for n, v in labels.items()}
    opened = {n: (open_store(s) if isinstance(s, (str, os.PathLike)) else s) for n, s in stores.items()}
    result: dict = {"schema_version": SCHEMA_VERSION, "config": cfg.to_dict(), "figures": [], "sites": {}}
    primary = None
    for h in hooks:
        sets = {n: read_probe_set(s, h, position, layers, progress=progress) for n, s in opened.items()}
        for n, ps in sets.items():
            ps.groups = chain_groups(ps.keys, ps.groups, labs[n])
        sets = align_probe_sets(sets)
        names = list(sets)
        if primary is None:
            strat = [build_target("strategy", sets[n].keys, sets[n].positions, labs[n]) for n in names]
            test_groups = _shared_test_groups(sets[names[0]], strat, cfg)
        prefix = "" if primary is None else f"{h}_"
        site_res, fits = _probe_hook(sets, labs, targets, cfg, test_groups, out_dir, prefix, result["figures"], progress)
        result["sites"][h] = site_res
        if primary is None:
            primary = (h, sets, fits)
    h, sets, fits = primary
    names = list(sets)
    ps0 = sets[names[0]]
    result["settings"] = {"hook": h, "hooks": hooks, "position": position, "layers": ps0.layers,
                          "targets": list(targets), "models": names, "steer_alphas": list(steer_alphas)}
    result["split"] = {"n_test_chains": int(len(test_groups)), "n_chains": int(len(np.unique(ps0.groups))),
                       "grouping": "problem chain", "seed": cfg.seed}
    result["models"] = result["sites"][h]["models"]
    result["transfer"] = result["sites"][h]["transfer"]
    if len(hooks) == 1:
        del result["sites"]
    result["propensity"] = _propensity(opened, sets, labs, h, test_groups, cfg)
    result["steering"] = _steering(models, names, fits, sets, labs, h, steer_alphas, steer_n, steer_generate,
                                   steer_max_new_tokens, cfg, progress, chat)
    fig_dir = out_dir / "figures"
    lead = []  # the headline figures lead the list: the within-type curve, its map, the steering headline
    if any(pm.get("status") == "ok" for pm in result["propensity"].values()):
        lead += [figures.plot_propensity_curve(result["propensity"], fig_dir / "propensity_within_type.png"),
                 figures.plot_propensity_maps(result["propensity"], fig_dir / "propensity_map.png")]
    if any(d.get("status") == "ok" for d in result["steering"].values()):
        lead.append(figures.plot_steering_headline(result["steering"], fig_dir / "steering_dose_response.png"))
    rest = [figures.plot_dose_response(dose, fig_dir / f"steering_{n}.png") for n, dose in result["steering"].items()]
    result["figures"] = ([str(f.relative_to(out_dir)) for f in lead] + result["figures"]
                         + [str(f.relative_to(out_dir)) for f in rest])
    write_json(out_dir / "probes.json", result)
    return to_jsonable(result)


def chain_groups(keys, groups, labels) -> np.ndarray:
    """``[n]`` split groups of a probe set's rows: each problem's ``chain_id`` (the task's; a
    problem and its twin share it, so they stay on one side of every split), or the group the store
    gave (its id's chain, or the id) for a row without labels."""
    return np.array([labels.by_id[k].problem.chain_id if k in labels.by_id else g for k, g in zip(keys, groups)])


def _prompt_slots() -> tuple:
    """The current task's ``prompt_slots`` (``((name, word index), ...)``), or ``()``."""
    from probes.tasks import current_task

    return tuple(getattr(current_task(), "prompt_slots", None) or ())


def _map_positions(store, keys: list[str], hook: str, layers: list[int]) -> tuple[list[str], list[np.ndarray]]:
    """The position x layer map's positions the store holds (the current task's prompt slots, in
    prompt order, ``prompt_slots``; none when the task has none) and their ``[L, n, d]``
    activations in the row order of ``keys``; a slot some problem lacks is left out."""
    have = set(store.labels)
    positions, arrays = [], []
    for _, i in _prompt_slots():
        label = f"word:{i}"
        if label not in have or label in positions:
            continue
        ps = read_probe_set(store, hook, label, layers)
        where = {k: r for r, k in enumerate(ps.keys)}
        if not all(k in where for k in keys):
            continue
        positions.append(label)
        arrays.append(ps.X[:, [where[k] for k in keys]])
    return positions, arrays


def _propensity(opened, sets, labs, hook, test_groups, cfg) -> dict:
    """The within-type propensity map of each model (:func:`probes.probing.propensity.propensity_map`):
    the prompt slots the store holds and ``prompt_end``, every layer, on the shared split."""
    from probes.probing.propensity import propensity_map
    from probes.probing.splits import inner_folds

    slots = _prompt_slots()
    names = {f"word:{i}": name for name, i in slots}
    names["prompt_end"] = "prompt end"
    out = {}
    for n, store in opened.items():
        ps = sets[n]
        y = np.array([labs[n].by_id[k].logit_diff if labs[n].by_id[k].logit_diff is not None else np.nan
                      for k in ps.keys], dtype=np.float64)
        if not np.isfinite(y).any():
            out[n] = {"status": "skipped", "reason": "no logit difference in the behaviour rows"}
            continue
        positions, arrays = _map_positions(store, ps.keys, hook, ps.layers)
        same = [i for i, a in enumerate(arrays) if np.array_equal(a, ps.X)]  # the prompt's last word is
        positions = [p for i, p in enumerate(positions) if i not in same]  # prompt_end without a chat template
        arrays = [a for i, a in enumerate(arrays) if i not in same]
        X = np.stack(arrays + [ps.X])
        positions = positions + ["prompt_end"]
        in_test = np.isin(ps.groups, test_groups)
        train, test = np.nonzero(~in_test)[0], np.nonzero(in_test)[0]
        folds = [(train[a], train[b]) for a, b in inner_folds(None, ps.groups[train], cfg.n_splits, seed=cfg.seed)]
        problems = [labs[n].by_id[k].problem for k in ps.keys]
        res = propensity_map(X, positions, ps.layers, problems, y, ps.groups, train, test, folds,
                             samples=[labs[n].by_id[k].samples for k in ps.keys], position_names=names,
                             n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level)
        if len(positions) == 1 and not slots:
            res["map_note"] = "the task names no prompt slots (prompt_slots), so the map has the prompt end only"
        elif len(positions) == 1:
            res["map_note"] = ("the store holds prompt_end only: the position x layer map needs the prompt slots "
                               "cached (positions 'prompt_end " + "words:" + ",".join(str(i) for _, i in slots)
                               + "'; python -m probes.run caches them)")
        out[n] = res
    return out


def _probe_hook(sets, labs, targets, cfg, test_groups, out_dir, prefix, figure_list, progress):
    """Every target of one hook for every model: ``({"models", "transfer"}, fits)``."""
    fig_dir = out_dir / "figures"
    names = list(sets)
    res: dict = {"models": {n: {} for n in names}, "transfer": {}}
    fits: dict[str, dict[str, LayerProbes]] = {n: {} for n in names}
    tgts: dict[str, dict] = {n: {} for n in names}

    def add(path):
        figure_list.append(str(path.relative_to(out_dir)))

    for t in targets:
        for n in names:
            tg = build_target(t, sets[n].keys, sets[n].positions, labs[n])
            tgts[n][t] = tg
            log.info("probing %s of %s at %s (%d layers)", t, n, sets[n].hook, len(sets[n].layers))
            fit = probe_layers(sets[n], tg, labs[n], cfg, test_groups=test_groups, progress=progress)
            fits[n][t] = fit
            res["models"][n][t] = fit.summary
        summaries = {n: fits[n][t].summary for n in names}
        kind = tgts[names[0]][t].kind
        if kind == "continuous":
            add(figures.plot_regression_curves(summaries, fig_dir / f"{prefix}{t}_r2.png"))
        else:
            for fn, suffix in ((figures.plot_layer_curves, "layers"), (figures.plot_selectivity, "selectivity"),
                               (figures.plot_within_type, "within_type")):
                add(fn(summaries, fig_dir / f"{prefix}{t}_{suffix}.png"))
        if len(names) == 2 and kind == "binary":
            a, b = names
            tr = probe_transfer(sets[a], sets[b], tgts[a][t], tgts[b][t], fits[a][t], fits[b][t], cfg, names=(a, b))
            res["transfer"][t] = tr
            add(figures.plot_transfer(tr, fig_dir / f"{prefix}{t}_transfer.png"))
    return res, fits


def _steering(models, names, fits, sets, labs, hook, alphas, steer_n, generate, max_new_tokens, cfg, progress,
              chat=False) -> dict:
    from probes.behaviour.generate import max_trace_tokens
    from probes.probing.steering import steering_dose_response

    out = {}
    for n in names:
        fit = fits[n].get("strategy")
        if models is None or models.get(n) is None:
            out[n] = {"status": "skipped", "reason": "no model given (pass models= / --model)"}
            continue
        if fit is None or fit.skipped or fit.difference is None or fit.best_layer is None:
            reason = "no strategy probe" if fit is None else fit.summary.get("reason", "no difference of means")
            out[n] = {"status": "skipped", "reason": f"strategy probe unavailable: {reason}"}
            continue
        if hook not in ("hook_resid_post", "hook_resid_pre"):
            out[n] = {"status": "skipped", "reason": f"steering supports residual-stream hooks, not {hook}"}
            continue
        backend = _load_backend(models[n])
        tok = backend.checkpoint.tokenizer
        ps = sets[n]
        j = ps.layers.index(fit.best_layer)
        seen, problems = set(), []
        for i in fit.test_rows:
            k = ps.keys[i]
            if k not in seen:
                seen.add(k)
                problems.append(labs[n].by_id[k].problem)
        problems = problems[:steer_n]
        budget = max_new_tokens or max_trace_tokens(tok, max(p.length for p in problems))
        dose = steering_dose_response(backend, [p.prompt for p in problems], ps.site(fit.best_layer),
                                      fit.difference[j], alphas, generate=generate, max_new_tokens=budget,
                                      n_boot=cfg.n_boot, seed=cfg.seed, progress=progress, chat=chat)
        dose["status"] = "ok"
        dose["layer"] = int(fit.best_layer)
        dose["layer_chosen_by"] = "best cross-validated strategy probe (training rows)"
        out[n] = dose
    return out


def probe_report(store_pre, store_post, labels_pre, labels_post, out_dir, *, models: tuple | None = None,
                 **kwargs) -> dict:
    """The pre-RL / post-RL probe report: :func:`run_probes` with models named ``pre`` and
    ``post`` (transfer included); ``models`` = ``(pre, post)`` checkpoints for steering.

    Returns:
        The ``probes.json`` dict.
    """
    m = None if models is None else {"pre": models[0], "post": models[1]}
    return run_probes({"pre": store_pre, "post": store_post}, {"pre": labels_pre, "post": labels_post}, out_dir,
                      models=m, **kwargs)
