"""``python -m iqa_adapter`` (and ``accelerate launch -m iqa_adapter ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
