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
    completions using the forward strategy is logged as ``forward_share``.
    """

    def verifier_reward(prompts, completions, problem, **kwargs) -> list[float]:
        rewards, fwd = [], 0
        for comp, pj in zip(completions, problem):
            text = comp if isinstance(comp, str) else comp[0]["content"]
            rewards.append(completion_reward(Problem.from_dict(json.loads(pj)), text, kind))
            fwd += label(text) == "forward"
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and completions:
            log_metric("forward_share", fwd / len(completions))
        return rewards

    verifier_reward.__name__ = f"verifier_{kind}"
    return verifier_reward
