"""Baselines that never look at activations: majority class, problem type, prompt tokens.

A probe on the residual stream is only interesting where it beats what the prompt's surface
already tells: the problem type is nearly a format proxy of the strategy (each type has a
natural strategy), and a linear model over the prompt's tokens reads the type, field, chain
length and operations directly (arXiv 2606.02907 shows "reasoning type" probes that only read
the prompt's format). Each baseline is fitted on the probe's training rows and scored on its
test rows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction import DictVectorizer

from probes.probing.estimators import LogisticProbe


def prompt_features(prompts: Sequence[str]) -> list[dict[str, float]]:
    """Surface features of each prompt: bag of words (``w=WORD`` counts) and one-hot
    word-at-position (``i:WORD``)."""
    out = []
    for p in prompts:
        words = p.split()
        f: dict[str, float] = {}
        for i, w in enumerate(words):
            f[f"w={w}"] = f.get(f"w={w}", 0.0) + 1.0
            f[f"{i}:{w}"] = 1.0
        out.append(f)
    return out


class SurfaceFeatures:
    """A :class:`~sklearn.feature_extraction.DictVectorizer` over :func:`prompt_features`,
    fitted on training prompts (unseen words of test prompts are dropped)."""

    def __init__(self):
        self.vec = DictVectorizer(sparse=False)

    def fit_transform(self, prompts: Sequence[str]) -> np.ndarray:
        return self.vec.fit_transform(prompt_features(prompts)).astype(np.float64)

    def transform(self, prompts: Sequence[str]) -> np.ndarray:
        return self.vec.transform(prompt_features(prompts)).astype(np.float64)


def majority_baseline(y_train: np.ndarray, n_test: int) -> np.ndarray:
    """``[n_test]`` predictions of the training majority class (sklearn ``DummyClassifier``)."""
    dummy = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(y_train), 1)), y_train)
    return dummy.predict(np.zeros((n_test, 1)))


def type_baseline(types_train: Sequence[str], y_train: np.ndarray, types_test: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Predict from the problem type alone: the training majority class of each type (the
    overall majority for a type unseen in training).

    Returns:
        ``(predictions [n_test], scores [n_test])``; scores are the training share of class 1 in
        the row's type (for AUROC of binary targets).
    """
    types_train, types_test = np.asarray(types_train), np.asarray(types_test)
    overall = majority_baseline(y_train, 1)[0]
    pred = np.empty(len(types_test), dtype=np.asarray(y_train).dtype)
    score = np.zeros(len(types_test))
    for t in np.unique(types_test):
        m_tr, m_te = types_train == t, types_test == t
        if m_tr.any():
            vals, counts = np.unique(y_train[m_tr], return_counts=True)
            pred[m_te] = vals[counts.argmax()]
            score[m_te] = float(np.mean(y_train[m_tr] == 1))
        else:
            pred[m_te] = overall
            score[m_te] = float(np.mean(y_train == 1))
    return pred, score


def surface_probe(prompts_train: Sequence[str], y_train: np.ndarray, groups_train: np.ndarray,
                  prompts_test: Sequence[str], **probe_kw) -> tuple[np.ndarray, np.ndarray | None]:
    """A :class:`LogisticProbe` on the prompts' surface features (:class:`SurfaceFeatures`).

    Returns:
        ``(predictions [n_test], scores [n_test] or None)``; scores are logits for binary
        targets.

    Raises:
        SingleClassError: one class in ``y_train``.
    """
    feats = SurfaceFeatures()
    Xtr = feats.fit_transform(prompts_train)
    Xte = feats.transform(prompts_test)
    probe = LogisticProbe(**probe_kw).fit(Xtr, y_train, groups=groups_train)
    s = probe.decision_function(Xte)
    return probe.predict(Xte), (s if s.ndim == 1 else None)
