"""Run the spamgeo command line: `python -m spamgeo --help`."""

import sys

from spamgeo.cli import main

sys.exit(main())
