"""The cyclic garbage collector paused while an analysis or a renderer builds its many objects.

A hunt of a thousand MDLs and IRPs allocates a few hundred thousand objects that all stay alive until
the report is written, so each collection the allocations trigger finds nothing to free while it
scans them (and every module the process has imported): a third of the hunt's own Python time. The
reference cycles they leave (the kernel session's and its layouts', a few hundred objects whatever the
number of MDLs) wait for the next collection; the collector resumes, as it was, when they return.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause automatic garbage collection inside the block; restore the state it had afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
