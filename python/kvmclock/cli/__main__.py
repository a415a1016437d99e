"""``python -m kvmclock.cli``: the same command as ``python -m kvmclock``."""

import sys

from kvmclock.cli import main

sys.exit(main())
