"""``python -m bilora.cli``: the same as the ``bilora`` console script."""

import sys

from bilora.cli import main

sys.exit(main())
