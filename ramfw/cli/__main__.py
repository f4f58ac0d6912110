"""`python -m ramfw.cli ...`: the same as the `ramfw` console script."""

import sys

from ramfw.cli.app import main

sys.exit(main())
