"""Benchmark: per-layer logistic probes, the batched solver against a loop of sklearn's
``LogisticRegressionCV``.

Data: a synthetic store with the shape of Qwen2.5-1.5B's prompt-end residuals (28 layers x
d_model 1536, 10,000 rows) with a planted signal (:func:`probes.probing.synthetic.planted_activations`:
a residual-stream-like mean, power-law spectrum and axis-aligned outlier dimensions; the label
is linearly encoded with a strength that peaks in the middle layers and is zero in the first
ones). Rows come in chains of two (a problem and its twin).

Protocol, identical for both methods: one grouped train/test split (``GroupShuffleSplit``, 20%
of the chains held out), 5 grouped inner folds on the training rows (``GroupKFold``), the same
C grid (``logspace(-4, 2, 7)``), balanced class weights and C chosen per layer by mean fold
balanced accuracy (the probes' convention), refit on all training rows, accuracy on the held-out rows.

- **baseline**: for each layer, ``LogisticRegressionCV(Cs=grid, cv=folds, l1_ratios=(0,),
  scoring="balanced_accuracy", class_weight="balanced")`` with sklearn's defaults otherwise (lbfgs, ``tol=1e-4``,
  ``max_iter=100``; fits that stop at ``max_iter`` are counted and printed);
- **batched**: :func:`probes.probing.batched_logistic.fit_logistic_cv` on all layers at once
  (see its module docstring: one column per (layer, fold), centring, diagonal preconditioning,
  an exact line search without extra passes, warm starts along C; ``tol=1e-4``, converged).

Times are wall clock and this process's CPU clock (all threads); ``--clock cpu`` bases the
speedup on the CPU clock, steadier than the wall clock when other jobs share the cores
(``--threads 1`` then avoids counting OpenMP spin-waits). ``--baseline-layers K`` times
the baseline on K evenly spaced layers only and extrapolates its time to all layers linearly
(the layers' fits are independent and alike in size); ``max_acc_diff`` is then over those K
layers. The last line is ``probe_speedup=X.XX max_acc_diff=Y.YYY`` (baseline time / batched
time on the wall clock; the largest per-layer |accuracy difference| on the held-out rows).

Run: ``python benchmarks/probes.py`` (``make bench``); ``--help`` for the knobs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "--threads" in sys.argv[1:-1]:  # before numpy loads its BLAS: pools read these at start
    _n = sys.argv[sys.argv.index("--threads") + 1]
    if _n.isdigit() and int(_n) > 0:
        for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[_var] = _n
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def strength_profile(n_layers: int, peak: float = 1.5) -> np.ndarray:
    """Planted separation per layer: a bump centred at 60% depth, exactly 0 in the first 15%."""
    x = np.arange(n_layers)
    s = peak * np.exp(-(((x - 0.6 * (n_layers - 1)) / (0.25 * n_layers)) ** 2))
    s[: max(1, int(0.15 * n_layers))] = 0.0
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--d-model", type=int, default=1536)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--n-cs", type=int, default=7, help="C grid: logspace(-4, 2, N)")
    ap.add_argument("--baseline-layers", type=int, default=0,
                    help="time the baseline on this many evenly spaced layers and extrapolate (0: all)")
    ap.add_argument("--baseline-max-iter", type=int, default=100, help="sklearn's max_iter (its default: 100)")
    ap.add_argument("--threads", type=int, default=0,
                    help="limit torch, BLAS and OpenMP threads of both methods to N (0: leave as is)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="the clock probe_speedup is computed from (both are printed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit
    from threadpoolctl import threadpool_info, threadpool_limits

    from probes.probing.batched_logistic import fit_logistic_cv
    from probes.probing.synthetic import planted_activations

    if args.threads:
        # after every import: threadpoolctl limits the libraries loaded so far (numpy's and
        # scipy's OpenBLAS, OpenMP), and torch's intra-op pool is set separately
        torch.set_num_threads(args.threads)
        _limits = threadpool_limits(args.threads)  # noqa: F841 (held for the whole run)
    pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})

    L, n, d = args.layers, args.rows, args.d_model
    print(f"data: {L} layers x {n} rows x d_model {d} (float32, {L * n * d * 4 / 2**30:.2f} GiB), planted signal; "
          f"torch threads {torch.get_num_threads()}; thread pools {pools}", flush=True)
    t0 = time.perf_counter()
    data = planted_activations(n, L, d, strength_profile(L), seed=args.seed)
    print(f"generated in {time.perf_counter() - t0:.1f} s", flush=True)
    X, y, groups = data.X, data.y, data.groups
    train, test = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=args.seed)
                       .split(np.zeros(n), y, groups))
    train, test = np.sort(train), np.sort(test)
    folds_local = list(GroupKFold(n_splits=args.folds).split(np.zeros(train.size), y[train], groups[train]))
    folds_global = [(train[a], train[b]) for a, b in folds_local]
    Cs = np.logspace(-4, 2, args.n_cs)

    # --- batched -----------------------------------------------------------------------------
    w0, c0 = time.perf_counter(), time.process_time()
    cv = fit_logistic_cv(X, y, folds_global, Cs, tol=1e-4, max_iter=1000, progress=True)
    logits = np.einsum("lnd,ld->ln", X[:, test], cv.coef) + cv.intercept[:, None]
    acc_batched = ((logits > 0).astype(int) == y[test][None]).mean(1)
    t_batched, c_batched = time.perf_counter() - w0, time.process_time() - c0
    print(f"batched: {t_batched:.1f} s wall, {c_batched:.1f} s CPU for {L} layers; converged={cv.converged}; "
          f"iterations per fit: mean {cv.n_iter.mean():.1f}, max {cv.n_iter.max()}", flush=True)

    # --- baseline ------------------------------------------------------------------------------
    if args.baseline_layers and args.baseline_layers < L:
        base_layers = sorted(set(np.linspace(0, L - 1, args.baseline_layers).round().astype(int).tolist()))
    else:
        base_layers = list(range(L))
    acc_base, C_base, capped, n_fits = {}, {}, 0, 0
    w0, c0 = time.perf_counter(), time.process_time()
    from tqdm.auto import tqdm

    for layer in tqdm(base_layers, desc="LogisticRegressionCV per layer"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = LogisticRegressionCV(Cs=Cs, cv=folds_local, l1_ratios=(0.0,), scoring="balanced_accuracy",
                                     class_weight="balanced", use_legacy_attributes=False,
                                     max_iter=args.baseline_max_iter)
            m.fit(X[layer, train], y[train])
        acc_base[layer] = m.score(X[layer, test], y[test])
        C_base[layer] = float(np.ravel(m.C_)[0])
        capped += int((np.asarray(m.n_iter_) >= args.baseline_max_iter).sum())
        n_fits += int(np.asarray(m.n_iter_).size)
    t_base_meas, c_base_meas = time.perf_counter() - w0, time.process_time() - c0
    scale = L / len(base_layers)
    t_base, c_base = t_base_meas * scale, c_base_meas * scale
    print(f"baseline: {t_base_meas:.1f} s wall, {c_base_meas:.1f} s CPU for {len(base_layers)} layer(s) "
          f"{base_layers if len(base_layers) < L else ''}; {capped}/{n_fits} fold fits stopped at "
          f"max_iter={args.baseline_max_iter}", flush=True)
    if scale != 1:
        print(f"baseline extrapolated to {L} layers: {t_base:.1f} s wall, {c_base:.1f} s CPU", flush=True)

    print("layer  strength  acc_batched  acc_sklearn  C_batched  C_sklearn")
    for layer in base_layers:
        print(f"{layer:5d}  {data.strength[layer]:8.2f}  {acc_batched[layer]:11.3f}  {acc_base[layer]:11.3f}  "
              f"{cv.C[layer]:9.0e}  {C_base[layer]:9.0e}")
    diffs = [abs(acc_batched[layer] - acc_base[layer]) for layer in base_layers]
    wall_ratio, cpu_ratio = t_base / t_batched, c_base / max(c_batched, 1e-9)
    print(f"wall ratio (baseline / batched) = {wall_ratio:.2f}; CPU ratio = {cpu_ratio:.2f}; "
          f"probe_speedup is the {args.clock} ratio")
    speedup = wall_ratio if args.clock == "wall" else cpu_ratio
    print(f"probe_speedup={speedup:.2f} max_acc_diff={max(diffs):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
