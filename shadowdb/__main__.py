"""Start the command line: ``python -m shadowdb`` and the ``shadowdb`` console script.

The command line loads SQLAlchemy, the drivers and the whole package before it can parse
an argument; a Ctrl-C in those seconds ends it as one during a command does (one line,
exit 130), not with a traceback from deep inside an import.
"""

from __future__ import annotations

import sys


def run() -> None:
    """Load :mod:`shadowdb.cli` and run it; exit with its status."""
    try:
        from shadowdb.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("shadowdb: interrupted while starting; nothing was done\n")
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    run()
