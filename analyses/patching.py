"""``python -m analyses.patching RUN_DIR``: recovery of the behavioural terms by cross-model patching.

The figures and tables are drawn by :mod:`probes.reporting.patching` (the run report draws the same);
this module is its command line and re-exports it.
"""

import sys

from probes.reporting.patching import *  # noqa: F401,F403
from probes.reporting.patching import main

if __name__ == "__main__":
    sys.exit(main())
