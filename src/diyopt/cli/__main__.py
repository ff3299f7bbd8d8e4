"""``python -m diyopt.cli ...``: the command line."""

import sys

from diyopt.cli import main

sys.exit(main())
