"""``python -m voxfit`` is the ``voxfit`` command."""

import sys

from .cli import main

sys.exit(main())
