"""``python -m neuralworld`` (and ``torchrun -m neuralworld``) run the CLI."""

import sys

from neuralworld.cli import main

sys.exit(main())
