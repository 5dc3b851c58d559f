"""Training data: SFT prompt-completion pairs and GRPO prompts, drawn reproducibly.

SFT examples draw a problem (field, type, k from the configured weights) and a strategy per
problem from the configured mixture, and pair the prompt with the correct trace. GRPO rows
carry the prompt and the problem's fields so the reward can verify completions.
"""

from __future__ import annotations

import json
import random

from activations.hashing import sha256_json_rows
from probes.task.problems import random_problem
from probes.task.traces import make_trace
from probes.train.config import DataConfig


def _draw(cfg: DataConfig, rng: random.Random):
    ks, kw = zip(*sorted(cfg.steps.items()))
    k = rng.choices(ks, weights=kw)[0]
    return random_problem(rng, rng.choice(cfg.fields), rng.choice(cfg.types), k)


def sft_rows(cfg: DataConfig) -> list[dict]:
    """``cfg.n`` rows ``{"prompt", "completion", "id", "strategy", "steps"}``.

    Plain text (the completion starts with a space) or, with ``cfg.chat``, chat messages that
    TRL renders with the model's chat template (Qwen2.5-Instruct).
    """
    rng = random.Random(f"sft-{cfg.seed}")
    strategies, sw = zip(*sorted(cfg.strategies.items()))
    rows = []
    for _ in range(cfg.n):
        prob = _draw(cfg, rng)
        s = rng.choices(strategies, weights=sw)[0]
        trace = make_trace(prob, s)
        if cfg.chat:
            row = {"prompt": [{"role": "user", "content": prob.prompt}],
                   "completion": [{"role": "assistant", "content": trace}]}
        else:
            row = {"prompt": prob.prompt, "completion": " " + trace}
        rows.append({**row, "id": prob.id, "strategy": s, "steps": prob.steps})
    return rows


def grpo_rows(cfg: DataConfig) -> list[dict]:
    """``cfg.n`` rows ``{"prompt", "problem"}`` where ``problem`` is the problem as JSON text."""
    rng = random.Random(f"grpo-{cfg.seed}")
    rows = []
    for _ in range(cfg.n):
        prob = _draw(cfg, rng)
        prompt = [{"role": "user", "content": prob.prompt}] if cfg.chat else prob.prompt
        rows.append({"prompt": prompt, "problem": json.dumps(prob.to_dict(), sort_keys=True)})
    return rows


def completion_budget(rows: list[dict], tokenizer) -> int:
    """The fewest completion tokens that let every strategy's correct trace finish on ``rows``.

    For each GRPO row (:func:`grpo_rows`) and each strategy, the correct trace as the model writes
    it (a leading space, or the bare text under a chat template) in ``tokenizer``'s tokens, plus 1
    for the end token; the maximum over rows. A ``max_completion_length`` below it truncates those
    traces, so a correct long-chain answer scores 0 and GRPO learns to avoid the longer strategy:
    a selection effect made by the budget, not by accuracy.

    Units: tokens. Cost: one tokenisation per (row, strategy).
    """
    from probes.task.problems import Problem
    from probes.task.traces import STRATEGIES

    longest = 0
    seen = set()
    for row in rows:
        if row["problem"] in seen:
            continue
        seen.add(row["problem"])
        prob = Problem.from_dict(json.loads(row["problem"]))
        chat = not isinstance(row["prompt"], str)
        for s in STRATEGIES:
            text = make_trace(prob, s) if chat else " " + make_trace(prob, s)
            longest = max(longest, len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return longest + 1


def data_hash(rows: list[dict]) -> str:
    """SHA-256 of the rows' canonical JSON (for checkpoint cards and manifests;
    :func:`activations.hashing.sha256_json_rows`)."""
    return sha256_json_rows(rows)
