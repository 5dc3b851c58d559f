"""The verdict: did RL change the routing (selection), the execution (improvement), both, or neither?

It is decided in the behaviour's units. The behaviour stage splits the accuracy change into a
selection and an improvement term (accuracy units, 95% bootstrap CIs over problems;
:mod:`probes.behaviour.decompose`); cross-model patching measures how much of each term the post-RL
residual stream carries into the pre-RL model at the score site (the *recovery*, a fraction of the
term; :mod:`probes.patching.mechanistic`): the prompt positions for selection, the trace positions
for improvement.

**The rule** (:class:`VerdictRule`; thresholds fixed before any pair was measured with it)::

    a term counts  <=>  its behavioural CI excludes 0 by the minimum effect
                            (CI_lo > +min_effect  or  CI_hi < -min_effect)        [0.02 accuracy]
                        and its recovery at the score site has CI_lo > recovery_threshold [0.5]
    label = "both" | "selection" | "improvement" | "neither"
    regressions: every behavioural term (delta, selection, improvement) with CI_hi < -min_effect is
                 stated beside the label, whether or not it counts

Why these numbers:

- ``min_effect = 0.02`` (two accuracy points per problem on average). It is the smallest change a
  reader comparing accuracies could see at all: the sampled accuracy of a held-out set of 400-1000
  problems, which is what a reader compares, has a standard error of 0.015-0.025, so a smaller
  change would not show in any accuracy table, however significant the exact decomposition finds it.
  It was set from that argument, not from the pairs it is applied to.
- ``recovery_threshold = 0.5``: the patch must carry the majority of the term (the threshold the
  nats-based rule used before; unchanged).

A term can count with either sign: a label names the mechanism through which RL changed accuracy,
and the regression statements say where accuracy was lost, so no label hides a loss (e.g.
``both`` with "execution degraded: improvement -0.070 [-0.084, -0.057]").

**What the rule cannot see.** A change carried by weights downstream of the score site (at the
default site, the last block's output: the final norm and the unembedding) is transferred by no
activation patch, so its recovery stays below 1 however the behaviour moved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

LABELS: tuple[str, ...] = ("selection", "improvement", "both", "neither")
TERMS: tuple[str, ...] = ("selection", "improvement")
REGRESSION_WORDS: dict[str, str] = {
    "delta": "accuracy fell",
    "selection": "routing moved towards the worse strategy",
    "improvement": "execution degraded",
}
"""How each significantly negative behavioural term is stated."""


@dataclass(frozen=True)
class VerdictRule:
    """Thresholds of the verdict (see the module docstring for the reasons).

    Attributes:
        recovery_threshold: the lower CI bound a recovery must exceed (fraction of the term).
        min_effect: the margin (accuracy units) by which a behavioural term's CI must exclude 0.
    """

    recovery_threshold: float = 0.5
    min_effect: float = 0.02

    def __post_init__(self) -> None:
        for name in ("recovery_threshold", "min_effect"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v != v or v < 0:
                raise ValueError(f"VerdictRule.{name} must be a non-negative number, got {v!r}")


def signed(x: float) -> str:
    """``x`` to 3 decimals with its sign, and no ``-0.000`` (a value that rounds to 0 is ``+0.000``)."""
    return f"{round(x, 3) + 0.0:+.3f}"


def _fmt(mean: float, ci) -> str:
    """``+m [+lo, +hi]`` to 3 decimals (the one format of a value with its CI in words)."""
    return signed(mean) + (f" [{signed(ci[0])}, {signed(ci[1])}]" if ci else "")


def judge_term(term: str, behaviour: dict, recovery: dict | None, rule: VerdictRule) -> dict[str, Any]:
    """Whether one term counts, and why not.

    Args:
        term: ``"selection"`` or ``"improvement"``.
        behaviour: ``{"mean", "ci"}`` of the behavioural term (accuracy units).
        recovery: :meth:`probes.patching.mechanistic.TermRecovery.to_dict` at the score site, or None
            when patching did not run.
        rule: the thresholds.

    Returns:
        ``{"counts", "why_not", "behaviour", "recovery", "sign", "recovery_read"}`` (JSON-able;
        ``recovery_read`` is False when the behavioural term is too small for its recovery to mean
        anything, or the recovery is undefined).
    """
    why: list[str] = []
    mean, ci = behaviour["mean"], behaviour.get("ci")
    m = rule.min_effect
    sign = 0
    if ci is None:
        why.append(f"the behavioural {term} term has no confidence interval")
    elif ci[0] > m:
        sign = 1
    elif ci[1] < -m:
        sign = -1
    else:
        why.append(f"the behavioural {term} term {_fmt(mean, ci)} does not exclude 0 by the minimum effect {m}, "
                   "so its recovery (a ratio to a term this small) is not read")
        return {"counts": False, "why_not": why, "behaviour": {"mean": mean, "ci": ci}, "recovery": recovery,
                "sign": 0, "recovery_read": False}
    if recovery is None:
        why.append("no patching result")
    elif recovery.get("value") is None:
        why.append(f"the recovery is undefined: {recovery.get('reason')}")
    elif recovery.get("ci") is None:
        why.append("the recovery has no confidence interval")
    elif not recovery["ci"][0] > rule.recovery_threshold:
        why.append(f"the recovery {_fmt(recovery['value'], recovery['ci'])} has its CI lower bound not above "
                   f"{rule.recovery_threshold}")
    return {"counts": not why, "why_not": why, "behaviour": {"mean": mean, "ci": ci}, "recovery": recovery,
            "sign": sign, "recovery_read": recovery is not None and recovery.get("value") is not None}


def regressions(behaviour: dict[str, dict], rule: VerdictRule) -> list[dict[str, Any]]:
    """The behavioural terms whose CI lies below ``-min_effect``: ``[{"term", "mean", "ci", "text"}]``
    in the order delta, selection, improvement."""
    out = []
    for term in ("delta", "selection", "improvement"):
        node = behaviour.get(term)
        if not node or node.get("ci") is None:
            continue
        if node["ci"][1] < -rule.min_effect:
            out.append({"term": term, "mean": node["mean"], "ci": list(node["ci"]),
                        "text": f"{REGRESSION_WORDS[term]}: {term} {_fmt(node['mean'], node['ci'])}"})
    return out


def decide(behaviour: dict[str, dict], recoveries: dict[str, dict | None], rule: VerdictRule = VerdictRule()
           ) -> dict[str, Any]:
    """The label, the evidence, and the regressions.

    Args:
        behaviour: ``{"delta"|"selection"|"improvement": {"mean", "ci"}}``, the behavioural terms
            (accuracy units, 95% CIs over problems).
        recoveries: ``{"selection"|"improvement": TermRecovery dict at the score site or None}``.
        rule: the thresholds.

    Returns:
        ``{"label", "selection": judge_term(...), "improvement": ..., "regressions": [...],
        "statement", "rule": {...}, "rule_text"}`` (JSON-able; ``statement`` is the label with the
        regressions in one line).
    """
    judged = {t: judge_term(t, behaviour[t], recoveries.get(t), rule) for t in TERMS}
    s_ok, i_ok = judged["selection"]["counts"], judged["improvement"]["counts"]
    label = "both" if s_ok and i_ok else "selection" if s_ok else "improvement" if i_ok else "neither"
    regs = regressions(behaviour, rule)
    statement = label + "".join(f"; {r['text']}" for r in regs)
    return {"label": label, **judged, "regressions": regs, "statement": statement, "rule": asdict(rule),
            "rule_text": RULE_TEXT.format(**asdict(rule))}


def score_judgement(results: dict, kind: str) -> tuple[bool | None, str]:
    """Whether the ``kind`` (``"selection"`` or ``"improvement"``) term of a run's ``results.json``
    counts under the rule (None when the run has no verdict evidence for it), and why not: the
    failed conditions joined by ``"; "``, else ``""``."""
    node = (results.get("verdict") or {}).get(kind) or {}
    if "counts" not in node:
        return None, (results.get("verdict") or {}).get(f"{kind}_score_undefined_reason") or ""
    return node["counts"], "; ".join(node.get("why_not") or [])


RULE_TEXT = (
    "a term (selection, improvement) counts if its behavioural 95% CI excludes 0 by the minimum effect "
    "{min_effect} (accuracy) and its recovery (the mechanistic term measured by patching the post-RL model's "
    "residual stream into the pre-RL model at the score site, over the behavioural term; prompt positions for "
    "selection, trace positions for improvement) has a 95% CI lower bound above {recovery_threshold}; label: both, "
    "selection, improvement or neither; every behavioural term whose CI lies below -{min_effect} is stated as a "
    "regression beside the label"
)
"""The rule in one sentence (written into results with the thresholds filled in)."""
