"""The probes pass scikit-learn's estimator checks (``parametrize_with_checks``).

Every public estimator class of :mod:`probes.probing.estimators` is checked, with its default
hyper-parameters (they are fast on the checks' small data sets); :class:`LogisticProbe` once per
solver, since binary targets take different code paths (``"batched"``: our solver; ``"sklearn"``:
``LogisticRegressionCV``, which the sweep uses), and :class:`DiffMeansProbe` with and without
its calibration. Checks that could not apply would be listed in ``EXPECTED_FAILED_CHECKS`` with
a reason, and run as strict xfails (so a check that starts passing must be taken off the list).
"""

from __future__ import annotations

import inspect

from sklearn.base import BaseEstimator
from sklearn.utils.estimator_checks import parametrize_with_checks

from probes.probing import estimators
from probes.probing.estimators import DiffMeansProbe, LogisticProbe, RidgeProbe
import pytest

pytestmark = pytest.mark.unit

ESTIMATORS = [
    LogisticProbe(solver="batched"),
    LogisticProbe(solver="sklearn"),
    DiffMeansProbe(),
    DiffMeansProbe(calibrate=False),
    RidgeProbe(),
]

EXPECTED_FAILED_CHECKS: dict[type, dict[str, str]] = {}
"""``{estimator class: {check name: why it cannot apply}}``; empty: every check passes."""


def expected_failed_checks(estimator) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS.get(type(estimator), {})


def test_every_public_estimator_class_is_checked():
    public = {cls for name, cls in inspect.getmembers(estimators, inspect.isclass)
              if issubclass(cls, BaseEstimator) and cls.__module__ == estimators.__name__
              and not name.startswith("_")}
    assert public == {type(e) for e in ESTIMATORS}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
