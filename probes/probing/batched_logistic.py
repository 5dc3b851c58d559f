"""Batched L2 logistic regression: every layer, fold and C of a probe sweep in one solver.

A probe sweep fits the same model, binary L2-penalised logistic regression, to each of ``L``
layers, each of ``F`` cross-validation folds and each of ``K`` inverse regularisation strengths
``C``. A loop of :class:`sklearn.linear_model.LogisticRegressionCV` does this as ``L * F * K``
separate L-BFGS runs, each of whose iterations is a matrix-*vector* product over ``X`` (bound by
memory bandwidth, not arithmetic). Here all ``L * F`` problems of one ``C`` advance together:

- **one problem per column.** The parameters of every (layer, fold) are the rows of one
  ``[L, F, d + 1]`` tensor, so each L-BFGS iteration is two batched matrix-*matrix* products
  (``W X^T`` and ``R X``, via :func:`torch.bmm`, in the orientation BLAS runs fastest) that
  read ``X`` once for all folds; a fold is a 0/1 row mask, so no fold's rows are ever copied.
- **exact reparametrisation by centring.** Each fold's problem is solved in the coordinates
  ``logit = w . (x - mu_f) + c`` with ``mu_f`` the fold's training mean and the unpenalised
  ``c = b + w . mu_f``. The objective is the same function of ``(w, b)`` (the intercept is not
  penalised), so the solution is the same, but the curvature is no longer dominated by the
  mean of the activations (residual streams have a large mean).
- **diagonal preconditioning** of L-BFGS (initial inverse Hessian ``gamma * diag(1 / (a * var_j
  + lambda))``, ``a`` the mean logistic weight ``sigma (1 - sigma)``), which absorbs axis-aligned
  outlier dimensions of the residual stream. This changes the path to the solution, never the
  solution.
- **exact line search for free.** Logits are linear in the step, so with ``q = X p`` computed
  once, the loss along the search direction is a 1-D function evaluated elementwise; a few
  safeguarded Newton steps find its minimum without another pass over ``X``.
- **warm starts along the C path** (small C first), as
  :func:`sklearn.linear_model.LogisticRegressionCV` does, and the final refit on all training
  rows starts from the mean of the folds' solutions at the chosen C, as sklearn's does.

The objective of each column is sklearn's (``LogisticRegression(C=C, class_weight=...)`` with
the default L2 penalty and an unpenalised intercept), scaled by ``1 / n_f``, with ``s_i`` the
sample weights (1, or the balanced class weights ``n / (2 n_class)``) and ``n_f = sum_i s_i``
over the fold's training rows::

    J(w, b) = sum_{i in fold} s_i [log(1 + exp(z_i)) - y_i z_i] / n_f + ||w||^2 / (2 C n_f),
    z_i = x_i . w + b,

and the stopping rule is sklearn's L-BFGS one, ``max_j |dJ/dtheta_j| <= tol``, taken in the
centred coordinates ``(w, c)`` (at the optimum both gradients vanish; away from it the centred
one does not scale with the mean of the activations, so the same ``tol`` asks for the same
accuracy of the fit whatever the offset of the residual stream). C is chosen per layer by the
mean fold score (balanced accuracy by default, or accuracy), the first best C on ties, as in sklearn.

Sources: Nocedal and Wright, *Numerical Optimization* (2006), ch. 7 (L-BFGS, two-loop
recursion with a scaled initial matrix); the probe protocol follows Hewitt and Liang 2019
(arXiv 1909.03368).

Example::

    >>> X = torch.randn(3, 200, 16)                      # [layers, rows, d_model]
    >>> y = (X[1, :, 0] > 0).float()                      # label planted in layer 1
    >>> folds = [(np.arange(100, 200), np.arange(100)), (np.arange(100), np.arange(100, 200))]
    >>> cv = fit_logistic_cv(X, y, folds, Cs=[0.01, 1.0])
    >>> cv.cv_scores.mean(-1).argmax(-1).shape           # doctest: +SKIP
    (3,)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

NEWTON_MAX_DIM = 512
"""The largest problem dimension ``min(d_model, rows)`` the ``"auto"`` solver fits by Newton's
method (its iteration costs ``rows * dim^2`` per fit; above this L-BFGS, ``rows * dim``, wins)."""

Fold = tuple[np.ndarray, np.ndarray]
"""``(train_rows, validation_rows)``: integer row indices into ``X``'s row axis."""


@dataclass
class LogisticCV:
    """The result of :func:`fit_logistic_cv` for ``L`` layers, ``F`` folds and ``K`` values of C.

    Attributes:
        Cs: ``[K]`` the grid, in the order given.
        cv_scores: ``[L, K, F]`` validation accuracy (fraction) of each layer, C and fold.
        best_index: ``[L]`` index into ``Cs`` of the chosen C (highest mean fold accuracy; the
            first such on ties).
        C: ``[L]`` the chosen C of each layer.
        coef: ``[L, d]`` weights refitted on all training rows at the chosen C.
        intercept: ``[L]`` intercepts of the refit.
        n_iter: ``[L, K, F]`` L-BFGS iterations of each fold fit; ``n_iter_refit``: ``[L]``.
        converged: True when every fit reached ``tol`` within ``max_iter``.
    """

    Cs: np.ndarray
    cv_scores: np.ndarray
    best_index: np.ndarray
    C: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    n_iter: np.ndarray
    n_iter_refit: np.ndarray
    converged: bool


class _Problems:
    """``L x F`` centred logistic problems sharing ``X`` (see the module docstring).

    Everything per column is laid out column-major, ``[L, F, ...]``: the two products per
    iteration are then ``W X^T`` and ``R X`` (``[L, F, d] x [L, d, n]`` and ``[L, F, n] x [L, n, d]``),
    which BLAS runs several times faster than the skinny ``X W`` / ``X^T R``.
    """

    def __init__(self, X: Tensor, y: Tensor, masks: Tensor, weights: Tensor | None = None):
        # X [L, n, d]; y [n]; masks [1 or L, F, n] 0/1 rows of each column's training set;
        # weights [n] sample weights (class weights; None: 1)
        self.X, self.y = X, y
        self.Xt = X.transpose(1, 2)  # a view
        self.M = masks.expand(X.shape[0], -1, -1)
        W = self.M if weights is None else self.M * weights[None, None, :]
        self.n_f = W.sum(2).clamp_min(1e-12)  # [L, F] the sum of weights (sklearn's sw_sum)
        self.Mn = W / self.n_f[:, :, None]  # row weights, sum to 1 per column
        self.mu = torch.bmm(self.Mn, X)  # [L, F, d] training mean per column
        var = X.var(dim=1) if X.shape[1] > 1 else torch.ones(X.shape[0], X.shape[2])
        self.var = var.to(X.dtype)[:, None, :]  # [L, 1, d], the preconditioner's scale
        self.d = X.shape[2]

    def logits(self, theta: Tensor) -> Tensor:
        """``[L, F, n]``: ``X w - mu . w + c`` for parameters ``[L, F, d + 1]``."""
        w, c = theta[..., : self.d], theta[..., self.d]
        return torch.bmm(w, self.Xt) + (c - (self.mu * w).sum(-1))[..., None]

    def grad(self, Z: Tensor, theta: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Gradient in centred coordinates ``[L, F, d + 1]``, its max-abs ``[L, F]`` and the
        mean logistic weight ``[L, F]``."""
        s = torch.sigmoid(Z)
        R = (s - self.y) * self.Mn
        RX = torch.bmm(R, self.X)  # [L, F, d]
        r1 = R.sum(-1)  # [L, F]
        w = theta[..., : self.d]
        g = torch.cat([RX - self.mu * r1[..., None] + lam[..., None] * w, r1[..., None]], dim=-1)
        gmax = g.abs().amax(-1)
        a = (s * (1 - s) * self.Mn).sum(-1)
        return g, gmax, a


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _line_search(Z, q, y, Mn, lam, wp, pp, ww, active, newton_steps: int = 6):
    """Step sizes ``[L, F]`` minimising the loss along ``p`` (safeguarded 1-D Newton from t = 1,
    bracketed by the sign of the slope), in float64; 0 for inactive columns or when no decrease
    is found. A step is accepted when the loss difference (summed termwise, so it does not
    cancel) is not positive, or when the slope there is still negative (the loss is convex, so
    it then decreased). ``Z``, ``q``, ``Mn``: ``[L, F, n]``."""
    Z, q, Mn = Z.double(), q.double(), Mn.double()
    lam, wp, pp = lam.double(), wp.double(), pp.double()
    yb = y.double()

    def slope_curv(t):
        zt = Z + t[..., None] * q
        s = torch.sigmoid(zt)
        d1 = ((s - yb) * q * Mn).sum(-1) + lam * (wp + t * pp)
        d2 = (s * (1 - s) * q * q * Mn).sum(-1) + lam * pp
        return d1, d2

    def decrease(t):
        tq = t[..., None] * q
        sp = torch.nn.functional.softplus
        return ((sp(Z + tq) - sp(Z) - yb * tq) * Mn).sum(-1) + 0.5 * lam * (2 * t * wp + t * t * pp)

    lo = torch.zeros_like(wp)
    hi = torch.full_like(wp, float("inf"))
    t = torch.ones_like(wp)
    for _ in range(newton_steps):
        d1, d2 = slope_curv(t)
        lo = torch.where(d1 < 0, t, lo)
        hi = torch.where(d1 >= 0, torch.minimum(hi, t), hi)
        step = t - d1 / d2.clamp_min(1e-300)
        bisect = torch.where(torch.isfinite(hi), 0.5 * (lo + hi), 2 * lo)
        ok = (step > lo) & (step < hi) & torch.isfinite(step)
        t = torch.clamp(torch.where(ok, step, bisect), max=1e3)
    d1, _ = slope_curv(t)
    dec = decrease(t)
    good = ((dec <= 0) | (d1 <= 0)) & torch.isfinite(dec) & active
    t = torch.where(good, t, torch.where(active & (lo > 0), lo, torch.zeros_like(t)))
    return t.float()


def _lbfgs(P: _Problems, lam: Tensor, theta: Tensor, tol: float, max_iter: int, history: int,
           refresh: int = 20) -> tuple[Tensor, Tensor, Tensor]:
    """Minimise every column; returns ``theta [L, F, d+1]``, logits ``[L, F, n]`` and iterations
    ``[L, F]``."""
    d = P.d
    lamc = lam  # [L, F]
    Z = P.logits(theta)
    g, gmax, a = P.grad(Z, theta, lamc)
    n_iter = torch.zeros_like(lamc, dtype=torch.int64)
    S: list[Tensor] = []
    Y: list[Tensor] = []
    rho: list[Tensor] = []
    for it in range(max_iter):
        active = gmax > tol
        if not bool(active.any()):
            break
        # two-loop recursion, preconditioned by gamma * diag(1 / (a var + lambda))
        qv = g.clone()
        alphas = []
        for s_i, y_i, r_i in zip(reversed(S), reversed(Y), reversed(rho)):
            al = r_i * _dot(s_i, qv)
            qv -= al[..., None] * y_i
            alphas.append(al)
        h = torch.cat([a[..., None] * P.var + lamc[..., None], a[..., None]], dim=-1).clamp_min(1e-12)
        if S:
            gamma = _dot(S[-1], Y[-1]) / _dot(Y[-1], Y[-1] / h).clamp_min(1e-30)
            gamma = torch.where(torch.isfinite(gamma) & (gamma > 0), gamma, torch.ones_like(gamma))
        else:
            gamma = torch.ones_like(lamc)
        r = gamma[..., None] * qv / h
        for s_i, y_i, r_i, al in zip(S, Y, rho, reversed(alphas)):
            be = r_i * _dot(y_i, r)
            r += s_i * (al - be)[..., None]
        p = -r * active[..., None]
        # the line search needs q = X p once; the loss along p is then elementwise
        q = P.logits(p)
        w, pw = theta[..., :d], p[..., :d]
        t = _line_search(Z, q, P.y, P.Mn, lamc, _dot(w, pw), _dot(pw, pw), _dot(w, w), active)
        step = t[..., None] * p
        theta = theta + step
        moved = t > 0
        n_iter += active.to(torch.int64)
        if (it + 1) % refresh == 0:
            Z = P.logits(theta)
        else:
            Z = Z + t[..., None] * q
        g_new, gmax, a = P.grad(Z, theta, lamc)
        yv = g_new - g
        sy = _dot(step, yv)
        ok = moved & (sy > 1e-10 * _dot(step, step).sqrt() * _dot(yv, yv).sqrt())
        stalled = active & ~moved
        if bool(stalled.any()):  # restart those columns' memory (steepest descent next)
            rho = [torch.where(stalled, torch.zeros_like(r_i), r_i) for r_i in rho]
        S.append(step)
        Y.append(yv)
        rho.append(torch.where(ok, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy)))
        if len(S) > history:
            S.pop(0), Y.pop(0), rho.pop(0)
        g = g_new
    return theta, P.logits(theta), n_iter


def _newton(P: _Problems, lam: Tensor, theta: Tensor, tol: float, max_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    """Minimise every column by Newton's method; same contract as :func:`_lbfgs`.

    Each iteration forms the exact Hessian of the active columns in the centred coordinates,
    ``[[sum_i a_i x~_i x~_i^T + lambda I, sum_i a_i x~_i], [., sum_i a_i]]`` with ``a_i = m_i
    sigma_i (1 - sigma_i)`` and ``x~ = x - mu_f`` (``[L, F, d+1, d+1]``, ``n d^2`` per column), solves
    for the step by Cholesky in float64 and takes it with the exact line search. The L2 term keeps
    the Hessian positive definite, also on separable labels, where the penalised optimum is still
    finite: Newton reaches ``tol`` there in a few steps where L-BFGS creeps along the flat valley of
    the logistic loss to ``max_iter`` (Nocedal and Wright 2006, ch. 3 and 6)."""
    d = P.d
    Z = P.logits(theta)
    n_iter = torch.zeros_like(lam, dtype=torch.int64)
    for _ in range(max_iter):
        g, gmax, _ = P.grad(Z, theta, lam)
        active = gmax > tol
        if not bool(active.any()):
            break
        li, fi = torch.nonzero(active, as_tuple=True)
        s = torch.sigmoid(Z[li, fi])
        a = s * (1 - s) * P.Mn[li, fi]  # [m, n]
        Xc = P.X[li] - P.mu[li, fi][:, None, :]  # [m, n, d]
        Xa = Xc * a[..., None]
        H = torch.zeros(li.numel(), d + 1, d + 1, dtype=torch.float64)
        H[:, :d, :d] = torch.bmm(Xa.transpose(1, 2), Xc).double()
        H[:, :d, :d].diagonal(dim1=1, dim2=2).add_(lam[li, fi].double()[:, None])
        hwc = Xa.sum(1).double()
        H[:, :d, d] = hwc
        H[:, d, :d] = hwc
        H[:, d, d] = a.sum(1).double().clamp_min(1e-12)
        gi = g[li, fi].double()
        chol, info = torch.linalg.cholesky_ex(H)
        if bool((info != 0).any()):  # float round-off on a nearly singular block: add a jitter
            jitter = 1e-8 * H.diagonal(dim1=1, dim2=2).abs().amax(-1).clamp_min(1e-12)
            chol, _ = torch.linalg.cholesky_ex(H + jitter[:, None, None] * torch.eye(d + 1, dtype=H.dtype))
        step_i = -torch.cholesky_solve(gi[..., None], chol)[..., 0]
        p = torch.zeros_like(theta)
        p[li, fi] = step_i.to(theta.dtype)
        q = P.logits(p)
        w, pw = theta[..., :d], p[..., :d]
        t = _line_search(Z, q, P.y, P.Mn, lam, _dot(w, pw), _dot(pw, pw), _dot(w, w), active)
        theta = theta + t[..., None] * p
        Z = Z + t[..., None] * q
        n_iter += active.to(torch.int64)
        if not bool((t[active] > 0).any()):  # no column can move any more: float precision
            break
    return theta, P.logits(theta), n_iter


def _as_tensor(X) -> Tensor:
    t = X if isinstance(X, Tensor) else torch.from_numpy(np.asarray(X))
    if t.dtype != torch.float32:
        t = t.float()
    return t


def fit_logistic_cv(
    X: Float[Tensor, "L n d"] | np.ndarray,
    y: Sequence[int] | np.ndarray | Tensor,
    folds: Sequence[Fold],
    Cs: Sequence[float],
    *,
    tol: float = 1e-4,
    max_iter: int = 1000,
    history: int = 10,
    refit: bool = True,
    progress: bool = False,
    class_weight: str | None = "balanced",
    scoring: str = "balanced_accuracy",
    solver: str = "auto",
) -> LogisticCV:
    """Fit L2 logistic regression to every layer and fold along a C path; choose C per layer by
    the mean fold score; refit each layer on all training rows at its C.

    Under class imbalance (after RL a strategy is often used 98% of the time) the defaults matter:
    with unweighted rows and C chosen by accuracy a 5% minority class is predicted never and the
    held-out balanced accuracy collapses to 0.5; ``class_weight="balanced"`` and
    ``scoring="balanced_accuracy"`` (sklearn's ``LogisticRegressionCV`` with the same arguments,
    which this matches) choose and fit for the metric the report headlines.

    Args:
        X: ``[L, n, d]`` activations (float32 is used; float64 input is converted).
        y: ``[n]`` binary labels in {0, 1} (rows used by no fold may hold any value).
        folds: ``F`` pairs ``(train_rows, validation_rows)`` of row indices into ``n``; the
            refit uses the union of the training and validation rows of all folds.
        Cs: the ``K`` inverse regularisation strengths (sklearn's ``C``; larger = weaker).
        tol: gradient tolerance (max-abs, on the ``1/n_f``-scaled objective, centred coordinates).
        max_iter: L-BFGS iterations per fit at most (a fit that stops there is logged).
        history: L-BFGS memory (pairs kept).
        refit: refit on all training rows (``coef``/``intercept`` are zeros otherwise).
        progress: a tqdm bar over the C path.
        class_weight: ``"balanced"`` (each row weighted ``n / (2 n_class)``, counted over every
            row the folds use, as sklearn computes it over the ``y`` it is given) or None.
        scoring: the fold score C is chosen by: ``"balanced_accuracy"`` (the mean of the two
            classes' recalls) or ``"accuracy"``.
        solver: ``"newton"`` (:func:`_newton`: exact Hessians, a few iterations, converges on
            separable labels), ``"lbfgs"`` (:func:`_lbfgs`: matrix products only) or ``"auto"``:
            Newton when the problem's dimension, ``min(d, rows used)`` (with more dimensions than
            rows every fit is solved exactly in the rows' span, the right singular vectors of
            each layer's rows, where the penalised optimum lies), is at most
            :data:`NEWTON_MAX_DIM`, else L-BFGS.

    Returns:
        :class:`LogisticCV` (``cv_scores`` in the ``scoring`` metric).

    Raises:
        ValueError: ``X`` is not 3-D, ``y`` has another length or labels outside {0, 1} on
            used rows, no folds, a fold without both classes in its training rows, a C <= 0,
            or an unknown ``class_weight``, ``scoring`` or ``solver``.
    """
    if solver not in ("auto", "newton", "lbfgs"):
        raise ValueError(f"solver must be 'auto', 'newton' or 'lbfgs', got {solver!r}")
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}")
    if scoring not in ("balanced_accuracy", "accuracy"):
        raise ValueError(f"scoring must be 'balanced_accuracy' or 'accuracy', got {scoring!r}")
    X = _as_tensor(X)
    if X.ndim != 3:
        raise ValueError(f"X must be [layers, rows, d_model], got shape {tuple(X.shape)}")
    L, n, d = X.shape
    y_np = np.asarray(y.cpu() if isinstance(y, Tensor) else y).astype(np.float64).reshape(-1)
    if y_np.shape[0] != n:
        raise ValueError(f"y has {y_np.shape[0]} labels but X has {n} rows")
    if not folds:
        raise ValueError("no folds given")
    Cs_arr = np.asarray(Cs, dtype=np.float64).reshape(-1)
    if Cs_arr.size == 0 or (Cs_arr <= 0).any():
        raise ValueError(f"Cs must be positive, got {Cs_arr.tolist()}")
    used = np.unique(np.concatenate([np.concatenate([np.asarray(tr), np.asarray(va)]) for tr, va in folds]))
    if not np.isin(y_np[used], (0.0, 1.0)).all():
        raise ValueError("y must hold binary labels 0/1 on the rows the folds use")
    F = len(folds)
    masks = torch.zeros(1, F, n)
    for f, (tr, _) in enumerate(folds):
        tr = np.asarray(tr, dtype=np.int64)
        if len(np.unique(y_np[tr])) < 2:
            raise ValueError(f"fold {f} has a single class in its training rows")
        masks[0, f, torch.from_numpy(tr)] = 1.0
    d_model = d
    r = min(d, used.size)
    use_newton = solver == "newton" or (solver == "auto" and r <= NEWTON_MAX_DIM)
    basis = None
    if use_newton and used.size < d:  # the penalised optimum lies in the span of the rows used
        Xu = X[:, torch.from_numpy(used.astype(np.int64))].double()
        basis = torch.linalg.svd(Xu, full_matrices=False).Vh.transpose(1, 2).float()  # [L, d, r]
        X = torch.bmm(X, basis)
        d = X.shape[2]
    fit = (lambda P, lam, th: _newton(P, lam, th, tol, max_iter)) if use_newton else \
        (lambda P, lam, th: _lbfgs(P, lam, th, tol, max_iter, history))
    yt = torch.from_numpy(y_np).float()
    weights = None
    if class_weight == "balanced":  # n / (n_classes * n_c), over the rows the folds use
        counts = np.bincount(y_np[used].astype(np.int64), minlength=2).astype(np.float64)
        w_np = np.zeros(n)
        w_np[used] = used.size / (2.0 * counts[y_np[used].astype(np.int64)])
        weights = torch.from_numpy(w_np).float()
    P = _Problems(X, yt, masks, weights)
    theta = torch.zeros(L, F, d + 1)
    order = np.argsort(Cs_arr, kind="stable")
    K = Cs_arr.size
    scores = np.zeros((L, K, F))
    iters = np.zeros((L, K, F), dtype=np.int64)
    thetas = torch.zeros(K, L, F, d + 1)
    converged = True
    for k in tqdm(order, desc="C path", disable=not progress, leave=False):
        lam = (1.0 / (Cs_arr[k] * P.n_f)).float()
        theta, Z, it = fit(P, lam, theta)
        if int(it.max()) >= max_iter:
            converged = False
            log.warning("batched logistic: some fits stopped at max_iter=%d (C=%g)", max_iter, Cs_arr[k])
        thetas[k] = theta
        iters[:, k] = it.numpy()
        for f, (_, va) in enumerate(folds):
            va = np.asarray(va, dtype=np.int64)
            pred = (Z[:, f, torch.from_numpy(va)] > 0).numpy()
            truth = (y_np[va] == 1)[None, :]
            hits = pred == truth
            if scoring == "accuracy":
                scores[:, k, f] = hits.sum(1) / max(va.size, 1)  # float64, as accuracy_score
            else:  # the mean recall of the classes present, as balanced_accuracy_score
                recalls = [hits[:, truth[0] == c].mean(1) for c in (False, True) if (truth[0] == c).any()]
                scores[:, k, f] = np.mean(recalls, axis=0) if recalls else 0.0
    # sklearn's rule: argmax of the fold-sum (folds summed in order, float64; first on ties)
    best = np.stack([scores[layer].T.sum(axis=0).argmax() for layer in range(L)])
    coef = np.zeros((L, d_model), dtype=np.float32)
    intercept = np.zeros(L, dtype=np.float32)
    it_refit = np.zeros(L, dtype=np.int64)
    if refit:
        all_rows = torch.zeros(1, 1, n)
        all_rows[0, 0, torch.from_numpy(used.astype(np.int64))] = 1.0
        Pr = _Problems(X, yt, all_rows, weights)
        # warm start: mean over folds of the solutions at the chosen C, in original coordinates
        th = thetas[torch.from_numpy(best), torch.arange(L)]  # [L, F, d+1]
        w = th[..., :d]
        b = th[..., d] - (P.mu * w).sum(-1)
        w0 = w.mean(1, keepdim=True)  # [L, 1, d]
        b0 = b.mean(1, keepdim=True)  # [L, 1]
        c0 = b0 + (Pr.mu * w0).sum(-1)
        theta_r = torch.cat([w0, c0[..., None]], dim=-1)
        lam = (1.0 / (torch.from_numpy(Cs_arr[best]).float()[:, None] * Pr.n_f)).float()
        theta_r, _, it = fit(Pr, lam, theta_r)
        if int(it.max()) >= max_iter:
            converged = False
            log.warning("batched logistic: a refit stopped at max_iter=%d", max_iter)
        w = theta_r[:, 0, :d]
        intercept = (theta_r[:, 0, d] - (Pr.mu[:, 0] * w).sum(-1)).numpy().astype(np.float32)
        if basis is not None:  # back to the activations' coordinates
            w = torch.bmm(basis, w[..., None])[..., 0]
        coef = w.numpy().astype(np.float32)
        it_refit = it[:, 0].numpy()
    return LogisticCV(Cs=Cs_arr, cv_scores=scores, best_index=best, C=Cs_arr[best], coef=coef,
                      intercept=intercept, n_iter=iters, n_iter_refit=it_refit, converged=converged)
