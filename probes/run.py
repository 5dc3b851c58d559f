"""``python -m probes.run``: what did RL change, strategy selection or strategy improvement?

Runs the pipeline on a pre-RL and a post-RL checkpoint (default: the shipped organism pair)
and writes a run folder (``runs/NAME``); prints the verdict and the report's path. Stages,
each reading and writing only the run folder (DESIGN.md, "The pipeline"):

  1. behaviour  responses of both checkpoints on held-out problems; strategy shares, accuracy,
                and the decomposition delta = selection + improvement (Shapley split)
  2. cache      activations at every layer's hook_resid_post at prompt_end, streamed to disk
  3. probes     linear probes for the strategy about to be used, with controls and steering
  4. patching   cross-model activation patching (CMAP) of routing and execution,
                counterfactual and attribution patching, and the patching verdict
  5. verdict    results.json, report.md, report.html and figures/

Rerunning the same command reuses finished stages (their input hash: config, checkpoint
weights and upstream outputs) and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from probes.runfolder import RunFolder, stable_hash, write_json
from probes.stages import STAGES

SCHEMA_VERSION = 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m probes.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pre-rl", metavar="DIR", help="the checkpoint before RL (default: the shipped organism's SFT)")
    ap.add_argument("--post-rl", metavar="DIR", help="the checkpoint after RL (default: the shipped organism's RL)")
    ap.add_argument("--config", metavar="FILE.yaml", help="a run config (fields of probes.runconfig.RunConfig)")
    ap.add_argument("--out", metavar="DIR", help="the run folder (default: runs/NAME)")
    ap.add_argument("--name", help="the run's name (default: main, or quick with --quick)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run (default: all)")
    ap.add_argument("--force", action="store_true", help="rerun the chosen stages even if finished")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def _weights_id(path: str) -> str:
    """A cheap identity of a checkpoint for stage hashes: sha256 of its weight files' bytes."""
    from probes.runfolder import file_hash

    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    return stable_hash([file_hash(f) for f in files]) if files else str(path)


def resolve_config(args: argparse.Namespace):
    from pydantic import ValidationError

    from probes.runconfig import QUICK, RunConfig

    over = {"pre_rl": args.pre_rl, "post_rl": args.post_rl, "out": args.out, "name": args.name}
    base = dict(QUICK, name="quick") if args.quick else {}
    try:
        if args.config:
            cfg = RunConfig.from_yaml(args.config, **{**base, **over})
        else:
            cfg = RunConfig(**{**base, **{k: v for k, v in over.items() if v is not None}})
    except FileNotFoundError:
        raise SystemExit(f"error: no such config file: {args.config}")
    except ValidationError as e:
        first = e.errors()[0]
        raise SystemExit(f"error: invalid run config field {'.'.join(map(str, first['loc']))}: {first['msg']}")
    for role, p in (("--pre-rl", cfg.pre_rl), ("--post-rl", cfg.post_rl)):
        if not (Path(p) / "config.json").exists():
            raise SystemExit(f"error: {role} {p} is not a checkpoint directory (no config.json); "
                             "train the organism (python -m probes.train grid --config configs/organism/grid.yaml) "
                             "or point at a checkpoint")
    return cfg


def stage_hashes(cfg) -> dict[str, str]:
    """Input hash of each stage: its config fields, the weights, and the stages before it."""
    w = {"pre": _weights_id(cfg.pre_rl), "post": _weights_id(cfg.post_rl)}
    own = {
        "behaviour": {"w": w, "n": cfg.n_problems, "steps": cfg.steps, "samples": cfg.samples, "forced": cfg.forced,
                      "seed": cfg.seed, "n_boot": cfg.n_boot},
        "cache": {"w": w, "hook": cfg.probe_hook, "pos": cfg.probe_position, "backend": cfg.backend, "dtype": cfg.dtype},
        "probes": {"w": w, "steer_n": cfg.steer_n, "steer_generate": cfg.steer_generate, "n_boot": cfg.n_boot},
        "patching": {"w": w, "patching": cfg.patching, "seed": cfg.seed, "backend": cfg.backend, "dtype": cfg.dtype},
        "verdict": {"schema": SCHEMA_VERSION},
    }
    out, prev = {}, ""
    for s in STAGES:
        out[s] = stable_hash({"own": own[s], "prev": prev})
        prev = out[s]
    return out


def manifest(cfg) -> dict:
    import importlib.metadata as md

    from activations.load import load_tokenizer, tokenizer_hash
    from probes.runfolder import file_hash

    versions = {}
    for pkg in ("torch", "transformers", "nnsight", "transformer-lens", "trl", "scikit-learn", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    ck = {}
    for role, p in (("pre_rl", cfg.pre_rl), ("post_rl", cfg.post_rl)):
        ck[role] = {"path": str(p), "weights_sha256": {f.name: file_hash(f) for f in sorted(Path(p).glob("*.safetensors"))},
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
    beh = outs["behavior"]
    dec = beh["decomposition"]
    pooled = dec["pooled"]
    patch = outs.get("patching") or {}
    pv = patch.get("verdict") or {}

    def score(key):
        s = (pv.get(key) or {}).get("score") or {}
        return s.get("value"), s.get("ci"), s.get("reason")

    s_val, s_ci, s_why = score("selection")
    i_val, i_ci, i_why = score("improvement")
    verdict = {
        "label": pv.get("label", "neither"),
        "selection_score": s_val, "selection_score_ci": s_ci, "selection_score_undefined_reason": s_why,
        "improvement_score": i_val, "improvement_score_ci": i_ci, "improvement_score_undefined_reason": i_why,
        "rule": pv.get("rule_text"),
        "behaviour": {"delta": pooled["delta"], "selection": pooled["selection"], "improvement": pooled["improvement"],
                      "selection_ci": pooled["selection_ci"], "improvement_ci": pooled["improvement_ci"]},
    }
    decomposition = {
        "pooled": {**{k: pooled[k] for k in ("n", "delta", "delta_ci", "selection", "selection_ci", "improvement",
                                             "improvement_ci")},
                   "interaction": pooled["at_reference"]["interaction"],
                   "interaction_ci": pooled["at_reference"]["interaction_ci"],
                   "at_reference": pooled["at_reference"], "at_model": pooled["at_model"]},
        "by_type": dec["by_type"],
        "strata": dec["strata"],
    }
    timings = {s: (run.stage_info(s) or {}).get("seconds") for s in STAGES}
    return {
        "schema_version": SCHEMA_VERSION,
        "pre_rl": cfg.pre_rl, "post_rl": cfg.post_rl,
        "verdict": verdict,
        "decomposition": decomposition,
        "behavior": {"pre_rl": beh["models"]["reference"], "post_rl": beh["models"]["model"], "settings": beh["settings"]},
        "probes": outs.get("probes"),
        "patching": patch,
        "stage_seconds": timings,
    }


def write_run_report(cfg, run: RunFolder, res: dict):
    from analyses.behaviour import decomposition_figure, strategy_figure
    from probes.behavior.__main__ import format_table
    from probes.report import Figure, Section, write_report

    figs = [strategy_figure(run.root), decomposition_figure(run.root)]
    for sub in ("probes", "patching"):
        for f in sorted((run.root / sub).rglob("*.png")):
            dest = run.root / "figures" / f"{sub}_{f.name}"
            shutil.copy2(f, dest)
            figs.append(dest)
    v = res["verdict"]

    def fmt(x, ci):
        return "undefined" if x is None else f"{x:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"

    pooled = res["decomposition"]["pooled"]
    sections = [
        Section("Verdict", f"**{v['label']}**\n\n"
                f"- selection score (routing recovery, post-RL into pre-RL, prompt positions): "
                f"{fmt(v['selection_score'], v['selection_score_ci'])}"
                + (f" ({v['selection_score_undefined_reason']})" if v["selection_score"] is None else "") + "\n"
                f"- improvement score (execution recovery under forced strategies): "
                f"{fmt(v['improvement_score'], v['improvement_score_ci'])}"
                + (f" ({v['improvement_score_undefined_reason']})" if v["improvement_score"] is None else "") + "\n"
                f"- rule: {v['rule']}\n"
                f"- pre-RL: `{cfg.pre_rl}`; post-RL: `{cfg.post_rl}`"),
        Section("Behaviour", "```\n" + format_table(json.loads((run.root / "behavior" / "behavior.json").read_text()))
                + "\n```", [Figure("figures/behaviour_strategy.png", "P(forward) at the first response token, by type and k")]),
        Section("Decomposition",
                "| term | value | 95% CI |\n| --- | --- | --- |\n"
                + "\n".join(f"| {k} | {pooled[k]:+.4f} | [{pooled[k + '_ci'][0]:+.4f}, {pooled[k + '_ci'][1]:+.4f}] |"
                            for k in ("delta", "selection", "improvement", "interaction"))
                + "\n\nShapley split: selection = sum_s (pi' - pi)(a + a')/2, improvement = sum_s (pi + pi')/2 (a' - a); "
                  "interaction is the one-sided ordering's at the pre-RL model's values.",
                [Figure("figures/behaviour_decomposition.png", "delta = selection + improvement, with 95% bootstrap CIs")]),
        Section("Probes", "Linear probes at `prompt_end` of every layer (probes/probes.json).",
                [Figure(str(f.relative_to(run.root)), f.stem.replace("_", " ")) for f in figs if f.name.startswith("probes_")]),
        Section("Patching", "Cross-model, counterfactual and attribution patching (patching/patching.json).",
                [Figure(str(f.relative_to(run.root)), f.stem.replace("_", " ")) for f in figs if f.name.startswith("patching_")]),
        Section("Methods and sources",
                "- decomposition: acc = sum_s pi(s|x) a(s|x); Shapley split; percentile bootstrap over problems\n"
                "- probes: Hewitt and Liang 2019 (arXiv 1909.03368); Marks and Tegmark 2023 (arXiv 2310.06824); "
                "arXiv 2606.02907\n"
                "- cross-model activation patching: Prakash et al. 2024 (arXiv 2402.14811)\n"
                "- counterfactual patching: Zhang and Nanda 2023 (arXiv 2309.16042); Heimersheim and Nanda 2024 "
                "(arXiv 2404.15255)\n- attribution patching: Kramar et al. 2024 (arXiv 2403.00745)\n"
                "- the task and the two mechanisms: Select and Improve (arXiv 2606.13125)\n"
                "- stage times (s): " + ", ".join(f"{k} {v}" for k, v in res["stage_seconds"].items())),
    ]
    return write_report(run.root, "What did RL change? Strategy selection vs strategy improvement", sections)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    cfg = resolve_config(args)
    run = RunFolder(cfg.folder)
    import yaml

    from probes.task.jsonl import atomic_write_text

    atomic_write_text(run.path("config.yaml"), yaml.safe_dump(cfg.model_dump(), sort_keys=True))
    hashes = stage_hashes(cfg)
    if not (run.root / "manifest.json").exists() or args.force:
        write_json(run.path("manifest.json"), manifest(cfg))
    for stage in STAGES:
        if stage not in args.stages:
            continue
        if run.is_done(stage, hashes[stage]) and not args.force:
            print(f"[{stage}] up to date (finished earlier)", file=sys.stderr)
            continue
        print(f"[{stage}] running ...", file=sys.stderr)
        t0 = time.time()
        outputs = _stage_fn(stage)(cfg, run)
        run.mark_done(stage, hashes[stage], time.time() - t0, outputs)
        print(f"[{stage}] done in {time.time() - t0:.1f} s", file=sys.stderr)
    res_path = run.root / "results.json"
    if res_path.exists():
        res = json.loads(res_path.read_text())
        v = res["verdict"]
        print(f"verdict: {v['label']}")
        for k in ("selection", "improvement"):
            val, ci = v[f"{k}_score"], v[f"{k}_score_ci"]
            print(f"  {k} score: " + ("undefined" if val is None else f"{val:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"))
        b = v["behaviour"]
        print(f"  behaviour: delta {b['delta']:+.3f} = selection {b['selection']:+.3f} + improvement {b['improvement']:+.3f}")
        print(f"report: {run.root / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
