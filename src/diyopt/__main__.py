"""``python -m diyopt ...`` (and ``torchrun -m diyopt ...``): the command line."""

import sys

from diyopt.cli import main

sys.exit(main())
