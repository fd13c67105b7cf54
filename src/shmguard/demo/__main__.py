"""``python -m shmguard.demo``."""
from __future__ import annotations

import sys

from shmguard.demo.run import main

sys.exit(main(sys.argv[1:]))
