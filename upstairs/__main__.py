"""``python -m upstairs`` runs the CLI (the launcher starts its children this way)."""

import sys

from upstairs.cli import main

sys.exit(main())
