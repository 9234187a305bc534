"""`python -m ragft ...`: the same as the `ragft` console script."""

import sys

from ragft.cli import main

sys.exit(main())
