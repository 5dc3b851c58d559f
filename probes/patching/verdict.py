"""The verdict: did RL change the routing (selection), the execution circuits (improvement),
both, or neither?

Two scores, each a :class:`~probes.patching.recovery.Recovery` with a bootstrap CI over problems:

- **selection score** ``S``: routing recovery of post-RL into pre-RL at the prompt positions
  (the post-RL model's activations at every prompt token, at the score site, written into the
  pre-RL model; metric: the strategy logit difference at the first response token, nats);
- **improvement score** ``I``: execution recovery of post-RL into pre-RL under forced strategies
  (teacher-forced correct traces of each strategy; the post-RL activations at every trace token
  at the score site written into the pre-RL model; metric: mean log-probability of the correct
  step results and answer, nats/token).

Each score comes with its *gap*, the size of what there is to recover: for selection the mean
``|LD_post - LD_pre|`` over problems (nats), for improvement the mean ``logp_post - logp_pre``
(nats/token; positive when post-RL executes better).

**The rule** (:class:`VerdictRule`, defaults in brackets)::

    selection   <=>  S is defined  and  CI_lo(S) > recovery_threshold [0.5]
                     and  CI_lo(routing gap)   > min_routing_gap   [0.5 nats]
    improvement <=>  I is defined  and  CI_lo(I) > recovery_threshold [0.5]
                     and  CI_lo(execution gap) > min_execution_gap [0.05 nats/token]
    label = "both" | "selection" | "improvement" | "neither"

The gap conditions ask that RL changed the behaviour by a material amount (a strategy odds ratio
of at least ``e^0.5 ~ 1.65`` on average; a gain of at least 0.05 nats per scored token), beyond
resampling noise; the recovery conditions ask that the change is carried by the patched positions
(the prompt for routing, the trace for execution) and is readable by the pre-RL model's remaining
layers. When the two models are identical both gaps are 0, both scores are undefined, and the
label is ``neither``.

**What the rule cannot see.** A change carried by weights *downstream* of the score site is
transferred by no activation patch: at the default site (the last block's output) that is the
final norm and the unembedding. RL that moves the strategy logits partly by moving the unembedding
rows of ``F`` and ``B`` therefore scores ``S < 1`` even when the whole change is routing, and the
label can be ``neither`` while the behavioural decomposition shows selection. The threshold stays
at the majority it was set to before any organism was patched; read ``S`` and the behavioural check
(the patch held during generation) beside the label, and lower ``recovery_threshold`` only as a
decision stated before looking at the pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from probes.patching.recovery import Recovery

LABELS: tuple[str, ...] = ("selection", "improvement", "both", "neither")


@dataclass(frozen=True)
class VerdictRule:
    """Thresholds of the verdict (see the module docstring).

    Attributes:
        recovery_threshold: the lower CI bound a score must exceed (fraction of the gap).
        min_routing_gap: the lower CI bound the mean ``|LD_post - LD_pre|`` must exceed (nats).
        min_execution_gap: the lower CI bound the mean ``logp_post - logp_pre`` must exceed
            (nats/token).
    """

    recovery_threshold: float = 0.5
    min_routing_gap: float = 0.5
    min_execution_gap: float = 0.05

    def __post_init__(self) -> None:
        for name in ("recovery_threshold", "min_routing_gap", "min_execution_gap"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v != v or v < 0:
                raise ValueError(f"VerdictRule.{name} must be a non-negative number, got {v!r}")


def _judge(score: Recovery, gap_ci: tuple[float, float] | None, gap: float, min_gap: float, threshold: float,
           gap_name: str, unit: str) -> tuple[bool, list[str]]:
    why: list[str] = []
    if score.value is None:
        why.append(f"the score is undefined: {score.reason}")
    elif score.ci is None:
        why.append("the score has no confidence interval")
    elif not score.ci[0] > threshold:
        why.append(f"CI lower bound of the recovery {score.ci[0]:.3f} is not above {threshold}")
    if gap_ci is None or not gap_ci[0] > min_gap:
        lo = "n/a" if gap_ci is None else f"{gap_ci[0]:.3f}"
        why.append(f"the {gap_name} {gap:.3f} {unit} (CI lower bound {lo}) is not above {min_gap} {unit}")
    return not why, why


def decide(selection: Recovery, improvement: Recovery, rule: VerdictRule = VerdictRule()) -> dict[str, Any]:
    """The label and its evidence.

    Args:
        selection: the selection score ``S`` (routing, post-RL into pre-RL, prompt positions).
        improvement: the improvement score ``I`` (execution, post-RL into pre-RL, forced strategies).
        rule: the thresholds.

    Returns:
        ``{"label", "selection": {"passes", "why_not", "score"}, "improvement": {...},
        "rule": {...thresholds}, "rule_text"}`` (JSON-able).
    """
    s_ok, s_why = _judge(selection, selection.gap_abs_ci, selection.gap_abs, rule.min_routing_gap,
                         rule.recovery_threshold, "routing gap mean |LD_post - LD_pre|", "nats")
    i_ok, i_why = _judge(improvement, improvement.gap_signed_ci, improvement.gap_signed, rule.min_execution_gap,
                         rule.recovery_threshold, "execution gap mean (logp_post - logp_pre)", "nats/token")
    label = "both" if s_ok and i_ok else "selection" if s_ok else "improvement" if i_ok else "neither"
    return {
        "label": label,
        "selection": {"passes": s_ok, "why_not": s_why, "score": selection.to_dict()},
        "improvement": {"passes": i_ok, "why_not": i_why, "score": improvement.to_dict()},
        "rule": asdict(rule),
        "rule_text": RULE_TEXT.format(**asdict(rule)),
    }


def score_judgement(results: dict, kind: str) -> tuple[bool | None, str]:
    """Whether the ``kind`` (``"selection"`` or ``"improvement"``) score of a run's ``results.json``
    passes the rule (None when the run has no patching verdict), and why not: the failed
    conditions joined by ``"; "``, else the reason the score is undefined, else ``""``."""
    node = ((results.get("patching") or {}).get("verdict") or {}).get(kind) or {}
    why = "; ".join(node.get("why_not") or []) or results["verdict"].get(f"{kind}_score_undefined_reason") or ""
    return node.get("passes"), why


RULE_TEXT = (
    "selection if the selection score (routing recovery, post-RL into pre-RL, prompt positions) is defined, "
    "its CI lower bound > {recovery_threshold} and the CI lower bound of the routing gap mean|LD_post - LD_pre| "
    "> {min_routing_gap} nats; improvement if the improvement score (execution recovery, post-RL into pre-RL, "
    "forced strategies) is defined, its CI lower bound > {recovery_threshold} and the CI lower bound of the "
    "execution gap mean(logp_post - logp_pre) > {min_execution_gap} nats/token; both if both; neither otherwise"
)
"""The rule in one sentence (written into results with the thresholds filled in)."""
