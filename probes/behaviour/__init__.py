"""Behaviour of checkpoints and the selection / improvement decomposition.

``python -m probes.behaviour --model DIR [--reference DIR] --n N --out FILE.json``

Output JSON keys (``schema_version`` 1):

- ``settings``: problem set (seed, steps, fields), samples per problem, forced samples.
- ``models.model`` / ``models.reference``: the summary of each checkpoint
  (:func:`probes.behaviour.evaluate.summarize_behaviour`):
  ``accuracy.{greedy,sampled,implied}.{mean,ci,n}`` (fraction correct; ``implied`` =
  ``sum_s pi(s|x) a(s|x)``), ``accuracy_by_stratum["TYPE/kK/pP"].{greedy,sampled,n}``,
  ``strategy_share[TYPE].{sampled,greedy,first_token}[STRATEGY]`` (TYPE in evaluation,
  inversion, all), ``accuracy_by_strategy[TYPE][STRATEGY].{accuracy,n}``,
  ``forced_accuracy[TYPE][STRATEGY].{mean,ci,n}`` (a(s|x)), ``pass_at_k["K"]``.
- ``decomposition`` (with ``--reference``; reference = before, model = after):
  ``pooled``, ``by_type[TYPE]``, ``strata["TYPE/kK/pP"]``, each with ``n``, ``delta``,
  ``selection``, ``improvement`` (Shapley split) and their ``_ci`` pairs, and
  ``at_reference`` / ``at_model`` (one-sided orderings with ``interaction``).
See :mod:`probes.behaviour.decompose` for the formulas.
"""
