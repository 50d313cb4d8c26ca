"""``python -m balancemix_timm.benchmark``: the benchmark's command line."""

import sys

from .cli import main

sys.exit(main())
