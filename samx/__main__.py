"""``python -m samx`` is the ``samx`` command."""

import sys

from samx.cli import main

sys.exit(main())
