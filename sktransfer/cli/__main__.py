"""``python -m sktransfer.cli``: the ``sktransfer`` command."""

import sys

from sktransfer.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
