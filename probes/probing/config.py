"""The settings of a probe sweep: one validated config object (data, no heavy imports)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))
"""The default grid of inverse L2 strengths ``C`` (sklearn's convention; 1e-4 ... 1e2)."""
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 4, 7))
"""The default grid of ridge strengths ``alpha``."""
DEFAULT_STEER_ALPHAS: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
"""Default steering doses, in multiples of the difference of means ``mu_F - mu_B``."""


class ConfigError(ValueError):
    """A probe configuration value that is not allowed; the message names the field."""


@dataclass
class ProbeConfig:
    """Settings of a probe sweep (validated on construction).

    Attributes:
        Cs: logistic inverse L2 strengths (grid for inner CV). alphas: ridge strengths.
        n_splits: inner CV folds. test_size: fraction of chains held out for testing.
        n_boot: bootstrap draws for CIs. level: CI coverage.
        seed: seed of the split, folds, controls and bootstrap.
        tol, max_iter: solver tolerance and iteration cap.
        controls: fit the control task and the shuffled-label null.
        baselines: fit the majority, type and surface baselines.
    """

    Cs: tuple[float, ...] = DEFAULT_CS
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    n_splits: int = 5
    test_size: float = 0.25
    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    tol: float = 1e-4
    max_iter: int = 1000
    controls: bool = True
    baselines: bool = True

    def __post_init__(self):
        self.Cs = tuple(float(c) for c in self.Cs)
        self.alphas = tuple(float(a) for a in self.alphas)
        checks = [
            ("Cs", len(self.Cs) > 0 and all(c > 0 for c in self.Cs), "a non-empty list of positive numbers"),
            ("alphas", len(self.alphas) > 0 and all(a > 0 for a in self.alphas), "a non-empty list of positive numbers"),
            ("n_splits", self.n_splits >= 2, "an integer >= 2"),
            ("test_size", 0 < self.test_size < 1, "a fraction in (0, 1)"),
            ("n_boot", self.n_boot >= 10, "an integer >= 10"),
            ("level", 0 < self.level < 1, "a fraction in (0, 1)"),
            ("tol", self.tol > 0, "a positive number"),
            ("max_iter", self.max_iter >= 1, "an integer >= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"probe config field {name!r} = {getattr(self, name)!r}: use {allowed}")

    def to_dict(self) -> dict:
        return asdict(self)
