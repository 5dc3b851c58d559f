"""``python -m probes.run``: what did RL change, strategy selection or strategy improvement?

Runs the pipeline on a pre-RL and a post-RL checkpoint (default: the shipped organism pair)
and writes a run folder (``runs/NAME``); prints the verdict and the report's path. Stages,
each reading and writing only the run folder (README.md, "The main job"):

  1. behaviour  responses of both checkpoints on held-out problems; strategy shares, accuracy,
                and the decomposition delta = selection + improvement (Shapley split)
  2. cache      activations at every layer's hook_resid_post at prompt_end, streamed to disk
  3. probes     linear probes for the strategy about to be used, with controls and steering
  4. patching   cross-model activation patching (CMAP) of routing and execution,
                counterfactual and attribution patching, and the patching verdict
  5. verdict    results.json, report.md, report.html and figures/

Rerunning the same command reuses finished stages (their input hash: config, checkpoint
weights and upstream outputs) and resumes an interrupted one.

``--grid`` runs every shipped pair (discovered from the checkpoints' cards, ``probes.grid``),
each into its own subfolder, and adds the table across pairs (``grid.md``, ``grid.json`` and a
report). A bad argument is a one-line ``error:`` on stderr and exit status 2.

Real scale (README, "Real scale"): ``--config configs/qwen2.5-1.5b-instruct.yaml`` for
Qwen2.5-1.5B-Instruct checkpoints; ``--device-map auto`` shards each model over the visible GPUs
(accelerate); ``--remote`` asks for nnsight on NDIF and stops at once, in one line, without an
API key or a connection. Every stage loads its models with the run's dtype, device, device map
and remote (``activations.load.load_options``). Each stage's line on stderr gives its time and
the process's peak RSS so far.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import NoReturn

from activations.hashing import checkpoint_sha256, sha256_file, sha256_json
from probes.runfolder import RunFolder, read_results, write_json
from probes.runconfig import DEVICE_MAPS
from probes.stages import STAGES, cache_positions

from probes.runfolder import RESULTS_SCHEMA_VERSION as SCHEMA_VERSION  # noqa: E402
PATCHING_ENGINE = 2
"""Bumped when the patching stage's numbers change for the same inputs (2: the mechanistic
decomposition on the run's problems), so that older patching stages rerun."""
PROBES_ENGINE = 2
"""Likewise for the probes stage (2: the within-type propensity map, Newton-fitted logistic probes,
the prompt slots in the cache), so that older probe stages rerun."""
DEFAULT_GRID_ROOT = "checkpoints/organism"


def _error(message: str) -> NoReturn:
    """A bad argument: one line on stderr, exit status 2 (as argparse)."""
    print(message, file=sys.stderr)
    sys.exit(2)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see python -m probes.run --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m probes.run", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pre-rl", metavar="DIR", help="the checkpoint before RL (default: the shipped organism's SFT)")
    ap.add_argument("--post-rl", metavar="DIR", help="the checkpoint after RL (default: the shipped organism's RL)")
    ap.add_argument("--config", metavar="FILE.yaml", help="a run config (fields of probes.runconfig.RunConfig)")
    ap.add_argument("--out", metavar="DIR", help="the run folder (default: runs/NAME)")
    ap.add_argument("--name", help="the run's name (default: main, or quick with --quick)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run (at real scale, "
                    "1e8+ parameters, patching is trimmed further: probes.runconfig.QUICK_AT_SCALE)")
    ap.add_argument("--device-map", choices=DEVICE_MAPS, default=None,
                    help="shard each model over the visible GPUs with accelerate (from_pretrained device_map)")
    ap.add_argument("--remote", action="store_true", default=None,
                    help="run the models on NDIF through nnsight (needs NDIF_API_KEY and the network; checked first)")
    ap.add_argument("--chat", action="store_true", default=None,
                    help="wrap the task prompt in the checkpoints' chat template (instruct checkpoints trained on "
                         "chat messages, data.chat: true)")
    ap.add_argument("--grid", nargs="?", const=DEFAULT_GRID_ROOT, metavar="ROOT",
                    help="run every pre-RL/post-RL pair whose RL checkpoint's card names its SFT init, under ROOT "
                         f"(default {DEFAULT_GRID_ROOT}), and add the table across pairs (default --out runs/grid)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun the chosen stages even if finished")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="log at INFO and keep the libraries' progress bars and warnings (transformers' weight loading)")
    return ap


CHECKPOINT_FILES: tuple[str, ...] = (
    "*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
"""The files of a checkpoint directory a stage reads when it loads the model and its tokenizer
(weights, the architecture, every tokenizer file with its special tokens and chat template).
``generation_config.json`` is not among them: generation ignores its sampling settings."""


def checkpoint_id(path: str) -> str:
    """The identity of a checkpoint for stage hashes: sha256 over the name and bytes of every file
    of :data:`CHECKPOINT_FILES` it has (a Hub id or a missing directory: the string itself)."""
    return checkpoint_sha256(path, CHECKPOINT_FILES)


def resolve_config(args: argparse.Namespace):
    """The validated run config from the flags and ``--config``.

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` naming the bad flag, file or field.
    """
    import yaml
    from pydantic import ValidationError

    from probes.runconfig import QUICK, RunConfig

    if args.grid and (args.pre_rl or args.post_rl):
        _error("error: --grid runs every shipped pair; it takes no --pre-rl/--post-rl")
    if not args.config and bool(args.pre_rl) != bool(args.post_rl):
        _error("error: --pre-rl and --post-rl go together (give both, or neither for the shipped pair)")
    over = {"pre_rl": args.pre_rl, "post_rl": args.post_rl, "out": args.out, "name": args.name,
            "device_map": getattr(args, "device_map", None), "remote": getattr(args, "remote", None),
            "chat": getattr(args, "chat", None)}
    base = dict(QUICK, name="quick") if args.quick else {}
    try:
        if args.config:
            cfg = RunConfig.from_yaml(args.config, **{**base, **over})
        else:
            cfg = RunConfig(**{**base, **{k: v for k, v in over.items() if v is not None}})
    except FileNotFoundError:
        _error(f"error: --config {args.config}: no such file")
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as e:
        _error(f"error: --config {args.config}: not a readable YAML file ({type(e).__name__})")
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        _error(f"error: --config {args.config}: not valid YAML{at} ({getattr(e, 'problem', None) or e})")
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(map(str, first["loc"])) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = f"unknown field; the fields are {', '.join(RunConfig.model_fields)}"
        _error(f"error: invalid run config field {field}: {msg}")
    except ValueError as e:
        _error(f"error: --config {args.config}: {e}")
    check_scope(cfg)
    if cfg.folder.exists() and not cfg.folder.is_dir():
        _error(f"error: --out {cfg.folder} is a file, not a run folder")
    _check_patching_overrides(cfg)
    if not args.grid:
        check_checkpoints(cfg.pre_rl, cfg.post_rl, chat=cfg.chat)
        check_dims(cfg)
        if args.quick:
            cfg = quick_at_scale(cfg)
    return cfg


def check_scope(cfg) -> None:
    """What must hold before anything is read: NDIF reachable with a key for ``remote`` (within
    ``activations.load.NDIF_TIMEOUT_S`` seconds; no hanging), and with ``chat`` a chat template
    in both checkpoints' tokenizers.

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` that says what is missing.
    """
    if cfg.remote:
        from activations.load import RemoteUnavailableError, check_remote

        try:
            check_remote()
        except RemoteUnavailableError as e:
            _error(f"error: --remote: {e}")
    if cfg.chat and not cfg.remote:
        from activations.load import load_tokenizer

        for role, src in (("--pre-rl", cfg.pre_rl), ("--post-rl", cfg.post_rl)):
            try:
                has = bool(getattr(load_tokenizer(src), "chat_template", None))
            except (OSError, ValueError):
                continue  # the stages report a checkpoint that cannot be loaded
            if not has:
                _error(f"error: chat: true but the tokenizer of {role} {src} has no chat template: set chat: false "
                       "for checkpoints trained on plain prompts (data.chat: false: the organism), or save the "
                       "template with the checkpoint")


def check_dims(cfg) -> None:
    """Both checkpoints have ``cfg.expect_dims`` (read from ``config.json``; no weights loaded).

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` naming the checkpoint and the dimension.
    """
    if not cfg.expect_dims:
        return
    from activations.dims import ModelDims
    from transformers import AutoConfig

    for role, p in (("--pre-rl", cfg.pre_rl), ("--post-rl", cfg.post_rl)):
        dims = ModelDims.from_config(AutoConfig.from_pretrained(p)).to_dict()
        for key, want in cfg.expect_dims.items():
            if dims[key] != want:
                _error(f"error: {role} {p} has {key} {dims[key]}, the config expects {want} (expect_dims)")


def quick_at_scale(cfg):
    """``--quick`` on checkpoints of ``QUICK_AT_SCALE_PARAMS`` parameters or more: the patching of
    ``probes.runconfig.QUICK_AT_SCALE`` on top (said on stderr), else ``cfg`` unchanged."""
    from probes.runconfig import QUICK_AT_SCALE, QUICK_AT_SCALE_PARAMS, estimate_params

    try:
        n = estimate_params(json.loads((Path(cfg.pre_rl) / "config.json").read_text()))
    except (OSError, ValueError, KeyError):
        return cfg
    if n < QUICK_AT_SCALE_PARAMS:
        return cfg
    patching = {**cfg.patching, **QUICK_AT_SCALE["patching"]}
    print(f"--quick at {n / 1e9:.2f}B parameters: patching trimmed to the verdict's sites "
          f"({', '.join(f'{k}={v}' for k, v in QUICK_AT_SCALE['patching'].items())})", file=sys.stderr)
    return cfg.model_copy(update={"patching": patching})


def peak_rss_gb() -> float:
    """This process's peak resident set size so far, in GB (1e9 bytes; Linux ``ru_maxrss`` is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _check_patching_overrides(cfg) -> None:
    """The config's ``patching`` overrides must be fields of PatchingConfig (checked before any stage runs)."""
    from pydantic import ValidationError

    from probes.patching.config import PatchingConfig

    try:
        PatchingConfig(**{"pre": cfg.pre_rl, "post": cfg.post_rl, "out": "x", **cfg.patching})
    except ValidationError as e:
        first = e.errors()[0]
        _error(f"error: invalid run config field patching.{'.'.join(map(str, first['loc']))}: "
               f"{first['msg'].removeprefix('Value error, ')}")


def check_checkpoints(pre: str, post: str, chat: bool = False) -> None:
    """Both are checkpoint directories of one architecture with one tokenizer (read from their
    ``config.json`` and tokenizer files; no weights are loaded), and with ``chat`` one chat template.

    Raises:
        SystemExit: (status 2) after a one-line ``error:`` naming the checkpoint or the first mismatch.
    """
    from activations.load import CheckpointError, check_checkpoint_files
    from activations.pair import ARCHITECTURE_FIELDS, PairMismatchError, _config_value, check_tokenizers

    for role, p in (("--pre-rl", pre), ("--post-rl", post)):
        if not (Path(p) / "config.json").exists():
            _error(f"error: {role} {p} is not a checkpoint directory (no config.json); "
                             "train the organism (python -m probes.train grid --config configs/organism/grid.yaml) "
                             "or point at a checkpoint")
        try:
            check_checkpoint_files(p)
        except CheckpointError as e:
            _error(f"error: {role}: {e}")
    from transformers import AutoConfig

    from activations.load import load_tokenizer

    try:
        ca, cb = AutoConfig.from_pretrained(pre), AutoConfig.from_pretrained(post)
        if getattr(ca, "architectures", None) != getattr(cb, "architectures", None):
            raise PairMismatchError("model class", f"{ca.architectures} vs {cb.architectures}", ("pre-RL", "post-RL"))
        for key in ARCHITECTURE_FIELDS:
            va, vb = _config_value(ca, key), _config_value(cb, key)
            if va != vb:
                raise PairMismatchError(f"config.{key}", f"{va!r} vs {vb!r}", ("pre-RL", "post-RL"))
        check_tokenizers(load_tokenizer(pre), load_tokenizer(post), chat=chat)
    except PairMismatchError as e:
        _error(f"error: {e}")
    except Exception as e:  # noqa: BLE001 - a tokenizer file transformers cannot parse raises anything
        _error(f"error: cannot read the checkpoints' config or tokenizer ({type(e).__name__}): "
               f"{(str(e).splitlines() or [''])[0]}")


READS: dict[str, tuple[str, ...]] = {
    "behaviour": (),
    "cache": ("behaviour",),                 # problems.jsonl
    "probes": ("behaviour", "cache"),        # the behaviour rows (targets) and the activation stores
    "patching": ("behaviour",),              # problems.jsonl
    "verdict": ("behaviour", "cache", "probes", "patching"),
}
"""The stages whose outputs each stage reads."""


def stage_hashes(cfg) -> dict[str, str]:
    """Input hash of each stage: every input it reads (the two checkpoints' weights, config and
    tokenizer files, :func:`checkpoint_id`; the settings that change its numbers) and the hashes of
    the stages whose outputs it reads (:data:`READS`). Changing an input reruns exactly the stages
    that read it, directly or through another stage's outputs."""
    w = {"pre": checkpoint_id(cfg.pre_rl), "post": checkpoint_id(cfg.post_rl)}
    runs = {"dtype": cfg.dtype, "device": cfg.device, "device_map": cfg.device_map}  # how a model is run
    own = {
        "behaviour": {"w": w, "n": cfg.n_problems, "steps": cfg.steps, "samples": cfg.samples, "forced": cfg.forced,
                      "forced_accuracy": cfg.forced_accuracy, "seed": cfg.seed, "n_boot": cfg.n_boot,
                      "layout": SCHEMA_VERSION, **runs},  # the folder's file names (3: behaviour/)
        "cache": {"w": w, "hook": cfg.probe_hook, "pos": cache_positions(cfg), "backend": cfg.backend,
                  "chunk": cfg.cache_chunk, **runs},
        "probes": {"w": w, "steer_n": cfg.steer_n, "steer_generate": cfg.steer_generate, "n_boot": cfg.n_boot,
                   "engine": PROBES_ENGINE, "targets": cfg.probe_targets, **runs},
        "patching": {"w": w, "patching": cfg.patching, "seed": cfg.seed, "backend": cfg.backend,
                     "engine": PATCHING_ENGINE, **runs},
        "verdict": {"schema": SCHEMA_VERSION},
    }
    if cfg.chat:  # only when on, so that the hashes of plain-prompt runs made before chat existed still hold
        for s in ("behaviour", "cache", "probes", "patching"):
            own[s]["chat"] = True
    out: dict[str, str] = {}
    for s in STAGES:  # in order: every stage a stage reads comes before it
        out[s] = sha256_json({"own": own[s], "reads": {u: out[u] for u in READS[s]}})
    return out


def manifest(cfg) -> dict:
    import importlib.metadata as md

    from activations.load import load_tokenizer, tokenizer_hash

    versions = {}
    for pkg in ("torch", "transformers", "nnsight", "transformer-lens", "trl", "scikit-learn", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    ck = {}
    for role, p in (("pre_rl", cfg.pre_rl), ("post_rl", cfg.post_rl)):
        ck[role] = {"path": str(p), "weights_sha256": {f.name: sha256_file(f) for f in sorted(Path(p).glob("*.safetensors"))},
                    "tokenizer_sha256": tokenizer_hash(load_tokenizer(str(p)))}
    return {"checkpoints": ck, "seed": cfg.seed, "versions": versions, "python": sys.version.split()[0]}


def _stage_fn(name: str):
    from probes import stages

    return getattr(stages, name) if name != "verdict" else verdict_stage


def verdict_stage(cfg, run: RunFolder) -> dict:
    """results.json, the report and its figures."""
    from probes.stages import load_stage_outputs

    res = assemble_results(cfg, run, load_stage_outputs(run))
    write_json(run.path("results.json"), res)
    md, html = write_run_report(cfg, run, res)
    return {"results": "results.json", "report": str(html.relative_to(run.root)), "label": res["verdict"]["label"]}


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
    timings = {s: (run.stage_info(s) or {}).get("seconds") for s in STAGES if s != "verdict"}  # this stage is running
    used = {s: ((run.stage_info(s) or {}).get("outputs") or {}).get("problems") for s in STAGES if s != "verdict"}
    return {
        "schema_version": SCHEMA_VERSION,
        "pre_rl": cfg.pre_rl, "post_rl": cfg.post_rl,
        "verdict": verdict,
        "decomposition": decomposition,
        "behaviour": {"pre_rl": beh["models"]["reference"], "post_rl": beh["models"]["model"], "settings": beh["settings"],
                     "forced_accuracy": beh.get("forced_accuracy")},
        "problems": used,
        "probes": outs.get("probes"),
        "patching": patch,
        "stage_seconds": timings,
    }


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


def probe_text(probes: dict) -> str:
    """The probe section's words: per model, whether the within-type propensity probe is
    informative (:mod:`probes.probing.propensity`), where it forms, the sampled-strategy AUROC
    against its ceiling, and the steering headline."""
    out = ["The headline target is the model's own strategy propensity within a problem type: "
           "logit(F) - logit(B) at the first response token, minus its type's training mean. Probes read the "
           "residual stream (ridge, grouped CV) at every prompt slot x layer; baselines see only the prompt's "
           "surface (type x field, type x chain length, prompt tokens, all of them). Rule: "
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
                       f"{d['site']} changes P(F) by {_fmt_score(sl['mean'], sl['ci'])} per unit of dose")
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

    def fmt(x, ci):
        return "undefined" if x is None else f"{x:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"

    pooled = res["decomposition"]["pooled"]
    sections = [
        Section("Verdict", f"**{v['statement']}**\n\n"
                + "".join(f"- **{r['text']}**\n" for r in v.get("regressions") or [])
                + f"- selection recovery (the mechanistic selection term over the behavioural one; post-RL residual "
                f"stream into the pre-RL model at the prompt positions, {v.get('score_site')}): "
                f"{fmt(v['selection_score'], v['selection_score_ci'])}"
                + (f" ({v['selection_score_undefined_reason']})" if v["selection_score"] is None else "") + "\n"
                f"- improvement recovery (likewise at the trace positions of each strategy's canonical trace, exact "
                f"forced accuracy): {fmt(v['improvement_score'], v['improvement_score_ci'])}"
                + (f" ({v['improvement_score_undefined_reason']})" if v["improvement_score"] is None else "") + "\n"
                f"- behaviour: delta {fmt(pooled['delta'], pooled['delta_ci'])} = selection "
                f"{fmt(pooled['selection'], pooled['selection_ci'])} + improvement "
                f"{fmt(pooled['improvement'], pooled['improvement_ci'])}\n"
                f"- forced accuracy: {(res['behaviour'].get('forced_accuracy') or {}).get('method', 'sampled')} "
                f"({(res['behaviour'].get('forced_accuracy') or {}).get('reason', '')})\n"
                f"- pre-RL: `{cfg.pre_rl}`; post-RL: `{cfg.post_rl}`\n\n"
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


def run_pipeline(cfg, stages=STAGES, force: bool = False, prefix: str = "") -> RunFolder:
    """Run ``stages`` of one pair into ``cfg.folder``, reusing finished ones (their input hash)
    unless ``force``; prints one line per stage on stderr. Returns the run folder."""
    import yaml

    from activations.io import atomic_write_text

    run = RunFolder(cfg.folder)
    atomic_write_text(run.path("config.yaml"), yaml.safe_dump(cfg.model_dump(), sort_keys=True))
    hashes = stage_hashes(cfg)
    if not (run.root / "manifest.json").exists() or force:
        write_json(run.path("manifest.json"), manifest(cfg))
    for i, stage in enumerate(STAGES, 1):
        if stage not in stages:
            continue
        tag = f"{prefix}[{i}/{len(STAGES)} {stage}]"
        if run.is_done(stage, hashes[stage]) and not force:
            print(f"{tag} up to date (finished earlier)", file=sys.stderr)
            continue
        print(f"{tag} running ...", file=sys.stderr)
        t0 = time.time()
        outputs = _stage_fn(stage)(cfg, run)
        run.mark_done(stage, hashes[stage], time.time() - t0, outputs)
        print(f"{tag} done in {time.time() - t0:.1f} s (peak RSS {peak_rss_gb():.1f} GB)", file=sys.stderr)
    return run


def _fmt_score(val, ci) -> str:
    if val is None:
        return "undefined"
    return f"{val:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


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
        beh = f"behavioural {_fmt_score(b.get('mean'), b.get('ci'))}" if b.get("ci") else ""
        rec = (f"recovery {_fmt_score(v[f'{k}_score'], v[f'{k}_score_ci'])}" if node.get("recovery_read", True)
               else "recovery not read")
        lines.append(f"  {k}: " + ", ".join(x for x in (beh, rec) if x) + tail)
    forms = v.get("forms_at") or {}
    if any(forms.get(k) is not None for k in ("selection", "improvement")):
        lines.append(f"  where it forms ({v.get('score_site', '').split('.')[-1]}, first layer with recovery CI above "
                     f"{(v.get('rule') or {}).get('recovery_threshold')}): " + ", ".join(
                         f"{k} layer {forms[k]}" for k in ("selection", "improvement") if forms.get(k) is not None))
    b = v["behaviour"]
    lines.append(f"  behaviour: delta {b['delta']:+.3f} = selection {b['selection']:+.3f} + improvement {b['improvement']:+.3f}")
    prop = ((res.get("probes") or {}).get("propensity")) or {}
    for model, pm in sorted(prop.items(), key=lambda kv: ("pre", "post").index(kv[0]) if kv[0] in ("pre", "post") else 2):
        h = pm.get("headline") or {}
        e = pm.get("earliest")
        where = f"; earliest above the surface: {e['position_name']} layer {e['layer']}" if e else ""
        lines.append(f"  probe ({model}-RL, within-type propensity): "
                     + (h.get("statement") or pm.get("reason", "skipped")).split(":")[0] + where)
    secs = {s: (run.stage_info(s) or {}).get("seconds") for s in STAGES}
    lines.append("  stage times: " + ", ".join(f"{s} {t:.1f} s" for s, t in secs.items() if t is not None))
    return lines


def run_grid(args, cfg) -> int:
    """``--grid``: every discovered pair into ``GRID/NAME``, then ``grid.json``, ``grid.md`` and the report."""
    from probes.grid import discover_pairs, grid_markdown, grid_results, grid_row
    from activations.io import atomic_write_text

    pairs = discover_pairs(args.grid)
    out = args.out or cfg.out  # --out, else the config's out, else runs/grid (runs/grid-quick with --quick)
    grid_dir = Path(out) if out else Path("runs") / (args.name or ("grid-quick" if args.quick else "grid"))
    grid_dir.mkdir(parents=True, exist_ok=True)
    print(f"grid: {len(pairs)} pair(s) under {args.grid}: " + ", ".join(f"{p.sft} -> {p.name}" for p in pairs),
          file=sys.stderr)
    for p in pairs:
        check_checkpoints(p.pre_rl, p.post_rl, chat=cfg.chat)
    rows, lines = [], []
    for p in pairs:
        pcfg = cfg.model_copy(update={"pre_rl": p.pre_rl, "post_rl": p.post_rl, "out": str(grid_dir / p.name),
                                      "name": p.name})
        run = run_pipeline(pcfg, args.stages, args.force, prefix=f"[{p.name}] ")
        if not (run.root / "results.json").exists():
            lines.append(f"{p.name}: no results.json (run the verdict stage)")
            continue
        rows.append(grid_row(p, read_results(run.root)))
        lines += [f"{p.sft} -> {p.name}"] + ["  " + x for x in verdict_lines(run)]
    write_json(grid_dir / "grid.json", grid_results(rows, args.grid))
    table = grid_markdown(rows)
    atomic_write_text(grid_dir / "grid.md", table + "\n")
    from probes.reporting.grid import write_grid_report

    _, html = write_grid_report(grid_dir)
    print("\n".join(lines))
    print(table)
    print(f"report: {html}")
    return 0


def quiet_libraries() -> None:
    """The console shows the stages, not the libraries: transformers' weight-loading bars and its
    info and warning messages are off (``-v`` keeps them)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_libraries()
    cfg = resolve_config(args)
    from activations.load import CheckpointError
    from activations.pair import PairMismatchError
    from activations.batch import ChatTemplateError, EndTokenError
    from activations.store import StoreError
    from probes.grid import GridError
    from probes.runfolder import RunFolderError

    from activations.load import load_options

    try:
        # every stage loads its models with the run's dtype, device, device_map and remote
        with load_options(dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map, remote=cfg.remote):
            if args.grid:
                return run_grid(args, cfg)
            run = run_pipeline(cfg, args.stages, args.force)
    except (GridError, CheckpointError, PairMismatchError, StoreError, ChatTemplateError, EndTokenError,
            RunFolderError) as e:
        _error(f"error: {e}")  # ChatTemplateError: --grid --chat with a pair whose tokenizer has no template
    if (run.root / "results.json").exists():
        print("\n".join(verdict_lines(run)))
        print(f"report: {run.root / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
