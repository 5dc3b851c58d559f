"""The GRPO reward: the verifier's judgement of a completion (1.0 correct, 0.0 otherwise)."""

from __future__ import annotations

import json

from probes.task.problems import Problem
from probes.task.verify import label, verify


def completion_reward(problem: Problem, completion: str, kind: str = "correct") -> float:
    """1.0 when ``completion`` answers ``problem`` correctly, else 0.0.

    ``kind="correct"`` requires every step and the answer right (:func:`probes.task.verify`);
    ``kind="answer"`` requires only a parseable trace with the right final answer.
    """
    v = verify(problem, completion)
    ok = v.correct if kind == "correct" else (v.parseable and v.answer_correct)
    return 1.0 if ok else 0.0


def make_reward_func(kind: str = "correct"):
    """A TRL reward function ``f(prompts, completions, problem, **kw) -> list[float]``.

    ``problem`` is the dataset column holding each problem as JSON (see
    :func:`probes.train.data.grpo_rows`). When TRL passes ``log_metric``, the share of
    completions using the forward strategy is logged as ``forward_share``, and per problem type
    as ``forward_share/evaluation`` and ``forward_share/inversion`` (selection is per type: the
    pooled share cannot tell "each type to its natural strategy" from "both types to one").
    """

    def verifier_reward(prompts, completions, problem, **kwargs) -> list[float]:
        rewards, by_type = [], {}
        for comp, pj in zip(completions, problem):
            text = comp if isinstance(comp, str) else comp[0]["content"]
            p = Problem.from_dict(json.loads(pj))
            rewards.append(completion_reward(p, text, kind))
            n_fwd = by_type.setdefault(p.type, [0, 0])
            n_fwd[0] += label(text) == "forward"
            n_fwd[1] += 1
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and completions:
            log_metric("forward_share", sum(f for f, _ in by_type.values()) / len(completions))
            for t, (f, n) in sorted(by_type.items()):
                log_metric(f"forward_share/{t}", f / n)
        return rewards

    verifier_reward.__name__ = f"verifier_{kind}"
    return verifier_reward
