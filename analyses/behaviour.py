"""``python -m analyses.behaviour RUN_DIR``: strategy shares and the decomposition of a run.

The figures and tables are drawn by :mod:`probes.reporting.behaviour` (the run report draws the same);
this module is its command line and re-exports it.
"""

import sys

from probes.reporting.behaviour import *  # noqa: F401,F403
from probes.reporting.behaviour import main

if __name__ == "__main__":
    sys.exit(main())
