"""``python -m alerts``: the alert engine (same as ``upstairs alerts``)."""

import sys

from alerts.service import main

sys.exit(main())
