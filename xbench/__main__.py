"""``python -m xbench``: the ``xbench`` command line."""

import sys

from xbench.cli import main

sys.exit(main())
