"""``python -m kvmclock``: the same command as the ``kvmclock`` console script."""

import sys

from kvmclock.cli import main

sys.exit(main())
