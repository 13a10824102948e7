"""``python -m skcflow``: the same as the ``skcflow`` command."""

import sys

from .cli import main

sys.exit(main())
