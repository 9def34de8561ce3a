"""``python -m cli``: the ``qvl`` command."""

import sys

from cli.main import main

sys.exit(main())
