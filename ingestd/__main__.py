"""``python -m ingestd`` runs the CLI."""

import sys

from ingestd.cli import main

sys.exit(main())
