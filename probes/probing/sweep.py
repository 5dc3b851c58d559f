"""Probe every layer of a probe set for one target, with the controls that make it meaningful.

For one target on one :class:`~probes.probing.source.ProbeSet` (a site kind at one position,
all layers), :func:`probe_layers` fits and scores, per layer:

- **logistic**: L2 logistic regression, C by grouped CV on the training rows (binary targets: all
  layers at once, :func:`~probes.probing.batched_logistic.fit_logistic_cv`; multiclass:
  sklearn's ``LogisticRegressionCV``); continuous targets use ridge regression instead;
- **diffmeans**: the difference-of-means probe (binary targets; Marks and Tegmark 2023,
  arXiv 2310.06824);
- **control** and **selectivity**: the same logistic probe on the control task (a random label
  per surface identity, :func:`~probes.probing.targets.control_labels`) and the accuracy gap
  probe - control with a paired CI (Hewitt and Liang 2019, arXiv 1909.03368);
- **shuffled**: the same probe on labels permuted across rows (the null: chance);
- **within_type**: the scores restricted to the test rows of each problem type (the type is
  nearly a format proxy of the strategy; arXiv 2606.02907 warns of probes that read the format);

and, once per target, the baselines: majority class, problem type alone, and a linear probe on
the prompt's surface tokens (:mod:`probes.probing.surface`).

The train/test split is by problem chain (a problem and its twin never straddle it); every
score carries a cluster-bootstrap 95% CI over the test chains; all probes and layers share the
bootstrap draws, so differences are paired. A target with one class (a forward-only model's
strategy) is returned with ``status = "skipped"`` and the reason, never raised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from probes.probing.batched_logistic import fit_logistic_cv
from probes.probing.config import ConfigError, ProbeConfig  # noqa: F401  (re-exported)
from probes.probing.estimators import (
    DiffMeansProbe,
    LogisticProbe,
    RidgeProbe,
    SingleClassError,
)
from probes.probing.metrics import (
    classification_scores,
    paired_difference,
    regression_scores,
    strip_draws,
)
from probes.probing.source import ProbeSet
from probes.probing.splits import check_disjoint, inner_folds
from probes.probing.surface import SurfaceFeatures, majority_baseline, surface_probe, type_baseline
from probes.probing.targets import Labels, Target, control_labels, shuffled_labels

log = logging.getLogger(__name__)


@dataclass
class LayerProbes:
    """The result of :func:`probe_layers`.

    Attributes:
        summary: the JSON-able results (see :func:`probe_layers`).
        layers: ``[L]`` layer indices.
        coef: ``[L, d]`` logistic (or ridge) weights per layer, or None when skipped.
        intercept: ``[L]``.
        difference: ``[L, d]`` difference of class means (``mu_1 - mu_0``, activation units) for
            binary targets, else None.
        train_rows, test_rows: row indices into the probe set.
        best_layer: layer with the best cross-validated score on the training rows, or None.
    """

    summary: dict
    layers: list[int]
    coef: np.ndarray | None = None
    intercept: np.ndarray | None = None
    difference: np.ndarray | None = None
    train_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    best_layer: int | None = None

    @property
    def skipped(self) -> bool:
        return self.summary.get("status") == "skipped"


def choose_test_groups(groups: np.ndarray, y: np.ndarray | None, test_size: float, seed: int,
                       tries: int = 20) -> np.ndarray:
    """The chains held out for testing: a seeded random ``test_size`` share of the unique
    groups (``GroupShuffleSplit``); when ``y`` is given, the first of ``tries`` seeds whose both
    sides hold every class.

    Raises:
        ValueError: fewer than 2 groups.
    """
    from probes.probing.splits import outer_split

    groups = np.asarray(groups)
    train, test = outer_split(groups, test_size, seed, y=y, tries=tries)
    return np.unique(groups[test])


def _skipped(target: Target, ps: ProbeSet, reason: str) -> LayerProbes:
    log.info("target %s skipped: %s", target.name, reason)
    return LayerProbes(summary={"target": target.name, "kind": target.kind, "status": "skipped",
                                "reason": reason, "hook": ps.hook, "layers": list(ps.layers),
                                "class_counts": target.class_counts()}, layers=list(ps.layers))


def _scores(cfg: ProbeConfig, y, pred, score, groups):
    return classification_scores(y, pred, score, groups, n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level,
                                 return_draws=True)


def _within_type(cfg, y, pred, score, groups, types) -> dict:
    out = {}
    for t in sorted(set(types)):
        m = np.asarray(types) == t
        s = classification_scores(y[m], pred[m], None if score is None else score[m], groups[m], n_boot=cfg.n_boot,
                                  seed=cfg.seed, level=cfg.level)
        s["class_counts"] = {str(int(c)): int((y[m] == c).sum()) for c in np.unique(y[m])}
        out[t] = s
    return out


def _fit_classifier_layers(ps: ProbeSet, y: np.ndarray, train: np.ndarray, test: np.ndarray, kind: str,
                           cfg: ProbeConfig, desc: str, progress: bool):
    """Logistic probes of every layer: ``(pred [L, n_test], score [L, n_test] or None, coef, intercept,
    C [L], cv balanced accuracy [L])``."""
    folds_local = inner_folds(y[train], ps.groups[train], cfg.n_splits, seed=cfg.seed)
    folds = [(train[a], train[b]) for a, b in folds_local]
    L = len(ps.layers)
    if kind == "binary":
        cv = fit_logistic_cv(ps.X, np.where(y >= 0, y, 0), folds, cfg.Cs, tol=cfg.tol, max_iter=cfg.max_iter,
                             progress=progress)
        Xte = ps.X[:, test]
        score = np.einsum("lnd,ld->ln", Xte, cv.coef) + cv.intercept[:, None]
        pred = (score > 0).astype(np.int64)
        return pred, score, cv.coef, cv.intercept, cv.C, cv.cv_scores[np.arange(L), cv.best_index].mean(-1)
    preds, coefs, ints, Cs, cvs = [], [], [], [], []
    for j in tqdm(range(L), desc=desc, disable=not progress, leave=False):
        p = LogisticProbe(Cs=cfg.Cs, n_splits=cfg.n_splits, tol=cfg.tol, max_iter=cfg.max_iter, solver="sklearn",
                          random_state=cfg.seed)
        p.fit(ps.X[j, train], y[train], groups=ps.groups[train])
        preds.append(p.predict(ps.X[j, test]))
        coefs.append(p.coef_)
        ints.append(p.intercept_)
        Cs.append(p.C_)
        cvs.append(float(p.cv_scores_.mean(1).max()))
    return np.stack(preds), None, np.stack(coefs), np.stack(ints), np.array(Cs), np.array(cvs)


def probe_layers(ps: ProbeSet, target: Target, labels: Labels | None = None, config: ProbeConfig | None = None,
                 *, test_groups: np.ndarray | None = None, progress: bool = True) -> LayerProbes:
    """Fit and score the probes of every layer for ``target`` (see the module docstring).

    Args:
        ps: ``[L, n, d]`` activations with problem ids and chain groups.
        target: per-row target (:func:`~probes.probing.targets.build_target` on ``ps.keys`` and
            ``ps.positions``).
        labels: per-problem labels (needed for the control task, within-type scores and the
            type and surface baselines; those parts are skipped with a reason without it).
        config: :class:`ProbeConfig` (defaults when None).
        test_groups: the chains to hold out (so two models share one split); chosen by
            :func:`choose_test_groups` when None.
        progress: tqdm bars over layers.

    Returns:
        :class:`LayerProbes`. ``summary`` holds ``target``, ``kind``, ``status`` (``ok`` or
        ``skipped`` with ``reason``), ``hook``, ``layers``, ``class_counts``, ``n_train``,
        ``n_test``, ``split`` (grouping and sizes), ``baselines``, ``best_layer`` (by CV score on
        the training rows) and ``per_layer``: a list of per-layer dicts with ``logistic``
        (``C``, ``cv_balanced_accuracy`` (inner folds, C chosen by it), ``test`` scores), ``diffmeans``, ``control``, ``selectivity``,
        ``shuffled`` and ``within_type``. Scores are fractions (accuracy, balanced accuracy,
        AUROC) or R^2, each ``{"value", "ci"}``.

    Raises:
        ValueError: ``target`` does not have one value per row of ``ps``.
    """
    cfg = config or ProbeConfig()
    if len(target.y) != ps.n_rows:
        raise ValueError(f"target {target.name} has {len(target.y)} rows, the probe set {ps.n_rows}")
    if target.skipped:
        return _skipped(target, ps, target.skipped)
    rows = np.nonzero(target.valid)[0]
    if len(np.unique(ps.groups[rows])) < 4:
        return _skipped(target, ps, f"too few problem chains ({len(np.unique(ps.groups[rows]))}) to split")
    y = target.y
    is_cls = target.kind != "continuous"
    if test_groups is None:
        test_groups = choose_test_groups(ps.groups[rows], y[rows] if is_cls else None, cfg.test_size, cfg.seed)
    in_test = np.isin(ps.groups, test_groups)
    train, test = rows[~in_test[rows]], rows[in_test[rows]]
    check_disjoint(train, test, ps.groups)
    if is_cls and len(np.unique(y[train])) < 2:
        return _skipped(target, ps, "one class in the training rows")
    if test.size == 0:
        return _skipped(target, ps, "no test rows")
    g_te = ps.groups[test]
    types = None
    prompts_tr = prompts_te = None
    if labels is not None:
        types = np.array([labels.by_id[k].problem.type for k in ps.keys])
        prompts = [labels.by_id[k].problem.prompt for k in ps.keys]
        prompts_tr = [prompts[i] for i in train]
        prompts_te = [prompts[i] for i in test]
    L = len(ps.layers)
    summary = {
        "target": target.name, "kind": target.kind, "status": "ok", "hook": ps.hook,
        "layers": list(ps.layers), "class_counts": target.class_counts(), "classes": target.classes,
        "n_train": int(train.size), "n_test": int(test.size),
        "split": {"grouping": "problem chain (a problem and its twin share one)", "seed": cfg.seed,
                  "test_size": cfg.test_size, "n_train_chains": int(len(np.unique(ps.groups[train]))),
                  "n_test_chains": int(len(np.unique(g_te)))},
    }
    per_layer: list[dict] = [{"layer": int(layer), "site": ps.site(layer)} for layer in ps.layers]
    out = LayerProbes(summary=summary, layers=list(ps.layers), train_rows=train, test_rows=test)
    try:
        if not is_cls:
            _continuous(ps, target, cfg, train, test, types, prompts_tr, prompts_te, per_layer, out, progress)
        else:
            _classification(ps, target, labels, cfg, train, test, types, prompts_tr, prompts_te, per_layer, out,
                            progress)
    except ValueError as e:  # too few chains of a class for the folds, a single-class fold, ...
        return _skipped(target, ps, f"cannot fit: {e}")
    summary["per_layer"] = per_layer
    summary["best_layer"] = out.best_layer
    summary["best_layer_by"] = "cross-validated score on the training rows"
    return out


def _classification(ps, target, labels, cfg, train, test, types, prompts_tr, prompts_te, per_layer, out, progress):
    y, kind, L = target.y, target.kind, len(ps.layers)
    y_te, g_te = y[test], ps.groups[test]
    pred, score, coef, intercept, C, cv_acc = _fit_classifier_layers(ps, y, train, test, kind, cfg, "logistic", progress)
    out.coef, out.intercept = coef, intercept
    out.best_layer = int(ps.layers[int(np.argmax(cv_acc))])
    main = []
    for j in range(L):
        s = _scores(cfg, y_te, pred[j], None if score is None else score[j], g_te)
        main.append(s)
        per_layer[j]["logistic"] = {"C": float(C[j]), "cv_balanced_accuracy": float(cv_acc[j]), "test": strip_draws(s)}
        if types is not None:
            per_layer[j]["within_type"] = {"logistic": _within_type(
                cfg, y_te, pred[j], None if score is None else score[j], g_te, types[test])}
    # difference of means
    if kind == "binary":
        diffs = np.zeros((L, ps.X.shape[2]), dtype=np.float64)
        for j in tqdm(range(L), desc="diff-of-means", disable=not progress, leave=False):
            dm = DiffMeansProbe().fit(ps.X[j, train], y[train])
            diffs[j] = dm.difference_
            s_dm = dm.decision_function(ps.X[j, test])
            p_dm = (s_dm > 0).astype(np.int64)
            per_layer[j]["diffmeans"] = {"test": strip_draws(_scores(cfg, y_te, p_dm, s_dm, g_te)),
                                         "norm": float(np.linalg.norm(dm.difference_))}
            if types is not None:
                per_layer[j]["within_type"]["diffmeans"] = _within_type(cfg, y_te, p_dm, s_dm, g_te, types[test])
        out.difference = diffs
    else:
        for j in range(L):
            per_layer[j]["diffmeans"] = {"skipped": "difference of means is defined for binary targets"}
    # controls
    if cfg.controls:
        _controls(ps, target, labels, cfg, train, test, main, per_layer, progress)
    if cfg.baselines:
        out.summary["baselines"] = _class_baselines(cfg, y[train], y_te, g_te, ps.groups[train], types, train, test,
                                                    prompts_tr, prompts_te, target.kind)


def _controls(ps, target, labels, cfg, train, test, main, per_layer, progress):
    L = len(ps.layers)
    g_te = ps.groups[test]
    jobs = []
    if labels is not None:
        jobs.append(("control", control_labels(ps.keys, labels, target, seed=cfg.seed)))
    else:
        for j in range(L):
            per_layer[j]["control"] = {"skipped": "no labels (the control task needs the problems)"}
    jobs.append(("shuffled", shuffled_labels(target, ps.groups, seed=cfg.seed)))
    for name, t in jobs:
        if t.skipped or len(np.unique(t.y[train])) < 2:
            for j in range(L):
                per_layer[j][name] = {"skipped": t.skipped or "one class in the training rows"}
            continue
        try:
            pred, score, _, _, C, cv_acc = _fit_classifier_layers(ps, t.y, train, test, t.kind, cfg, name, progress)
        except (ValueError, SingleClassError) as e:
            for j in range(L):
                per_layer[j][name] = {"skipped": str(e)}
            continue
        for j in range(L):
            s = _scores(cfg, t.y[test], pred[j], None if score is None else score[j], g_te)
            per_layer[j][name] = {"C": float(C[j]), "cv_balanced_accuracy": float(cv_acc[j]), "test": strip_draws(s)}
            if name == "control":
                per_layer[j]["selectivity"] = {"accuracy": paired_difference(main[j], s, "accuracy", cfg.level)}
        if name == "shuffled":
            for j in range(L):
                per_layer[j][name]["chance"] = {"balanced_accuracy": 0.5,
                                                "accuracy": float(np.max(np.bincount(t.y[test])) / test.size)}


def _class_baselines(cfg, y_tr, y_te, g_te, g_tr, types, train, test, prompts_tr, prompts_te, kind) -> dict:
    base = {}
    maj = majority_baseline(y_tr, len(y_te))
    base["majority"] = strip_draws(_scores(cfg, y_te, maj, np.zeros(len(y_te)) if kind == "binary" else None, g_te))
    if types is None:
        base["type"] = base["surface"] = {"skipped": "no labels"}
        return base
    p_t, s_t = type_baseline(types[train], y_tr, types[test])
    base["type"] = strip_draws(_scores(cfg, y_te, p_t, s_t if kind == "binary" else None, g_te))
    try:
        p_s, s_s = surface_probe(prompts_tr, y_tr, g_tr, prompts_te, Cs=cfg.Cs, n_splits=cfg.n_splits,
                                 tol=cfg.tol, max_iter=cfg.max_iter, solver="batched", random_state=cfg.seed)
        base["surface"] = strip_draws(_scores(cfg, y_te, p_s, s_s if kind == "binary" else None, g_te))
    except (ValueError, SingleClassError) as e:
        base["surface"] = {"skipped": str(e)}
    return base


def _continuous(ps, target, cfg, train, test, types, prompts_tr, prompts_te, per_layer, out, progress):
    y, L = target.y.astype(np.float64), len(ps.layers)
    y_te, g_te = y[test], ps.groups[test]
    coefs, ints, cvs = [], [], []
    shuf = shuffled_labels(target, ps.groups, seed=cfg.seed).y.astype(np.float64)
    for j in tqdm(range(L), desc="ridge", disable=not progress, leave=False):
        r = RidgeProbe(alphas=cfg.alphas, n_splits=cfg.n_splits).fit(ps.X[j, train], y[train], groups=ps.groups[train])
        pred = r.predict(ps.X[j, test])
        s = regression_scores(y_te, pred, g_te, n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level)
        per_layer[j]["ridge"] = {"alpha": r.alpha_, "cv_r2": float(r.cv_scores_.max()), "test": s}
        coefs.append(r.coef_)
        ints.append(r.intercept_)
        cvs.append(float(r.cv_scores_.max()))
        per_layer[j]["control"] = {"skipped": "the control task is defined for classification targets"}
        if cfg.controls:
            rs = RidgeProbe(alphas=cfg.alphas, n_splits=cfg.n_splits).fit(ps.X[j, train], shuf[train],
                                                                            groups=ps.groups[train])
            per_layer[j]["shuffled"] = {"test": regression_scores(shuf[test], rs.predict(ps.X[j, test]), g_te,
                                                                  n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level),
                                        "chance": {"r2": 0.0}}
        if types is not None:
            per_layer[j]["within_type"] = {"ridge": {
                t: regression_scores(y_te[types[test] == t], pred[types[test] == t], g_te[types[test] == t],
                                     n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level)
                for t in sorted(set(types[test]))}}
    out.coef, out.intercept = np.stack(coefs), np.array(ints)
    out.best_layer = int(ps.layers[int(np.argmax(cvs))])
    if cfg.baselines:
        base = {"mean": regression_scores(y_te, np.full(len(y_te), y[train].mean()), g_te, n_boot=cfg.n_boot,
                                          seed=cfg.seed, level=cfg.level)}
        if types is not None:
            tm = {t: y[train][types[train] == t].mean() for t in set(types[train])}
            p_t = np.array([tm.get(t, y[train].mean()) for t in types[test]])
            base["type"] = regression_scores(y_te, p_t, g_te, n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.level)
            feats = SurfaceFeatures()
            Xs_tr, Xs_te = feats.fit_transform(prompts_tr), feats.transform(prompts_te)
            r = RidgeProbe(alphas=cfg.alphas, n_splits=cfg.n_splits).fit(Xs_tr, y[train], groups=ps.groups[train])
            base["surface"] = regression_scores(y_te, r.predict(Xs_te), g_te, n_boot=cfg.n_boot, seed=cfg.seed,
                                                level=cfg.level)
        out.summary["baselines"] = base
