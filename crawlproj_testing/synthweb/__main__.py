"""``python -m crawlproj_testing.synthweb``: serve the synthetic web (its server module)."""

import sys

from .server import main

sys.exit(main())
