"""``python -m scenecraft.cli``."""

import sys

from scenecraft.cli.main import main

sys.exit(main())
