"""`python -m storerec.cli`: the storerec command, with its exit status."""

import sys

from storerec.cli import main

sys.exit(main())
