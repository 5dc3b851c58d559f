"""Synthetic activations with a planted linear signal, for tests and benchmarks.

Rows come in chains of ``twins`` rows (a problem and its twin share a chain, as
:attr:`probes.task.Problem.chain_id` does) whose activations share a chain component. The
residual-stream-like noise has a large mean, a power-law spectrum and a few axis-aligned
outlier dimensions (as real residual streams have). Layer ``l`` carries the binary label along
one random direction ``u_l``: the class means sit at ``+-strength[l]`` in Mahalanobis units of
the noise, so the Bayes accuracy of layer ``l`` is ``Phi(strength[l])`` (``Phi`` the standard
normal CDF), and a layer with strength 0 carries nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class PlantedData:
    """Attributes:
    X: ``[L, n, d]`` float32 activations.
    y: ``[n]`` int labels in {0, 1}.
    groups: ``[n]`` int chain ids (``twins`` consecutive rows share one).
    directions: ``[L, d]`` unit directions of the class-mean shift (what a difference of means
        estimates).
    weights: ``[L, d]`` unit Bayes-optimal weight directions (``Sigma^-1`` times the shift; what
        logistic regression estimates).
    strength: ``[L]`` half-distance between the class means, in Mahalanobis units.
    """

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    directions: np.ndarray
    weights: np.ndarray
    strength: np.ndarray


def planted_activations(
    n_rows: int,
    n_layers: int,
    d_model: int,
    strength: Sequence[float],
    *,
    seed: int = 0,
    twins: int = 2,
    n_outliers: int = 4,
    outlier_scale: float = 10.0,
    mean_scale: float = 2.0,
    chain_share: float = 0.3,
) -> PlantedData:
    """Draw planted-signal activations (see the module docstring).

    Args:
        n_rows: rows ``n`` (a multiple of ``twins`` is not required; the last chain may be short).
        n_layers: layers ``L``.
        d_model: width ``d``.
        strength: ``[L]`` half-distances between the class means in Mahalanobis units of the
            noise (``Phi(s)`` is the best accuracy reachable; 0 = no signal).
        seed: the random seed (same arguments, same arrays).
        twins: rows per chain.
        n_outliers: axis-aligned outlier dimensions (standard deviation ``outlier_scale``).
        mean_scale: size of the per-layer mean vector (per coordinate, in noise units).
        chain_share: fraction of the bulk noise variance shared by the rows of a chain.

    Raises:
        ValueError: ``len(strength) != n_layers`` or a non-positive size.
    """
    strength = np.asarray(strength, dtype=np.float64)
    if strength.shape != (n_layers,):
        raise ValueError(f"strength has {strength.size} values for {n_layers} layers")
    if min(n_rows, n_layers, d_model, twins) < 1:
        raise ValueError("n_rows, n_layers, d_model and twins must be >= 1")
    rng = np.random.default_rng(seed)
    groups = np.arange(n_rows) // twins
    n_groups = int(groups[-1]) + 1
    y = rng.integers(0, 2, n_rows)
    spec = (np.arange(1, d_model + 1, dtype=np.float64) ** -0.5)
    spec = spec / np.sqrt(np.mean(spec**2))
    spec[rng.permutation(d_model)[:n_outliers]] = outlier_scale
    X = np.empty((n_layers, n_rows, d_model), dtype=np.float32)
    dirs = np.empty((n_layers, d_model), dtype=np.float32)
    weights = np.empty((n_layers, d_model), dtype=np.float32)
    for layer in range(n_layers):
        perm = rng.permutation(d_model)
        s = spec[perm].astype(np.float32)
        shared = rng.standard_normal((n_groups, d_model), dtype=np.float32)
        own = rng.standard_normal((n_rows, d_model), dtype=np.float32)
        Xl = np.sqrt(chain_share, dtype=np.float32) * shared[groups]
        Xl += np.sqrt(1 - chain_share, dtype=np.float32) * own
        Xl *= s
        Xl += (mean_scale * rng.standard_normal(d_model)).astype(np.float32)
        v = rng.standard_normal(d_model)
        v /= np.linalg.norm(v)
        shift = s * v  # Mahalanobis length 1 under the noise covariance diag(s^2)
        Xl += np.outer((2 * y - 1) * strength[layer], shift).astype(np.float32)
        X[layer] = Xl
        dirs[layer] = shift / np.linalg.norm(shift)
        weights[layer] = (v / s) / np.linalg.norm(v / s)
    return PlantedData(X=X, y=y.astype(np.int64), groups=groups.astype(np.int64), directions=dirs,
                       weights=weights, strength=strength)
