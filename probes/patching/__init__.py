"""Activation patching: cross-model in the behaviour's units, counterfactual, attribution, verdict.

Built on the backends of :mod:`activations.backends` (nnsight by default): every patched forward
pass is one :meth:`~activations.backends.base.Backend.run` with
:class:`~activations.backends.base.Patch` writes, and sweeps put many patch configurations into
one pass by repeating the batch (:mod:`~probes.patching.sweep`).

Modules, one idea each:

- :mod:`~probes.patching.metrics`: the metrics in the behaviour's units (``pi(s|x)`` at the prompt
  end; the log-probability of a canonical trace and its end token, whose ``exp`` is the exact
  forced accuracy ``a(s|x)``) and the secondary ones in nats (strategy logit difference; mean
  log-probability of the step results);
- :mod:`~probes.patching.cells`: what one patch configuration writes where;
- :mod:`~probes.patching.donor`: the donor's activations;
- :mod:`~probes.patching.sweep`: batched (and looped) sweeps over cells;
- :mod:`~probes.patching.prefix`: prefix reuse for exact ``hook_resid_pre`` layer x position
  sweeps (only the layers and tokens a patch can change are run);
- :mod:`~probes.patching.recovery` and :mod:`~probes.bootstrap`: fraction of the gap
  recovered, undefined (never NaN) when donor and recipient agree, with bootstrap CIs;
- :mod:`~probes.patching.mechanistic`: the mechanistic decomposition: cross-model activation
  patching (Prakash et al. 2024, arXiv 2402.14811) of every (hook, layer), read as the behavioural
  selection and improvement terms and their recoveries, both directions (the verdict's evidence);
- :mod:`~probes.patching.cmap`: cross-model activation patching with a nats metric (recovery
  curves of one metric, both directions);
- :mod:`~probes.patching.counterfactual`: within-model denoising and noising heatmaps on
  symmetric eval/inv pairs (Heimersheim and Nanda 2024, arXiv 2404.15255);
- :mod:`~probes.patching.attribution`: attribution patching (AtP; Kramar et al. 2024,
  arXiv 2403.00745), its agreement with exact patching, exact confirmation of top hits;
- :mod:`~probes.patching.behaviour`: greedy generation with a patch held at every step;
- :mod:`~probes.patching.verdict`: selection / improvement / both / neither, by a documented rule
  in accuracy units, with every regression stated;
- :mod:`~probes.patching.figures`: the figures; :mod:`~probes.patching.config` and
  :mod:`~probes.patching.pipeline`: ``python -m probes.patch``.

See Zhang and Nanda 2023 (arXiv 2309.16042) for the choices a patching experiment makes (metric,
corruption, normalisation): logit differences rather than probabilities, symmetric token
replacement rather than noise, and normalisation to the clean/corrupt (donor/recipient) gap.
"""

from probes.patching.attribution import Attribution, agreement, attribution_patching, confirm_top_hits
from probes.patching.cells import Cell, grid_cells, layer_cells
from probes.patching.cmap import CurveResult, cmap, cross_model_patching, execution_inputs, routing_inputs
from probes.patching.counterfactual import Heatmap, counterfactual_patching, pair_inputs
from probes.patching.donor import Donor
from probes.patching.mechanistic import PatchedBehaviour, TermRecovery, patched_behaviour, recovery_curves
from probes.patching.metrics import StepLogProb, StrategyLogitDiff, StrategyProbs, TraceLogProb
from probes.patching.recovery import Recovery, recoveries, recovery
from probes.patching.sweep import baseline, sweep
from probes.patching.verdict import VerdictRule, decide

__all__ = [
    "Attribution", "agreement", "attribution_patching", "confirm_top_hits",
    "Cell", "grid_cells", "layer_cells",
    "CurveResult", "cmap", "cross_model_patching", "execution_inputs", "routing_inputs",
    "Heatmap", "counterfactual_patching", "pair_inputs",
    "Donor", "StepLogProb", "StrategyLogitDiff", "StrategyProbs", "TraceLogProb",
    "PatchedBehaviour", "TermRecovery", "patched_behaviour", "recovery_curves",
    "Recovery", "recoveries", "recovery",
    "baseline", "sweep",
    "VerdictRule", "decide",
]
