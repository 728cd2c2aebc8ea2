"""``python -m structload``: the same as the ``structload`` command."""

import sys

from ._cli import main

sys.exit(main())
