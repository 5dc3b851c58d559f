"""The headline probe: the model's own strategy propensity *within* a problem type, at every
prompt position and layer, against the baselines that know only the prompt's surface.

Why within type: each problem type has a natural strategy, so a probe of the greedy strategy of a
model that follows it reads the type, a format feature (arXiv 2606.02907), and scores 1.00 on a
type baseline of 1.00. What the type does not tell is how strongly the model leans to one
strategy on *this* problem. That is the target here.

- **Target** ``y``: the log-odds of forward over backward at the first response token,
  ``logit(F) - logit(B)`` (nats; the behaviour stage's exact ``logit_diff``, no sampling). Its
  type part is removed with the *training* rows' mean of each type: ``y_w = y - m_type``.
- **Predictors** (ridge regression of ``y_w``, the strength chosen by grouped CV on the training
  rows, :func:`ridge_cv`): the probe, on the residual stream at one (position, layer); and the
  surface baselines (:func:`surface_designs`): the task's categorical surface features (its
  ``surface_features``; the finite-field task: type x field and type x chain length), the prompt's
  tokens (bag of words and word-at-position, :class:`~probes.probing.surface.SurfaceFeatures`),
  and all three together.
- **Score**: within-type R^2 on the held-out chains, ``1 - sum (y - m_type - yhat_w)^2 /
  sum (y - ybar_type)^2`` with ``ybar_type`` the held-out rows' type means (dimensionless; the
  type alone scores about 0, a perfect predictor 1), with a cluster-bootstrap 95% CI over the
  held-out chains; every predictor shares the draws, so differences are paired.
- **Samples**: the strategies the model drew at temperature 1 on each held-out problem, scored by
  within-type AUROC (only pairs of a forward and a backward sample of the same type are
  compared) of each predictor's ``m_type + yhat_w``, against the **Bayes ceiling**: the model's
  own ``y`` as the score (no predictor of a sample beats the probability it was drawn from).
- **Informative**: at the layer chosen by CV on the training rows (prompt end), the probe's
  within-type R^2 exceeds that of the *best* surface baseline (the highest held-out value, a choice
  that favours the baseline) and the paired 95% CI of the difference lies above 0. The rule is
  fixed here, before any pair is looked at.
- **Where it forms**: the same probe at each (position, layer) of the map; a cell is
  *decodable* when its difference to the best surface baseline has a CI above 0; the earliest
  cell is the first decodable one in prompt order, then layer order.

Sources: Hewitt and Liang 2019 (arXiv 1909.03368: a probe means something only against
controls); arXiv 2606.02907 (reasoning-type probes that read the format); Hastie, Tibshirani and
Friedman, *The Elements of Statistical Learning* (2009), sec. 3.4.1 (ridge through the
eigendecomposition, every strength from one factorisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from probes.bootstrap import percentile_ci, resample_counts
from probes.probing.metrics import auroc_parts

SURFACE_BASELINES: tuple[str, ...] = ("prompt tokens", "all surface")
"""The baselines that see only the prompt besides the task's own surface features (see the module
docstring)."""
REL_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-5, 1, 7))
"""Ridge strengths relative to the mean eigenvalue of each fit's Gram matrix (scale-free, so one
grid serves a 256-wide organism and a 1536-wide Qwen)."""
LEVEL = 0.95


@dataclass
class RidgeFit:
    """:func:`ridge_cv` for ``S`` feature sets.

    Attributes:
        pred: ``[S, n_test]`` predictions on the test rows (target units).
        alpha: ``[S]`` the chosen relative strength. cv_mse: ``[S]`` its mean fold MSE.
    """

    pred: np.ndarray
    alpha: np.ndarray
    cv_mse: np.ndarray


def _ridge_predict(Xtr: torch.Tensor, ytr: torch.Tensor, Xev: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """``[S, A, k]`` ridge predictions (intercept unpenalised) of ``Xev [S, k, d]`` from fits on
    ``Xtr [S, m, d]``, ``ytr [m]``, one per relative strength, from one eigendecomposition per set
    (of ``X X^T`` when ``m <= d``, else of ``X^T X``)."""
    mu = Xtr.mean(1, keepdim=True)
    Xc, Xe = Xtr - mu, Xev - mu
    ym = ytr.mean()
    yc = ytr - ym
    m, d = Xc.shape[1], Xc.shape[2]
    if m <= d:
        lam, Q = torch.linalg.eigh(Xc @ Xc.transpose(1, 2))
        A = (Xe @ Xc.transpose(1, 2)) @ Q  # [S, k, m]
        b = (Q * yc[None, :, None]).sum(1)  # [S, m]
    else:
        lam, V = torch.linalg.eigh(Xc.transpose(1, 2) @ Xc)
        A = Xe @ V  # [S, k, d]
        b = ((Xc * yc[None, :, None]).sum(1)[:, None, :] @ V)[:, 0]  # [S, d]
    lam = lam.clamp_min(0)
    scale = lam.mean(-1, keepdim=True).clamp_min(1e-12)  # [S, 1]
    a = torch.as_tensor(alphas, dtype=lam.dtype)[None, :, None] * scale[:, :, None]  # [S, A, 1]
    coef = b[:, None, :] / (lam[:, None, :] + a)  # [S, A, r]
    return torch.einsum("skr,sar->sak", A, coef) + ym


def ridge_cv(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
             folds: Sequence[tuple[np.ndarray, np.ndarray]], alphas: Sequence[float] = REL_ALPHAS) -> RidgeFit:
    """Ridge regression of ``y`` on each of ``S`` feature sets, the strength chosen per set by the
    total squared error over ``folds``, refitted on ``train`` and evaluated on ``test``.

    Args:
        X: ``[S, n, d]`` features (activations of ``S`` (position, layer) cells, or one surface
            design). y: ``[n]`` target. train, test: row indices. folds: ``(fit rows, validation
            rows)`` pairs of row indices (within ``train``). alphas: relative strengths
            (:data:`REL_ALPHAS`).

    Returns:
        :class:`RidgeFit`.

    Raises:
        ValueError: ``X`` not 3-D or ``y`` of another length, or no folds.
    """
    X = np.asarray(X)
    if X.ndim != 3 or X.shape[1] != len(y):
        raise ValueError(f"X must be [sets, rows, features] with {len(y)} rows, got {X.shape}")
    if not folds:
        raise ValueError("no folds given")
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
    sse = torch.zeros(X.shape[0], len(alphas), dtype=torch.float64)
    for fit, val in folds:
        fit, val = torch.from_numpy(np.asarray(fit)), torch.from_numpy(np.asarray(val))
        p = _ridge_predict(Xt[:, fit], yt[fit], Xt[:, val], alphas)
        sse += ((p - yt[val][None, None, :]) ** 2).sum(-1).double()
    best = sse.argmin(1)  # the first (weakest... in the given order) minimum on ties
    tr, te = torch.from_numpy(np.asarray(train)), torch.from_numpy(np.asarray(test))
    p = _ridge_predict(Xt[:, tr], yt[tr], Xt[:, te], alphas)
    pred = p[torch.arange(X.shape[0]), best].double().numpy()
    n_val = sum(len(v) for _, v in folds)
    return RidgeFit(pred=pred, alpha=np.asarray(alphas)[best.numpy()],
                    cv_mse=(sse[torch.arange(X.shape[0]), best] / max(n_val, 1)).numpy())


def within_type_r2(W: np.ndarray, y: np.ndarray, pred: np.ndarray, types: np.ndarray) -> np.ndarray:
    """``[B, S]`` within-type R^2 of predictions ``pred [S, n]`` of ``y [n]`` under row weights
    ``W [B, n]`` (bootstrap multiplicities; a row of ones for the point value). NaN where the
    weighted rows have no within-type variance."""
    sse = W @ ((y[None, :] - pred) ** 2).T  # [B, S]
    ss = np.zeros(W.shape[0])
    for t in np.unique(types):
        m = types == t
        sw = W[:, m].sum(1)
        mean = (W[:, m] @ y[m]) / np.maximum(sw, 1e-12)
        ss += W[:, m] @ (y[m] ** 2) - sw * mean**2
    ss = ss[:, None]
    return np.where(ss > 1e-12 * max(float(np.mean(y**2)), 1e-300), 1 - sse / np.maximum(ss, 1e-300), np.nan)


def within_type_auroc(W: np.ndarray, lab: np.ndarray, score: np.ndarray, types: np.ndarray) -> np.ndarray:
    """``[B]`` AUROC of ``score`` for sample labels ``lab`` (1 forward, 0 backward), comparing
    only pairs of the same type; NaN without such a pair."""
    num = np.zeros(W.shape[0])
    den = np.zeros(W.shape[0])
    for t in np.unique(types):
        m = types == t
        if len(np.unique(lab[m])) < 2:
            continue
        a, b = auroc_parts(W[:, m], lab[m], score[m])
        num += a
        den += b
    return np.where(den > 0, num / np.maximum(den, 1e-12), np.nan)


def _score(point: float, draws: np.ndarray, level: float = LEVEL) -> dict:
    if not np.isfinite(point):
        return {"value": None, "ci": None}
    return {"value": float(point), "ci": percentile_ci(draws, level)}


def surface_designs(problems: Sequence, rows_train: np.ndarray) -> dict[str, np.ndarray]:
    """The surface baselines' ``[n, p]`` design matrices, in order: one per categorical surface
    feature of the current task (``surface_features``, one-hot), ``prompt tokens`` and ``all
    surface`` (every column), each vocabulary fitted on the training rows (a value unseen there is
    all zeros)."""
    from sklearn.feature_extraction import DictVectorizer

    from probes.probing.surface import prompt_features
    from probes.tasks import current_task

    def onehot(feats: list[dict]) -> np.ndarray:
        v = DictVectorizer(sparse=False).fit([feats[i] for i in rows_train])
        return v.transform(feats)

    task = current_task()
    per = [task.surface_features(p) for p in problems]
    out = {name: onehot([{str(f[name]): 1.0} for f in per]) for name in (per[0] if per else {})}
    out["prompt tokens"] = onehot([{**prompt_features([p.prompt])[0], f"type={p.type}": 1.0} for p in problems])
    out["all surface"] = np.concatenate(list(out.values()), axis=1)
    return out


def propensity_map(
    X: np.ndarray,
    positions: Sequence[str],
    layers: Sequence[int],
    problems: Sequence,
    y: np.ndarray,
    groups: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    headline_position: str = "prompt_end",
    samples: Sequence[Sequence[str] | None] | None = None,
    position_names: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """Within-type propensity probes at every (position, layer), the surface baselines, the
    headline at ``headline_position`` and the samples' AUROC (see the module docstring).

    Args:
        X: ``[P, L, n, d]`` activations (positions x layers x problems x d_model), rows aligned
            with ``problems``. positions: ``P`` position labels (``prompt_end``, ``word:i``) in
            prompt order. layers: ``L`` layer indices.
        problems: ``n`` task problems (:class:`probes.tasks.TaskProblem`: type, prompt, and the
            task's surface features).
        y: ``[n]`` the model's ``logit(F) - logit(B)`` (nats; NaN where unknown: such rows are
            dropped from train and test). groups: ``[n]`` chain ids.
        train, test: row indices (disjoint chains). folds: grouped CV folds within ``train``.
        headline_position: the position whose layer curve is the headline.
        samples: per problem, the strategies of its temperature-1 samples (or None).
        position_names: readable names of position labels (for the report).
        n_boot, seed, level: the cluster bootstrap.

    Returns:
        A JSON-able dict: ``target``, ``units``, ``n_train``, ``n_test``, ``type_means``,
        ``positions``, ``position_names``, ``layers``, ``baselines`` (name -> ``{"r2"}``),
        ``best_surface``, ``map`` (``r2``, ``r2_ci``, ``diff``, ``diff_ci`` and ``decodable``,
        each ``[P][L]``), ``earliest`` (``{"position", "layer"}`` or None), ``curve`` (the
        headline position's per-layer ``r2``, ``diff``, ``alpha``, ``cv_mse``), ``headline``
        (``layer``, ``layer_chosen_by``, ``r2``, ``best_surface``, ``difference``,
        ``informative``, ``statement``) and ``samples`` (AUROC of the probe, the ceiling and the
        best surface baseline, or ``reason``). ``status`` is ``skipped`` with ``reason`` when the
        target has no within-type variance on the training rows.

    Raises:
        ValueError: shapes that do not agree, or ``headline_position`` not in ``positions``.
    """
    X = np.asarray(X)
    P, L, n = X.shape[:3]
    if len(positions) != P or len(layers) != L or len(problems) != n or len(y) != n or len(groups) != n:
        raise ValueError(f"X {X.shape} does not match {len(positions)} positions, {len(layers)} layers, "
                         f"{len(problems)} problems, {len(y)} targets, {len(groups)} groups")
    if headline_position not in positions:
        raise ValueError(f"headline position {headline_position!r} is not among {list(positions)}")
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    train, test = np.asarray(train)[ok[train]], np.asarray(test)[ok[test]]
    folds = [(np.asarray(a)[ok[a]], np.asarray(b)[ok[b]]) for a, b in folds]
    types = np.array([p.type for p in problems])
    names = dict(position_names or {})
    out: dict = {"target": "within-type propensity", "status": "ok",
                 "units": {"y": "logit(F) - logit(B) at the first response token (nats)",
                           "r2": "within-type R^2 on held-out chains (dimensionless)"},
                 "n_train": int(train.size), "n_test": int(test.size), "positions": list(positions),
                 "position_names": [names.get(p, p) for p in positions], "layers": [int(v) for v in layers],
                 "rule": "informative: the probe's within-type R^2 at the CV-chosen layer exceeds the best surface "
                         "baseline's, paired 95% CI of the difference above 0"}
    m_type = {t: float(y[train][types[train] == t].mean()) for t in np.unique(types[train])}
    out["type_means"] = m_type
    base = np.array([m_type.get(t, float(y[train].mean())) for t in types])
    yw = np.where(ok, y - base, 0.0)
    within_var = float(np.var(yw[train]))
    if not within_var > 1e-12 * max(float(np.mean(y[train] ** 2)), 1e-300):
        out.update(status="skipped", reason="the target is constant within each problem type on the training rows "
                   "(a function of the type alone): nothing is left for a probe to predict; not informative",
                   headline={"informative": False, "statement": "not informative: the propensity is a function of "
                             "the problem type alone (no within-type variance)"})
        return out
    W = np.vstack([np.ones((1, test.size)), resample_counts(test.size, n_boot=n_boot, seed=seed, groups=groups[test])])
    y_te, t_te = y[test], types[test]

    def r2(pred_w: np.ndarray) -> np.ndarray:  # [S, n_test] within-type predictions -> [1 + B, S]
        return within_type_r2(W, y_te, base[test][None, :] + pred_w, t_te)

    # surface baselines
    designs = surface_designs(problems, train)
    base_r2, base_pred = {}, {}
    for name in designs:
        f = ridge_cv(designs[name][None], yw, train, test, folds)
        base_pred[name] = f.pred[0]
        base_r2[name] = r2(f.pred)[:, 0]
    out["baselines"] = {"type": {"r2": _score(*_split(r2(np.zeros((1, test.size)))[:, 0]), level)}}
    out["baselines"].update({k: {"r2": _score(*_split(v), level)} for k, v in base_r2.items()})
    finite = {k: v[0] for k, v in base_r2.items() if np.isfinite(v[0])}
    best = max(finite, key=finite.get) if finite else next(iter(designs))
    out["best_surface"] = best
    out["best_surface_chosen_by"] = "highest held-out within-type R^2 (favours the baseline)"
    # the probe at every (position, layer)
    f = ridge_cv(X.reshape(P * L, n, -1), yw, train, test, folds)
    R = r2(f.pred)  # [1 + B, P*L]
    D = R - base_r2[best][:, None]
    ci = [percentile_ci(R[1:, s], level) for s in range(P * L)]
    dci = [percentile_ci(D[1:, s], level) for s in range(P * L)]
    dec = np.array([c is not None and c[0] > 0 for c in dci]).reshape(P, L)

    def grid(vals):
        return [[vals[p * L + j] for j in range(L)] for p in range(P)]

    out["map"] = {"r2": grid([None if not np.isfinite(v) else float(v) for v in R[0]]), "r2_ci": grid(ci),
                  "diff": grid([None if not np.isfinite(v) else float(v) for v in D[0]]), "diff_ci": grid(dci),
                  "decodable": dec.tolist(), "alpha": grid([float(a) for a in f.alpha])}
    cells = [(p, j) for p in range(P) for j in range(L) if dec[p, j]]
    out["earliest"] = ({"position": positions[cells[0][0]], "position_name": out["position_names"][cells[0][0]],
                        "layer": int(layers[cells[0][1]])} if cells else None)
    out["earliest_order"] = "prompt order of positions, then layer"
    h = list(positions).index(headline_position)
    sl = [h * L + j for j in range(L)]
    out["curve"] = {"position": headline_position, "layers": out["layers"],
                    "r2": [_score(R[0, s], R[1:, s], level) for s in sl],
                    "diff": [_score(D[0, s], D[1:, s], level) for s in sl],
                    "alpha": [float(f.alpha[s]) for s in sl], "cv_mse": [float(f.cv_mse[s]) for s in sl]}
    j = int(np.argmin(f.cv_mse[sl]))
    s = sl[j]
    r2h, diff = _score(R[0, s], R[1:, s], level), _score(D[0, s], D[1:, s], level)
    informative = bool(diff["ci"] is not None and diff["ci"][0] > 0)
    bs = out["baselines"][best]["r2"]
    where = f"{headline_position}, layer {int(layers[j])} (chosen by CV on the training rows)"
    if informative:
        stmt = (f"informative: at {where} the probe predicts the within-type propensity with R^2 "
                f"{_fmt(r2h)}, above the best surface baseline ({best}, {_fmt(bs)}) by {_fmt(diff)}")
    else:
        stmt = (f"not informative: at {where} the probe's within-type R^2 {_fmt(r2h)} does not exceed the best "
                f"surface baseline ({best}, {_fmt(bs)}) with a CI above 0 (difference {_fmt(diff)})")
    out["headline"] = {"position": headline_position, "layer": int(layers[j]),
                       "layer_chosen_by": "lowest CV mean squared error on the training rows",
                       "r2": r2h, "best_surface": best, "best_surface_r2": bs, "difference": diff,
                       "informative": informative, "statement": stmt}
    out["samples"] = _samples_auroc(samples, test, groups, types, y, base, f.pred[s], base_pred[best], best,
                                    n_boot, seed, level)
    return out


def _split(draws: np.ndarray) -> tuple[float, np.ndarray]:
    return float(draws[0]), draws[1:]


def _fmt(sc: dict) -> str:
    if sc.get("value") is None:
        return "undefined"
    ci = sc.get("ci")
    return f"{sc['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _samples_auroc(samples, test, groups, types, y, base, probe_w, surface_w, best, n_boot, seed, level) -> dict:
    if samples is None:
        return {"reason": "no samples in the behaviour rows"}
    rows, labs = [], []
    for k, i in enumerate(test):
        for s in samples[i] or []:
            if s in ("forward", "backward"):
                rows.append(k)
                labs.append(1 if s == "forward" else 0)
    if not rows:
        return {"reason": "no parseable samples on the held-out problems"}
    rows, labs = np.array(rows), np.array(labs)
    t = types[test][rows]
    W = np.vstack([np.ones((1, test.size)), resample_counts(test.size, n_boot=n_boot, seed=seed, groups=groups[test])])[:, rows]
    scores = {"probe": base[test][rows] + probe_w[rows], "ceiling": y[test][rows],
              "surface": base[test][rows] + surface_w[rows]}
    out = {"n_samples": int(rows.size), "n_forward": int(labs.sum()), "surface_baseline": best,
           "ceiling_is": "the model's own logit(F) - logit(B) as the score (the Bayes ceiling)"}
    aucs = {k: within_type_auroc(W, labs, v, t) for k, v in scores.items()}
    if not np.isfinite(aucs["ceiling"][0]):
        out["reason"] = ("no type has both a forward and a backward sample on the held-out problems: the within-type "
                         "AUROC is undefined")
        return out
    out["auroc"] = {k: _score(v[0], v[1:], level) for k, v in aucs.items()}
    out["probe_minus_ceiling"] = _score(aucs["probe"][0] - aucs["ceiling"][0], aucs["probe"][1:] - aucs["ceiling"][1:],
                                        level)
    return out
