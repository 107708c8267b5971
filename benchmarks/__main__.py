"""``python -m benchmarks [--quick|--full] [--only NAME ...]``."""

import sys

from benchmarks.run import main

sys.exit(main())
