"""``python -m analyses.grid GRID_DIR``: the table across pairs as a figure, and the grid's report.

The figures and tables are drawn by :mod:`probes.reporting.grid` (the run report draws the same);
this module is its command line and re-exports it.
"""

import sys

from probes.reporting.grid import *  # noqa: F401,F403
from probes.reporting.grid import main

if __name__ == "__main__":
    sys.exit(main())
