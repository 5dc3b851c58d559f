"""``python -m analyses.verdict RUN_DIR``: the verdict and the evidence behind it, as one table.

The figures and tables are drawn by :mod:`probes.reporting.verdict` (the run report draws the same);
this module is its command line and re-exports it.
"""

import sys

from probes.reporting.verdict import *  # noqa: F401,F403
from probes.reporting.verdict import main

if __name__ == "__main__":
    sys.exit(main())
