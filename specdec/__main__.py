"""`python -m specdec ...` entry point."""

import sys

from specdec.cli import main

sys.exit(main())
