"""``python -m balancemix_apps.trainer``: the ``balancemix-train`` CLI."""

import sys

from balancemix_apps.trainer.cli import main

if __name__ == "__main__":  # importing this module (a tool walking the package) runs nothing
    sys.exit(main())
