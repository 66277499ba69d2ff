"""Run the shadowdb command line: ``python -m shadowdb``."""

from __future__ import annotations

import sys

from shadowdb.cli import main

if __name__ == "__main__":
    sys.exit(main())
