"""Behaviour of one checkpoint on a problem set: strategies, accuracy, pass@k, forced accuracy.

For every problem ``x`` it measures

- ``pi(s|x)``: the temperature-1 probability of the first response token of strategy ``s``
  (exact, from the logits; mass on other tokens counts as no strategy);
- greedy and temperature-1 sampled responses, verified and labelled;
- ``a(s|x)``: forced-strategy accuracy, the probability that a temperature-1 response is correct
  when it is prefixed with ``s``'s first token, so ``a`` exists even for strategies the model
  rarely picks. By default it is *exact*: the probability of the one correct response, from one
  teacher-forced forward pass (:mod:`probes.behaviour.exact`); with ``forced_method="sampled"`` (or
  ``"auto"`` on a tokenizer that can spell a response in several ways) it is the share of correct
  forced samples. ``sum_s pi(s|x) a(s|x)`` is then the model's temperature-1 accuracy in
  expectation (``implied_accuracy``), which the sampled accuracy estimates independently: the
  summary reports their difference with a CI (``accuracy.implied_minus_sampled``) as a check.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from math import comb

import numpy as np

from probes.behaviour.generate import first_token_probs, generate, max_trace_tokens, tokens_per_word
from probes.tasks import STRATEGIES, UNPARSEABLE, current_task
from probes.tasks import TaskProblem as Problem


@dataclass
class BehaviourSettings:
    """How a checkpoint is measured; ``chat`` renders prompts in its chat template
    (:func:`activations.batch.render_prompt`).

    Attributes:
        n_samples: temperature-1 samples per problem.
        n_forced: forced samples per problem and strategy (the forced accuracy when sampled; a
            check beside the exact one otherwise; 0: none).
        forced_method: ``"auto"``, ``"exact"`` or ``"sampled"`` (:func:`probes.behaviour.exact.forced_method`).
    """

    n_samples: int = 4
    n_forced: int = 2
    batch_size: int = 128
    seed: int = 0
    temperature: float = 1.0
    chat: bool = False
    forced_method: str = "auto"


@dataclass
class ProblemBehaviour:
    """Everything measured on one problem (``S`` = 2 strategies, forward then backward)."""

    problem: Problem
    pi: np.ndarray  # [S]
    logit_diff: float  # logit(F) - logit(B), nats
    greedy: str
    greedy_correct: bool
    greedy_strategy: str
    samples: list[str] = field(default_factory=list)
    sample_correct: list[bool] = field(default_factory=list)
    sample_strategy: list[str] = field(default_factory=list)
    forced_correct: dict[str, list[bool]] = field(default_factory=dict)
    a_exact: np.ndarray | None = None  # [S] exact forced accuracy, or None when sampled

    @property
    def a(self) -> np.ndarray:
        """``[S]`` the forced accuracy the decomposition uses: exact when measured, else sampled."""
        if self.a_exact is not None:
            return self.a_exact
        return self.a_sampled

    @property
    def a_sampled(self) -> np.ndarray:
        """``[S]`` the share of correct forced samples (NaN for a strategy without samples)."""
        return np.array([np.mean(self.forced_correct[s]) if self.forced_correct.get(s) else np.nan
                         for s in STRATEGIES])

    def to_dict(self) -> dict:
        return {
            "id": self.problem.id, "type": self.problem.type, "steps": self.problem.length,
            "stratum": self.problem.stratum, "prompt": self.problem.prompt, "problem": self.problem.to_dict(),
            "pi": self.pi.tolist(), "logit_diff": self.logit_diff,
            "greedy": self.greedy, "greedy_correct": self.greedy_correct, "greedy_strategy": self.greedy_strategy,
            "samples": self.samples, "sample_correct": self.sample_correct, "sample_strategy": self.sample_strategy,
            "forced_correct": self.forced_correct,
            "a_exact": None if self.a_exact is None else self.a_exact.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, problem: Problem) -> "ProblemBehaviour":
        """Rebuild from :meth:`to_dict` output; ``problem`` is the problem it was measured on.

        Raises:
            ValueError: ``d`` was measured on another problem (its id differs), or its ``pi`` is
                not one probability per strategy.
            KeyError: a key of :meth:`to_dict` is missing.
        """
        if d["id"] != problem.id:
            raise ValueError(f"behaviour row {d['id']!r} does not belong to problem {problem.id!r}")
        pi = np.asarray(d["pi"], dtype=float)
        if pi.shape != (len(STRATEGIES),):
            raise ValueError(f"behaviour row {d['id']!r}: pi has shape {pi.shape}, expected ({len(STRATEGIES)},)")
        return cls(problem=problem, pi=pi, logit_diff=float(d["logit_diff"]), greedy=d["greedy"],
                   greedy_correct=bool(d["greedy_correct"]), greedy_strategy=d["greedy_strategy"],
                   samples=list(d["samples"]), sample_correct=[bool(c) for c in d["sample_correct"]],
                   sample_strategy=list(d["sample_strategy"]),
                   forced_correct={s: [bool(c) for c in d["forced_correct"][s]] for s in STRATEGIES},
                   a_exact=None if d.get("a_exact") is None else np.asarray(d["a_exact"], dtype=float))


def _gen_grouped(model, tok, problems, *, greedy, prefix, settings, seed, desc, per_word=None):
    """Generate one response per problem, batching problems of equal chain length."""
    out: list[str | None] = [None] * len(problems)
    by_k = defaultdict(list)
    for i, p in enumerate(problems):
        by_k[p.length].append(i)
    for k in sorted(by_k):
        idx = by_k[k]
        texts = generate(model, tok, [problems[i].prompt for i in idx], greedy=greedy, prefix=prefix,
                         temperature=settings.temperature, max_new_tokens=max_trace_tokens(tok, k, per_word),
                         batch_size=settings.batch_size, seed=seed + 1000 * k, chat=settings.chat)
        for i, t in zip(idx, texts):
            out[i] = t
    return out


def resolve_forced(settings: BehaviourSettings, tok) -> tuple[str, str, int]:
    """``(method, reason, n_forced)``: the forced-accuracy method for ``tok`` and the forced
    samples to draw (at least :data:`probes.behaviour.exact.AUTO_FALLBACK_SAMPLES` when sampled)."""
    from probes.behaviour.exact import AUTO_FALLBACK_SAMPLES, forced_method

    method, reason = forced_method(settings.forced_method, tok)
    n = settings.n_forced
    if method == "sampled" and n < 1:
        n = AUTO_FALLBACK_SAMPLES
    return method, reason, n


def evaluate_model(model, tok, problems: list[Problem], settings: BehaviourSettings | None = None,
                   progress: bool = True) -> list[ProblemBehaviour]:
    """Measure a checkpoint's behaviour on ``problems`` (see the module docstring).

    Raises:
        ValueError: an unknown ``settings.forced_method``.
        MetricError: exact forced accuracy with a tokenizer that has no end token.
    """
    from tqdm.auto import tqdm

    from probes.behaviour.exact import exact_forced_accuracy

    settings = settings or BehaviourSettings()
    model.eval()
    method, _, n_forced = resolve_forced(settings, tok)
    pf, pb, ld = first_token_probs(model, tok, [p.prompt for p in problems], batch_size=settings.batch_size,
                                   chat=settings.chat)
    a_exact = (exact_forced_accuracy(model, tok, problems, chat=settings.chat, batch_size=settings.batch_size)
               if method == "exact" else None)
    jobs = [("greedy", None, 0)]
    jobs += [("sample", None, r) for r in range(settings.n_samples)]
    task = current_task()
    verify = task.verify
    jobs += [(f"forced-{s}", task.strategy_words[s], r) for s in STRATEGIES for r in range(n_forced)]
    results: dict[tuple[str, int], list[str]] = {}
    per_word = tokens_per_word(tok)
    for j, (kind, prefix, r) in enumerate(tqdm(jobs, desc="generating", disable=not progress, leave=False)):
        results[(kind, r)] = _gen_grouped(model, tok, problems, greedy=kind == "greedy", prefix=prefix,
                                          settings=settings, seed=settings.seed + 7919 * j, desc=None,
                                          per_word=per_word)
    out = []
    for i, p in enumerate(problems):
        g = results[("greedy", 0)][i]
        vg = verify(p, g)
        pbh = ProblemBehaviour(p, np.array([pf[i], pb[i]], dtype=np.float64), float(ld[i]), g, vg.correct, vg.strategy)
        for r in range(settings.n_samples):
            t = results[("sample", r)][i]
            v = verify(p, t)
            pbh.samples.append(t)
            pbh.sample_correct.append(v.correct)
            pbh.sample_strategy.append(v.strategy)
        for s in STRATEGIES:
            pbh.forced_correct[s] = [verify(p, results[(f"forced-{s}", r)][i]).correct for r in range(n_forced)]
        if a_exact is not None:
            pbh.a_exact = a_exact[i].copy()
        out.append(pbh)
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al. 2021, arXiv 2107.03374)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def _stratum_order(key: str) -> tuple:
    """Strata by type, then numerically by the parts that are ``k<int>``, then by name."""
    parts = key.split("/")
    return (parts[0], *[int(x[1:]) if x[:1] == "k" and x[1:].isdigit() else 0 for x in parts[1:2]], key)


def summarize_behaviour(rows: list[ProblemBehaviour], n_boot: int = 1000, seed: int = 0) -> dict:
    """Aggregate tables of one checkpoint's behaviour (keys documented in ``probes.behaviour``)."""
    from probes import bootstrap

    def mean_ci(vals):
        vals = np.asarray(vals, dtype=np.float64)
        return {"mean": float(vals.mean()) if vals.size else None,
                "ci": list(bootstrap.mean_ci(vals, n_boot=n_boot, seed=seed)["ci"]) if vals.size else None, "n": int(vals.size)}

    greedy = np.array([r.greedy_correct for r in rows], dtype=float)
    sampled = np.array([np.mean(r.sample_correct) for r in rows])
    implied = np.array([float(r.pi @ r.a) for r in rows])
    diff = mean_ci(implied - sampled)
    diff["consistent"] = bool(diff["ci"] is not None and diff["ci"][0] <= 0 <= diff["ci"][1])
    exact = bool(rows) and all(r.a_exact is not None for r in rows)
    out: dict = {
        "n_problems": len(rows),
        "forced_method": "exact" if exact else "sampled",
        "accuracy": {"greedy": mean_ci(greedy), "sampled": mean_ci(sampled), "implied": mean_ci(implied),
                     "implied_minus_sampled": diff},
        "accuracy_by_stratum": {},
        "strategy_share": {},
        "accuracy_by_strategy": {},
        "forced_accuracy": {},
        "pass_at_k": {},
    }
    strata = defaultdict(list)
    for i, r in enumerate(rows):
        strata[r.problem.stratum].append(i)
    for key in sorted(strata, key=_stratum_order):
        idx = strata[key]
        out["accuracy_by_stratum"][key] = {"greedy": float(greedy[idx].mean()), "sampled": float(sampled[idx].mean()),
                                           "n": len(idx)}
    for t in (*current_task().types, "all"):
        sel = [r for r in rows if t == "all" or r.problem.type == t]
        if not sel:
            continue
        labels = [s for r in sel for s in r.sample_strategy]
        glabels = [r.greedy_strategy for r in sel]
        out["strategy_share"][t] = {
            "sampled": {s: labels.count(s) / len(labels) for s in (*STRATEGIES, UNPARSEABLE)},
            "greedy": {s: glabels.count(s) / len(glabels) for s in (*STRATEGIES, UNPARSEABLE)},
            "first_token": {s: float(np.mean([r.pi[j] for r in sel])) for j, s in enumerate(STRATEGIES)},
        }
        by_s = {}
        for s in STRATEGIES:
            c = [ok for r in sel for ok, lab in zip(r.sample_correct, r.sample_strategy) if lab == s]
            by_s[s] = {"accuracy": float(np.mean(c)) if c else None, "n": len(c)}
        out["accuracy_by_strategy"][t] = by_s
        out["forced_accuracy"][t] = {s: mean_ci([r.a[j] for r in sel]) for j, s in enumerate(STRATEGIES)}
        if exact and all(r.forced_correct.get(s) for r in sel for s in STRATEGIES):  # the sampled check
            out.setdefault("forced_accuracy_sampled", {})[t] = {
                s: mean_ci([r.a_sampled[j] for r in sel]) for j, s in enumerate(STRATEGIES)}
    n = min(len(r.sample_correct) for r in rows) if rows else 0
    for k in sorted({1, 2, 4, 8, n} - {0}):
        if k <= n:
            out["pass_at_k"][str(k)] = float(np.mean([pass_at_k(n, int(sum(r.sample_correct[:n])), k) for r in rows]))
    return out
