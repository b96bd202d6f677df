"""python -m examples.experiments [--preset full] [--out DIR] [--only NAME …] [--jobs N]: every
experiment's tables and plots, regenerated and written into the repository (see regenerate.py)."""

import sys

from .regenerate import main

if __name__ == "__main__":
    sys.exit(main())
