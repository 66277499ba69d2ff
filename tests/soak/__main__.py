"""``python -m tests.soak``: see :mod:`tests.soak.harness`."""

import sys

from tests.soak.harness import main

sys.exit(main())
