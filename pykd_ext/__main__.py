"""``python -m pykd_ext``: the leakhunt command."""
import sys

from .launch import main

sys.exit(main())
