"""``python -m pykd_ext``: the leakhunt command."""
import sys

from .cli import main

sys.exit(main())
