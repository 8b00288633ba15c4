"""`python -m psft.cli ...` (e.g. under `accelerate launch -m psft.cli train`)."""

import sys

from psft.cli import main

sys.exit(main())
