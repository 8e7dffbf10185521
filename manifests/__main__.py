"""``python -m manifests`` = ``maeast-manifest``."""

import sys

from manifests.cli import main

sys.exit(main())
