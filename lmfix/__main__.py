"""``python -m lmfix`` (and ``torchrun -m lmfix``) runs the CLI."""

import sys

from lmfix.cli import main

sys.exit(main())
