"""The verdict rule, in the behaviour's units."""

from __future__ import annotations

import json

import pytest

from probes.patching.verdict import VerdictRule, decide, regressions

pytestmark = pytest.mark.unit


def _beh(sel, imp, width=0.01):
    return {"delta": {"mean": sel + imp, "ci": [sel + imp - 2 * width, sel + imp + 2 * width]},
            "selection": {"mean": sel, "ci": [sel - width, sel + width]},
            "improvement": {"mean": imp, "ci": [imp - width, imp + width]}}


def _rec(value, width=0.05):
    if value is None:
        return {"value": None, "ci": None, "reason": "the behavioural term is 0: nothing to recover"}
    return {"value": value, "ci": [value - width, value + width], "reason": None}


@pytest.mark.parametrize("sel,imp,rs,ri,label", [
    (0.10, 0.00, 0.95, None, "selection"),
    (0.00, 0.08, None, 0.90, "improvement"),
    (0.10, 0.08, 0.95, 0.90, "both"),
    (0.00, 0.00, None, None, "neither"),
    (0.015, 0.012, 1.0, 1.0, "neither"),   # changes below the minimum effect do not count
    (0.10, 0.08, 0.20, 0.10, "neither"),   # large changes the patched positions do not carry
    (0.10, -0.08, 0.95, 0.90, "both"),     # a loss carried by the trace positions counts, and is stated
])
def test_the_label_follows_the_documented_rule(sel, imp, rs, ri, label):
    v = decide(_beh(sel, imp), {"selection": _rec(rs), "improvement": _rec(ri)})
    assert v["label"] == label
    assert v["selection"]["counts"] == (label in ("selection", "both"))
    assert v["improvement"]["counts"] == (label in ("improvement", "both"))
    assert all(isinstance(w, str) and w for w in v["selection"]["why_not"] + v["improvement"]["why_not"])
    json.dumps(v, allow_nan=False)


def test_an_execution_loss_is_stated_beside_a_selection_label():
    v = decide(_beh(0.30, -0.652, width=0.03), {"selection": _rec(0.9), "improvement": _rec(0.2)})
    assert v["label"] == "selection"
    texts = [r["text"] for r in v["regressions"]]
    assert "execution degraded: improvement -0.652 [-0.682, -0.622]" in texts
    assert v["statement"].startswith("selection; ") and "execution degraded" in v["statement"]


def test_no_regression_within_the_minimum_effect():
    assert regressions(_beh(0.0, -0.015, width=0.004), VerdictRule()) == []
    assert [r["term"] for r in regressions(_beh(0.0, -0.03, width=0.004), VerdictRule())] == ["delta", "improvement"]


def test_undefined_recoveries_say_why():
    v = decide(_beh(0.10, 0.05), {"selection": _rec(None), "improvement": None})
    assert v["label"] == "neither" and v["regressions"] == []
    assert any("undefined" in w for w in v["selection"]["why_not"])
    assert any("no patching result" in w for w in v["improvement"]["why_not"])


def test_the_recovery_of_a_term_within_the_minimum_effect_is_not_read():
    v = decide(_beh(0.0, 0.0, width=0.0), {"selection": _rec(None), "improvement": _rec(0.9)})
    assert v["label"] == "neither"
    for t in ("selection", "improvement"):
        assert not v[t]["recovery_read"] and len(v[t]["why_not"]) == 1 and "is not read" in v[t]["why_not"][0]


def test_thresholds_are_part_of_the_rule():
    beh, rec = _beh(0.10, 0.0), {"selection": _rec(0.8), "improvement": _rec(None)}
    assert decide(beh, rec)["label"] == "selection"
    assert decide(beh, rec, VerdictRule(recovery_threshold=0.9))["label"] == "neither"
    assert decide(beh, rec, VerdictRule(min_effect=0.2))["label"] == "neither"
    assert "0.9" in decide(beh, rec, VerdictRule(recovery_threshold=0.9))["rule_text"]


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="min_effect"):
        VerdictRule(min_effect=-1.0)
