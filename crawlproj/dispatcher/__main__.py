"""``python -m crawlproj.dispatcher``: the dispatcher service (crawlproj.dispatcher.cli)."""

import sys

from .cli import main

sys.exit(main())
