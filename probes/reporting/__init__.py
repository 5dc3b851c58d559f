"""The run report's figures and tables, drawn from a run folder's JSON (no model is loaded).

One module per part of the report: :mod:`~probes.reporting.behaviour` (strategy shares, the
decomposition), :mod:`~probes.reporting.probes` (the greedy strategy probe per layer),
:mod:`~probes.reporting.patching` (the recovery curves), :mod:`~probes.reporting.verdict` (the
verdict table), :mod:`~probes.reporting.grid` (the table across pairs); :mod:`~probes.reporting.rundir`
reads a run folder and saves a figure with its table. ``python -m probes.run`` draws them into its
report; the command-line tools of the ``analyses`` package (``python -m analyses.NAME RUN_DIR``)
draw one each.
"""
