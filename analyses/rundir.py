"""Reading a run folder for the analyses (:mod:`probes.reporting.rundir`, re-exported)."""

from probes.reporting.rundir import *  # noqa: F401,F403
from probes.reporting.rundir import figure_path, load, run_dir_from_argv, save_figure  # noqa: F401
