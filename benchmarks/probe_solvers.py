"""Benchmark: the logistic probes of the default run, Newton against L-BFGS, both against converged
sklearn fits.

Data: the default run's activation stores (``runs/main/store/{pre,post}``, ``hook_resid_post`` at
``prompt_end``, every layer; ``make run`` writes them) and its behaviour labels. For each model
and each binary target the probe stage fits (the greedy ``strategy``, greedy ``correct``, and the
``strategy`` control task and shuffled null), the probe stage's protocol: one split by problem
chain, grouped inner folds, ``Cs = logspace(-4, 2, 7)``, balanced class weights, C by balanced
accuracy, refit on the training rows.

- **lbfgs**: :func:`probes.probing.batched_logistic.fit_logistic_cv` with ``solver="lbfgs"`` (the
  probe stage's solver until issue 18; ``max_iter=1000``, fits at large C stop there);
- **newton**: the same with ``solver="newton"`` (the ``"auto"`` choice at d_model 256);
- **reference**: sklearn's ``LogisticRegressionCV`` per layer with the same folds, grid and class
  weights and ``max_iter=10000`` (converged), for the held-out balanced accuracy only.

Prints both solvers' times, the per-layer held-out balanced accuracies, the largest differences
(newton vs lbfgs; each vs the reference, on the real targets and on the controls), and last ``probe_solver_speedup=X.XX max_bacc_diff_newton=Y.YYY
max_bacc_diff_lbfgs=Z.ZZZ`` (lbfgs time / newton time, wall clock).

Run: ``python benchmarks/probe_solvers.py [RUN_DIR]`` after ``make run``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run = Path(argv[0] if argv else REPO / "runs" / "main")
    if not (run / "store" / "pre").exists():
        print(f"no activation store under {run}/store: run `make run` first (or pass a run folder)", file=sys.stderr)
        return 1
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import balanced_accuracy_score

    from probes.probing.batched_logistic import fit_logistic_cv
    from probes.probing.config import DEFAULT_CS
    from probes.probing.source import open_store, read_probe_set
    from probes.probing.splits import inner_folds, outer_split
    from probes.probing.targets import build_target, control_labels, load_labels, shuffled_labels

    jobs = []
    for model, rows in (("pre", "behaviour.reference.jsonl"), ("post", "behaviour.model.jsonl")):
        ps = read_probe_set(open_store(run / "store" / model), "hook_resid_post", "prompt_end")
        labs = load_labels(run / "behaviour" / rows)
        strat = build_target("strategy", ps.keys, ps.positions, labs)
        for t in (strat, build_target("correct", ps.keys, ps.positions, labs), control_labels(ps.keys, labs, strat),
                  shuffled_labels(strat, ps.groups)):
            if t.skipped:
                continue
            rows_ok = np.nonzero(t.valid)[0]
            tr, te = outer_split(ps.groups[rows_ok], 0.25, 0, y=t.y[rows_ok])
            train, test = rows_ok[tr], rows_ok[te]
            folds = [(train[a], train[b]) for a, b in inner_folds(t.y[train], ps.groups[train], 5, seed=0)]
            jobs.append((f"{model}:{t.name}", ps.X, t.y, train, test, folds))
    print(f"{len(jobs)} probe sweeps of {jobs[0][1].shape[0]} layers x {jobs[0][1].shape[1]} rows x d_model "
          f"{jobs[0][1].shape[2]}", flush=True)

    def held_out(cv, X, y, test):
        s = np.einsum("lnd,ld->ln", X[:, test], cv.coef) + cv.intercept[:, None]
        return np.array([balanced_accuracy_score(y[test], (s[j] > 0).astype(int)) for j in range(X.shape[0])])

    times, accs = {}, {}
    for solver in ("lbfgs", "newton"):
        t0 = time.perf_counter()
        accs[solver] = [held_out(fit_logistic_cv(X, y, folds, DEFAULT_CS, solver=solver), X, y, test)
                        for _, X, y, train, test, folds in jobs]
        times[solver] = time.perf_counter() - t0
        print(f"{solver}: {times[solver]:.1f} s wall", flush=True)
    ref = []
    for _, X, y, train, test, folds in jobs:
        local = {int(r): i for i, r in enumerate(train)}
        fl = [(np.array([local[int(r)] for r in a]), np.array([local[int(r)] for r in b])) for a, b in folds]
        row = []
        for j in range(X.shape[0]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                m = LogisticRegressionCV(Cs=list(DEFAULT_CS), cv=fl, l1_ratios=(0.0,), scoring="balanced_accuracy",
                                         class_weight="balanced", use_legacy_attributes=False, max_iter=10000)
                m.fit(X[j, train], y[train])
            row.append(balanced_accuracy_score(y[test], m.predict(X[j, test])))
        ref.append(np.array(row))
    print("sweep                  layer  reference  newton  lbfgs")
    for (name, *_), r, a, b in zip(jobs, ref, accs["newton"], accs["lbfgs"]):
        for j in range(len(r)):
            print(f"{name:22s} {j:5d}  {r[j]:9.3f}  {a[j]:6.3f}  {b[j]:5.3f}")
    def worst(a_list, b_list, which=lambda name: True):
        return max([float(np.abs(a - b).max()) for (name, *_), a, b in zip(jobs, a_list, b_list) if which(name)]
                   or [0.0])

    real = lambda name: ":control:" not in name and ":shuffled:" not in name  # noqa: E731
    dn, dl = worst(accs["newton"], ref), worst(accs["lbfgs"], ref)
    print(f"largest |held-out balanced accuracy difference|: newton vs lbfgs {worst(accs['newton'], accs['lbfgs']):.3f}; "
          f"vs the converged reference on the real targets: newton {worst(accs['newton'], ref, real):.3f}, lbfgs "
          f"{worst(accs['lbfgs'], ref, real):.3f}; on the control task and shuffled null: newton "
          f"{worst(accs['newton'], ref, lambda n: not real(n)):.3f}, lbfgs {worst(accs['lbfgs'], ref, lambda n: not real(n)):.3f}")
    print(f"probe_solver_speedup={times['lbfgs'] / times['newton']:.2f} max_bacc_diff_newton={dn:.3f} "
          f"max_bacc_diff_lbfgs={dl:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
