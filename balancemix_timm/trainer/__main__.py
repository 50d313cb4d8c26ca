"""``python -m balancemix_timm.trainer``: the ``balancemix-train`` CLI."""

import sys

from .cli import main

sys.exit(main())
