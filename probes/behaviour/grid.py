"""``python -m probes.behaviour.grid``: behaviour of every organism checkpoint, cards, the grid table.

For each checkpoint under ``--root`` (SFT regimes ``sft-{fb,f,b}``, RL runs
``rl-{regime}-{same,hard}`` and control runs ``ctl-{regime}-{same,hard}``: continued SFT, not RL) it measures behaviour on the same held-out problems (RL runs
against their SFT parent, which adds the decomposition), writes ``behaviour.json`` and a card
``README.md`` into the checkpoint, and prints the paper's grid with the two claims checked:

- *diverse SFT enables selection*: the selection term is larger after FB SFT than after
  single-strategy SFT;
- *harder RL data enables improvement*: the improvement term is larger with the harder RL data
  than with same-difficulty RL data.

An improvement control pair (continued SFT on harder chains with the strategy held fixed, not
RL) is shipped as its start checkpoint, whose card names the end: ``"control_pair": {"after":
NAME, ...}``; its ``behaviour.json`` holds NAME measured against it, and the table lists the pair
as ``START -> NAME (control)``.

A checkpoint whose ``behaviour.json`` was measured on the same weights (hash) and settings is
not measured again, and each checkpoint's per-problem rows are cached under ``--cache`` (by
weights hash, problems and settings), so a reference shared by two RL runs is measured once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from activations.hashing import weights_sha256
from activations.io import atomic_write_text

REGIMES = {"fb": "FB mixture", "f": "forward-only", "b": "backward-only"}
RL_DATA = {"same": "same difficulty", "hard": "harder"}


def _fmt_ci(node: dict, key: str) -> str:
    lo, hi = node[f"{key}_ci"]
    return f"{node[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def card_markdown(name: str, card: dict, beh: dict) -> str:
    """The checkpoint card: what it is, how it was trained, its behaviour table."""
    from probes.behaviour.pipeline import format_table

    cfg = card.get("config", {})
    grpo = card.get("stage") == "grpo"
    rl_data = name.rsplit("-", 1)[-1] if grpo else None  # "same" / "hard" for the grid's RL runs
    lines = [f"# {name}", "", f"- stage: {card.get('algorithm') or 'SFT (TRL SFTTrainer)'}"]
    if card.get("init"):
        lines.append(f"- starts from: `{card['init']}`")
    if card.get("control"):
        lines.append(f"- **control checkpoint**: {card['control']}")
    if card.get("control_pair"):
        cp = card["control_pair"]
        lines.append(f"- **start of an improvement control pair** (continued SFT, not RL): this checkpoint -> "
                     f"`{cp['after']}`; {cp.get('note', '')}. The behaviour below is `{cp['after']}` measured "
                     f"against this checkpoint.")
    lines += [
        f"- model: Qwen2ForCausalLM {json.dumps(cfg.get('model'))}",
        # GRPO samples the strategy itself: the SFT mixture setting does not apply to it
        f"- data: {json.dumps({k: v for k, v in (cfg.get('data') or {}).items() if not (grpo and k == 'strategies')})}",
        f"- optimiser: {json.dumps(cfg.get('optim'))}",
        *([f"- GRPO: {json.dumps(cfg.get('grpo'))}"] if grpo else []),
        *([f"- RL data: {RL_DATA[rl_data]} (\"{rl_data}\" in the grid)"] if rl_data in RL_DATA else []),
        f"- data hash (sha256 of the training rows): `{card.get('data_hash')}`",
        f"- training time: {card.get('train_runtime')} s (train_runtime of the last session), {card.get('global_step')} steps"
        + (f"; {card['training_time_note']}" if card.get("training_time_note") else ""),
        f"- weights: fp16 safetensors, sha256 `{beh.get('weights_sha256', '')[:16]}...`",
        "",
        "## Behaviour",
        "",
        f"Held-out problems: {beh['settings'].get('n')} (k = {beh['settings'].get('steps')}), "
        f"{beh['settings'].get('n_samples')} samples at T = 1 and {beh['settings'].get('n_forced')} forced samples per strategy each.",
        "",
        "```",
        format_table(beh),
        "```",
    ]
    return "\n".join(lines) + "\n"


def grid_table(root: Path) -> tuple[str, dict]:
    """The grid across checkpoints (markdown) and the claims check (dict)."""
    rows = ["| checkpoint | acc T=1 | P(F) eval | P(F) inv | a(F) eval | a(B) eval | a(F) inv | a(B) inv "
            "| delta | selection | improvement |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    found: dict = {}
    shares: dict = {}  # name -> (P(forward | evaluation), P(backward | inversion), P(forward) over both types)

    def add_row(name: str, b: dict) -> None:
        m = b["models"]["model"]
        sh = m["strategy_share"]
        fa = m["forced_accuracy"]
        cells = [name, f"{m['accuracy']['sampled']['mean']:.3f}",
                 f"{sh['evaluation']['sampled']['forward']:.2f}", f"{sh['inversion']['sampled']['forward']:.2f}",
                 f"{fa['evaluation']['forward']['mean']:.2f}", f"{fa['evaluation']['backward']['mean']:.2f}",
                 f"{fa['inversion']['forward']['mean']:.2f}", f"{fa['inversion']['backward']['mean']:.2f}"]
        if "decomposition" in b:
            p = b["decomposition"]["pooled"]
            cells += [_fmt_ci(p, "delta"), _fmt_ci(p, "selection"), _fmt_ci(p, "improvement")]
            found[name] = p
            shares[name] = (sh["evaluation"]["sampled"]["forward"], sh["inversion"]["sampled"]["backward"],
                            (sh["evaluation"]["sampled"]["forward"] + sh["inversion"]["sampled"]["forward"]) / 2)
        else:
            cells += ["", "", ""]
        rows.append("| " + " | ".join(cells) + " |")

    for reg in REGIMES:
        names = [f"sft-{reg}"] + [f"{kind}-{reg}-{rl}" for kind in ("rl", "ctl") for rl in RL_DATA]
        for name in names:
            f = root / name / "behaviour.json"
            if f.exists():
                add_row(name, json.loads(f.read_text()))
    # improvement control pairs: a checkpoint whose card names the `control_pair` it is the start of
    for d in sorted(p for p in root.iterdir() if (p / "card.json").exists() and (p / "behaviour.json").exists()):
        pair = json.loads((d / "card.json").read_text()).get("control_pair")
        b = json.loads((d / "behaviour.json").read_text())
        if pair and "decomposition" in b:
            add_row(f"{d.name} -> {pair['after']} (control)", b)
    claims = {}
    sel = {reg: found.get(f"rl-{reg}-hard", {}).get("selection") for reg in REGIMES}
    if sel["fb"] is not None and (sel["f"] is not None or sel["b"] is not None):
        singles = [v for k, v in sel.items() if k != "fb" and v is not None]
        claims["diverse_sft_enables_selection"] = {
            "selection_fb": sel["fb"], "selection_single": singles, "holds": sel["fb"] > max(singles)}
    imp = {(reg, rl): found.get(f"rl-{reg}-{rl}", {}).get("improvement") for reg in REGIMES for rl in RL_DATA}
    pairs = [(reg, imp[(reg, "hard")], imp[(reg, "same")]) for reg in REGIMES
             if imp[(reg, "hard")] is not None and imp[(reg, "same")] is not None]
    if pairs:
        claims["harder_rl_enables_improvement"] = {
            reg: {"improvement_hard": h, "improvement_same": s, "holds": h > s} for reg, h, s in pairs}
    claims["pairs"] = {name: pair_checks(found[name], *shares[name]) for name in found}
    return "\n".join(rows), claims


SELECTION_PAIR = dict(natural_share=0.75, term=0.05)
"""Issue 3's selection pair: the natural strategy (forward for evaluation, backward for inversion)
on >= 75% of each type at T = 1, and a selection term >= 0.05 whose 95% CI excludes 0."""
IMPROVEMENT_PAIR = dict(forward_share=0.95, term=0.05)
"""Issue 3's improvement pair: forward share >= 95% and an improvement term >= 0.05 whose CI
excludes 0."""


def pair_checks(pooled: dict, natural_eval: float, natural_inv: float, forward: float) -> dict:
    """Which of issue 3's pair criteria a pair meets (pooled decomposition, T = 1 shares of the
    post-RL checkpoint), each with the numbers it was decided on."""
    sel_ok = pooled["selection"] >= SELECTION_PAIR["term"] and pooled["selection_ci"][0] > 0
    imp_ok = pooled["improvement"] >= IMPROVEMENT_PAIR["term"] and pooled["improvement_ci"][0] > 0
    return {
        "selection_pair": bool(min(natural_eval, natural_inv) >= SELECTION_PAIR["natural_share"] and sel_ok),
        "selection_term_ok": bool(sel_ok), "natural_share_evaluation": natural_eval,
        "natural_share_inversion": natural_inv,
        "improvement_pair": bool(forward >= IMPROVEMENT_PAIR["forward_share"] and imp_ok),
        "improvement_term_ok": bool(imp_ok), "forward_share": forward,
    }


def main(argv: list[str] | None = None) -> int:
    from probes.behaviour.pipeline import held_out_problems, parse_steps, run_behaviour
    from probes.behaviour.evaluate import BehaviourSettings

    ap = argparse.ArgumentParser(prog="python -m probes.behaviour.grid", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="checkpoints/organism")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=parse_steps, default=parse_steps("1-10"))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--forced", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", help="checkpoint names to measure (default: all present)")
    ap.add_argument("--cache", default="runs/behaviour-cache",
                    help="per-problem rows of each measured checkpoint, reused when a reference serves several RL runs")
    ap.add_argument("--table-only", action="store_true", help="print the grid from existing behaviour.json files")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(args.root)
    if not args.table_only:
        problems = held_out_problems(args.n, args.seed, args.steps)
        settings = BehaviourSettings(n_samples=args.samples, n_forced=args.forced, seed=args.seed)
        for ckpt in sorted(p for p in root.iterdir() if (p / "card.json").exists()):
            if args.only and ckpt.name not in args.only:
                continue
            card = json.loads((ckpt / "card.json").read_text())
            pair = card.get("control_pair")
            # RL runs and controls are measured against the checkpoint they start from; the start
            # of a control pair measures the pair's end against itself
            if pair:
                model_dir, ref = str(root / pair["after"]), str(ckpt)
            else:
                model_dir = str(ckpt)
                ref = card.get("init") if card.get("stage") == "grpo" or card.get("control") else None
            whash = weights_sha256(ckpt)
            end_hash = weights_sha256(model_dir) if pair else None  # a pair is stale when either end changes
            key = {"n": args.n, "steps": list(args.steps), "problem_seed": args.seed}
            out = ckpt / "behaviour.json"
            if out.exists():
                old = json.loads(out.read_text())
                if (old.get("weights_sha256") == whash and old.get("end_weights_sha256") == end_hash
                        and all(old["settings"].get(k) == v for k, v in key.items())):
                    logging.info("%s: behaviour up to date", ckpt.name)
                    continue
            known = {"model": end_hash, "reference": whash} if pair else {"model": whash}
            res = run_behaviour(model_dir, ref, problems, settings, cache_dir=args.cache, weights_sha256=known)
            res["settings"].update(key)
            res["weights_sha256"] = whash
            if pair:
                res["end_weights_sha256"] = end_hash
            atomic_write_text(out, json.dumps(res, indent=1, sort_keys=True) + "\n")
            atomic_write_text(ckpt / "README.md", card_markdown(ckpt.name, card, res))
    table, claims = grid_table(root)
    print(table)
    print(json.dumps(claims, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
