"""``python -m analyses.probes RUN_DIR``: the strategy probe, layer by layer, before and after RL.

The figures and tables are drawn by :mod:`probes.reporting.probes` (the run report draws the same);
this module is its command line and re-exports it.
"""

import sys

from probes.reporting.probes import *  # noqa: F401,F403
from probes.reporting.probes import main

if __name__ == "__main__":
    sys.exit(main())
