"""``python -m adsrt`` is the ``adsrt`` command."""

import sys

from adsrt.cli import main

sys.exit(main())
