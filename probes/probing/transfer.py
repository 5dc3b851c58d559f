"""Transfer of probes between the pre-RL and post-RL models.

A probe fitted on one model's activations is scored on the other model's activations of the
same held-out problems, against the *other* model's labels (its own greedy strategy): if RL
left the representation of the decision in place and only moved which way it falls, a pre-RL
probe still reads the post-RL decision. Per layer, the cosine between the two models' probe
directions (logistic weights and differences of means) says whether the direction itself
moved. Both probe sets must hold the same rows (stores aligned by
:func:`activations.store.align_rows`) and the two sweeps must share their test chains.
"""

from __future__ import annotations

import numpy as np

from probes.probing.metrics import classification_scores, paired_difference, strip_draws
from probes.probing.source import ProbeSet
from probes.probing.sweep import LayerProbes, ProbeConfig
from probes.probing.targets import Target


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``[L, d]`` arrays (``[L]``; NaN for a zero row)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / (na * nb)


def _score_on(fit: LayerProbes, ps: ProbeSet, target: Target, rows: np.ndarray, cfg: ProbeConfig) -> list[dict]:
    y, g = target.y[rows], ps.groups[rows]
    logits = np.einsum("lnd,ld->ln", ps.X[:, rows], fit.coef) + fit.intercept[:, None]
    return [classification_scores(y, (logits[j] > 0).astype(np.int64), logits[j], g, n_boot=cfg.n_boot,
                                  seed=cfg.seed, level=cfg.level, return_draws=True)
            for j in range(len(fit.layers))]


def probe_transfer(ps_a: ProbeSet, ps_b: ProbeSet, target_a: Target, target_b: Target, fit_a: LayerProbes,
                   fit_b: LayerProbes, config: ProbeConfig | None = None, names: tuple[str, str] = ("pre", "post")) -> dict:
    """Score each model's logistic probes on the other model's test rows; cosines per layer.

    Args:
        ps_a, ps_b: the two models' probe sets over the same rows in the same order.
        target_a, target_b: each model's own target (binary).
        fit_a, fit_b: :func:`~probes.probing.sweep.probe_layers` results of each model that
            share their test chains.
        config: for the bootstrap (``n_boot``, ``seed``, ``level``).
        names: labels of the two models in the output.

    Returns:
        ``{"status", "layers", "per_layer": [{"layer", "A_to_B": scores, "B_to_A": scores,
        "A_to_B_minus_B_own": paired accuracy gap, ..., "cosine_logistic", "cosine_diffmeans"}]}``
        with ``A``/``B`` replaced by ``names``. Scores are on the rows valid for both targets
        and in both test sets. A skipped side gives ``status = "skipped"`` and the reason.

    Raises:
        ValueError: the probe sets do not hold the same rows, or their layers differ.
    """
    cfg = config or ProbeConfig()
    a, b = names
    if ps_a.keys != ps_b.keys or ps_a.positions != ps_b.positions:
        raise ValueError("the two probe sets do not hold the same rows in the same order (align the stores first)")
    if ps_a.layers != ps_b.layers:
        raise ValueError(f"layers differ: {ps_a.layers} vs {ps_b.layers}")
    for name, fit in ((a, fit_a), (b, fit_b)):
        if fit.skipped or fit.coef is None:
            return {"status": "skipped", "reason": f"the {name} probe was skipped: "
                    f"{fit.summary.get('reason', 'no probe')}", "layers": list(ps_a.layers)}
    if target_a.kind != "binary" or target_b.kind != "binary":
        return {"status": "skipped", "reason": "transfer is scored for binary targets", "layers": list(ps_a.layers)}
    rows = np.intersect1d(fit_a.test_rows, fit_b.test_rows)
    rows = rows[target_a.valid[rows] & target_b.valid[rows]]
    if rows.size == 0 or len(np.unique(target_b.y[rows])) < 2 or len(np.unique(target_a.y[rows])) < 2:
        return {"status": "skipped", "reason": "no shared test rows with both classes for both models",
                "layers": list(ps_a.layers)}
    a_on_b = _score_on(fit_a, ps_b, target_b, rows, cfg)
    b_on_a = _score_on(fit_b, ps_a, target_a, rows, cfg)
    a_own = _score_on(fit_a, ps_a, target_a, rows, cfg)
    b_own = _score_on(fit_b, ps_b, target_b, rows, cfg)
    cos_l = cosine(fit_a.coef, fit_b.coef)
    cos_d = cosine(fit_a.difference, fit_b.difference) if fit_a.difference is not None and fit_b.difference is not None \
        else np.full(len(ps_a.layers), np.nan)
    per_layer = []
    for j, layer in enumerate(ps_a.layers):
        per_layer.append({
            "layer": int(layer),
            f"{a}_to_{b}": strip_draws(a_on_b[j]),
            f"{b}_to_{a}": strip_draws(b_on_a[j]),
            f"{a}_own": strip_draws(a_own[j]),
            f"{b}_own": strip_draws(b_own[j]),
            f"{a}_to_{b}_minus_{b}_own": paired_difference(a_on_b[j], b_own[j], "accuracy", cfg.level),
            f"{b}_to_{a}_minus_{a}_own": paired_difference(b_on_a[j], a_own[j], "accuracy", cfg.level),
            "cosine_logistic": None if not np.isfinite(cos_l[j]) else float(cos_l[j]),
            "cosine_diffmeans": None if not np.isfinite(cos_d[j]) else float(cos_d[j]),
        })
    return {"status": "ok", "names": [a, b], "n_rows": int(rows.size), "layers": list(ps_a.layers),
            "per_layer": per_layer}
