"""Linear probes: which strategy will the model use, read from the end of the prompt.

Modules (lowest first): :mod:`~probes.probing.batched_logistic` (all layers, folds and C of
an L2 logistic sweep in one batched solver), :mod:`~probes.probing.estimators` (probes as
scikit-learn estimators: logistic, difference of means, ridge), :mod:`~probes.probing.splits`
(splits grouped by problem chain), :mod:`~probes.probing.metrics` (scores with cluster-bootstrap
CIs), :mod:`~probes.probing.targets` (labels, targets, the control task and the shuffled null),
:mod:`~probes.probing.surface` (majority, type and prompt-token baselines),
:mod:`~probes.probing.source` (reading a store), :mod:`~probes.probing.sweep` (every layer with
its controls), :mod:`~probes.probing.transfer` (pre-RL <-> post-RL),
:mod:`~probes.probing.steering` (the causal dose-response), :mod:`~probes.probing.figures` and
:mod:`~probes.probing.report` (``probes.json`` and figures). :mod:`~probes.probing.synthetic`
makes planted-signal data for tests and benchmarks. CLI: ``python -m probes.fit``.

Sources: Hewitt and Liang 2019 (arXiv 1909.03368: control tasks, selectivity); Marks and
Tegmark 2023 (arXiv 2310.06824: difference-of-means probes and steering); arXiv 2606.02907
(probes of "reasoning type" that only read the prompt's format: hence within-type scores and
surface baselines).
"""

from importlib import import_module

_EXPORTS = {
    "LogisticCV": "batched_logistic", "fit_logistic_cv": "batched_logistic",
    "ConfigError": "config", "ProbeConfig": "config",
    "DiffMeansProbe": "estimators", "LogisticProbe": "estimators", "RidgeProbe": "estimators",
    "SingleClassError": "estimators",
    "probe_report": "report", "run_probes": "report",
    "ArrayStore": "source", "ProbeSet": "source", "read_probe_set": "source",
    "chain_of": "splits", "inner_folds": "splits", "outer_split": "splits",
    "prompt_end_patch": "steering", "steering_dose_response": "steering",
    "LayerProbes": "sweep", "probe_layers": "sweep",
    "TARGETS": "targets", "Labels": "targets", "Target": "targets", "build_target": "targets",
    "load_labels": "targets",
    "probe_transfer": "transfer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # exports load on first use, so that importing a light submodule (config, targets) does not
    # pull in torch, scikit-learn and matplotlib
    if name in _EXPORTS:
        return getattr(import_module(f"probes.probing.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'probes.probing' has no attribute {name!r}")
