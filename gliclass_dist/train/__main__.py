"""``python -m gliclass_dist.train {train,calibrate,suggest-thresholds} ...`` (see ``gliclass_dist.train.cli``)."""

import sys

from gliclass_dist.train.cli import main

sys.exit(main())
