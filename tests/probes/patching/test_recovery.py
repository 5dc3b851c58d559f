"""Recovery normalisation and its bootstrap intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.patching.recovery import per_problem_recovery, recoveries, recovery

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(0)
REC = RNG.normal(size=12)
DON = REC + RNG.normal(1.0, 0.3, size=12)


def test_recovery_is_zero_for_the_unpatched_recipient_and_one_for_the_donor():
    r0, r1, rhalf = recoveries(np.stack([REC, DON, (REC + DON) / 2]), REC, DON, n_boot=200)
    assert r0.value == pytest.approx(0.0, abs=1e-12)
    assert r1.value == pytest.approx(1.0, abs=1e-12)
    assert rhalf.value == pytest.approx(0.5, abs=1e-12)
    assert r1.ci == pytest.approx((1.0, 1.0))


def test_recovery_is_undefined_with_a_reason_when_donor_equals_recipient():
    r = recovery(REC + 0.3, REC, REC.copy(), n_boot=100)
    assert r.value is None and r.ci is None and not r.defined
    assert "agree" in r.reason
    assert r.gap_abs == 0.0
    text = json.dumps(r.to_dict(), allow_nan=False)  # never NaN: strict JSON serialises it
    assert '"value": null' in text
    assert per_problem_recovery(REC + 0.3, REC, REC) == [None] * len(REC)


def test_gaps_below_the_tolerance_are_undefined_and_above_it_are_defined():
    assert recovery(REC, REC, REC + 5e-5, tol=1e-4, n_boot=50).value is None
    assert recovery(REC, REC, REC + 5e-4, tol=1e-4, n_boot=50).value == pytest.approx(0.0)


def test_gaps_of_opposite_sign_do_not_cancel():
    rec = np.array([0.0, 0.0, 0.0, 0.0])
    don = np.array([2.0, -2.0, 1.0, -1.0])  # the mean gap is 0, the mean |gap| is 1.5
    r = recovery(don, rec, don, n_boot=100)
    assert r.value == pytest.approx(1.0)
    assert r.gap_signed == pytest.approx(0.0) and r.gap_abs == pytest.approx(1.5)


def test_recovery_weights_each_problem_by_its_gap():
    rec, don = np.zeros(2), np.array([3.0, 1.0])
    patched = np.array([3.0, 0.0])  # problem 0 fully recovered, problem 1 not at all
    assert recovery(patched, rec, don, n_boot=50).value == pytest.approx(0.75)
    assert per_problem_recovery(patched, rec, don) == [1.0, 0.0]


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.01, 100) | st.floats(-100, -0.01), shift=st.floats(-50, 50), frac=st.floats(-1, 2))
def test_recovery_is_invariant_to_affine_changes_of_the_metric_unit(scale, shift, frac):
    patched = REC + frac * (DON - REC)
    base = recovery(patched, REC, DON, n_boot=50).value
    moved = recovery(scale * patched + shift, scale * REC + shift, scale * DON + shift, n_boot=50, tol=1e-9).value
    assert base == pytest.approx(frac, abs=1e-9)
    assert moved == pytest.approx(base, abs=1e-6)


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    noisy = REC + 0.6 * (DON - REC) + RNG.normal(0, 0.3, size=12)
    a = recovery(noisy, REC, DON, n_boot=500, seed=1)
    b = recovery(noisy, REC, DON, n_boot=500, seed=1)
    c = recovery(noisy, REC, DON, n_boot=500, seed=2)
    assert a.ci[0] < a.value < a.ci[1]
    assert a.ci == b.ci and a.ci != c.ci
    assert a.gap_abs_ci[0] <= a.gap_abs <= a.gap_abs_ci[1]


def test_recovery_rejects_nan_and_mismatched_shapes():
    with pytest.raises(ValueError, match="NaN"):
        recovery(np.array([math.nan, 0.0]), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="shape"):
        recovery(np.zeros(3), np.zeros(2), np.ones(2))
