"""Splits grouped by problem chain: a problem and its twin never sit on both sides.

Every split here is a scikit-learn grouped splitter over ``groups``, one id per row; rows of the
probe sets are grouped by :attr:`probes.task.Problem.chain_id`, which a problem shares with its
:meth:`~probes.task.Problem.twin` (the same chain posed as the other type) and with its own rows
at other positions (``step:j``). So no chain is seen in training and scored in testing, and the
type-swapped counterfactual of a test problem is never a training problem.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, StratifiedGroupKFold

log = logging.getLogger(__name__)

Fold = tuple[np.ndarray, np.ndarray]


class LeakError(AssertionError):
    """A group (problem chain) appears on both sides of a split."""


def chain_of(problem_id: str) -> str:
    """The chain id inside a problem id (``p13-inv-k3-1a2b3c4d5e`` -> ``1a2b3c4d5e``).

    Raises:
        ValueError: the id does not have the task's ``pP-TYPE-kK-CHAIN`` form.
    """
    parts = str(problem_id).split("-")
    if len(parts) != 4 or not parts[0].startswith("p") or not parts[2].startswith("k"):
        raise ValueError(f"{problem_id!r} is not a task problem id (pP-TYPE-kK-CHAIN)")
    return parts[3]


def check_disjoint(train: np.ndarray, test: np.ndarray, groups: np.ndarray) -> None:
    """Raise :class:`LeakError` when a group of ``groups[train]`` is also in ``groups[test]``."""
    shared = np.intersect1d(np.asarray(groups)[train], np.asarray(groups)[test])
    if shared.size:
        raise LeakError(f"{shared.size} group(s) on both sides of the split, e.g. {shared[0]!r}")


def outer_split(groups: np.ndarray, test_size: float = 0.25, seed: int = 0,
                y: np.ndarray | None = None, tries: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """One train/test split of the rows, grouped (``GroupShuffleSplit``).

    Args:
        groups: ``[n]`` group id of each row (a chain id).
        test_size: fraction of the *groups* held out.
        seed: random seed.
        y: ``[n]`` class labels; when given, the first of ``tries`` seeds whose training *and*
            test rows hold every class is used (so metrics exist on both sides).
        tries: seeds to try when ``y`` is given.

    Returns:
        ``(train_rows, test_rows)``: sorted integer index arrays.

    Raises:
        ValueError: fewer than 2 groups, or ``test_size`` outside (0, 1).
    """
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(f"a grouped split needs at least 2 groups, got {n_groups}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    X = np.zeros((len(groups), 1))
    first = None
    for t in range(tries if y is not None else 1):
        gss = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed + 7919 * t)
        train, test = next(gss.split(X, groups=groups))
        train, test = np.sort(train), np.sort(test)
        first = first or (train, test)
        if y is None:
            break
        classes = np.unique(y)
        if len(np.unique(y[train])) == len(classes) and len(np.unique(y[test])) == len(classes):
            first = (train, test)
            break
    check_disjoint(*first, groups)
    return first


def inner_folds(y: np.ndarray | None, groups: np.ndarray, n_splits: int = 5, seed: int = 0,
                stratify: bool = True) -> list[Fold]:
    """Cross-validation folds over the rows, grouped (``StratifiedGroupKFold`` for classes,
    ``GroupKFold`` otherwise).

    The number of folds is lowered to what the data allow (the number of groups, and for
    classes the number of groups holding the rarest class) and at least 2. A multiclass target
    with a class in a single group gets unstratified folds.

    Args:
        y: ``[n]`` labels (classes when ``stratify``), or None.
        groups: ``[n]`` group ids.
        n_splits: folds wanted.
        seed: random seed of the stratified shuffling.
        stratify: keep class proportions similar across folds.

    Returns:
        ``k`` pairs ``(train_rows, validation_rows)`` of integer index arrays.

    Raises:
        ValueError: fewer than 2 groups, or (stratified, binary) a class in fewer than 2 groups.
    """
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    k = min(n_splits, n_groups)
    if stratify and y is not None:
        y = np.asarray(y)
        rarest = min(len(np.unique(groups[y == c])) for c in np.unique(y))
        if rarest < 2 and len(np.unique(y)) > 2:
            log.info("a class sits in fewer than 2 groups: folds are not stratified")
            stratify = False
        else:
            k = min(k, rarest)
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 groups (per class when stratified); got "
                         f"{n_groups} groups (folds possible: {k})")
    if k < n_splits:
        log.info("using %d folds instead of %d (too few groups)", k, n_splits)
    X = np.zeros((len(groups), 1))
    if stratify and y is not None:
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = list(cv.split(X, y, groups))
    else:
        folds = list(GroupKFold(n_splits=k).split(X, groups=groups))
    for tr, va in folds:
        check_disjoint(tr, va, groups)
    return [(np.sort(tr), np.sort(va)) for tr, va in folds]
