"""The verdict rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probes.patching.cmap import cross_model_patching, execution_inputs, routing_inputs
from probes.patching.recovery import recovery
from probes.patching.verdict import VerdictRule, decide

from .conftest import N_LAYERS

RNG = np.random.default_rng(0)


def _score(gap: float, frac: float, n: int = 20, noise: float = 0.05):
    rec = RNG.normal(size=n)
    don = rec + gap + RNG.normal(0, noise * max(gap, 1e-9), size=n) if gap else rec.copy()
    return recovery(rec + frac * (don - rec), rec, don, n_boot=300)


@pytest.mark.parametrize("s_gap,s_frac,i_gap,i_frac,label", [
    (2.0, 1.0, 0.0, 1.0, "selection"),
    (0.0, 1.0, 0.5, 1.0, "improvement"),
    (2.0, 1.0, 0.5, 0.9, "both"),
    (0.0, 1.0, 0.0, 1.0, "neither"),
    (0.1, 1.0, 0.01, 1.0, "neither"),   # changes too small to matter
    (2.0, 0.2, 0.5, 0.1, "neither"),    # large changes the patched positions do not carry
])
def test_the_label_follows_the_documented_rule(s_gap, s_frac, i_gap, i_frac, label):
    v = decide(_score(s_gap, s_frac), _score(i_gap, i_frac))
    assert v["label"] == label
    assert v["selection"]["passes"] == (label in ("selection", "both"))
    assert v["improvement"]["passes"] == (label in ("improvement", "both"))
    assert all(isinstance(w, str) for w in v["selection"]["why_not"])
    json.dumps(v, allow_nan=False)


def test_an_execution_loss_is_not_an_improvement():
    assert decide(_score(0.0, 1.0), _score(-0.5, 1.0))["label"] == "neither"


def test_identical_models_give_neither(base, tok, problems):
    hook, layer = "hook_resid_post", N_LAYERS - 1
    batch, metric = routing_inputs(tok, problems)
    sel = cross_model_patching(base, base, batch, metric, [hook], "prompt", n_boot=50).at(hook, layer)
    eb, em, groups = execution_inputs(tok, problems, ["forward", "backward"])
    imp = cross_model_patching(base, base, eb, em, [hook], "response", groups=groups, n_boot=50).at(hook, layer)
    v = decide(sel, imp)
    assert v["label"] == "neither"
    assert "undefined" in v["selection"]["why_not"][0] and "undefined" in v["improvement"]["why_not"][0]


def test_thresholds_are_part_of_the_rule():
    s, i = _score(2.0, 0.8), _score(0.0, 1.0)
    assert decide(s, i)["label"] == "selection"
    assert decide(s, i, VerdictRule(recovery_threshold=0.9))["label"] == "neither"
    assert decide(s, i, VerdictRule(min_routing_gap=5.0))["label"] == "neither"
    assert "0.9" in decide(s, i, VerdictRule(recovery_threshold=0.9))["rule_text"]


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="min_routing_gap"):
        VerdictRule(min_routing_gap=-1.0)
