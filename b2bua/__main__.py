"""`python -m b2bua` is the `b2bua` command."""

import sys

from b2bua.cli import main

sys.exit(main())
