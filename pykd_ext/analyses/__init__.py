"""Analyses, one per bug check family, behind one entry point: ``analyze(target, options)``."""
from __future__ import annotations

import struct
from typing import Callable, Dict, Optional, Tuple, Union

from ..collector import collector_paused
from ..layouts import LayoutError
from ..report import BugCheckSection, Report, bugcheck_code_text
from ..session import KernelSession
from ..targets.base import Target, TargetError
from .common import Context, Options, mark_interrupted, steps_left_to_do
from .locked_pages import NOBODY_NAMED, analyze_0x76
from . import generic, lock_entries, pfn, trackers

# bug check code -> (analysis, the verdict when the evidence names nobody)
ANALYSES: Dict[int, Tuple[Callable[[Context], None], str]] = {
    0x76: (analyze_0x76, NOBODY_NAMED),
    0xCB: (trackers.analyze_0xcb, trackers.NOBODY_NAMED_CB),
    0xD9: (trackers.analyze_0xd9, trackers.NOBODY_NAMED_D9),
    0x4E: (pfn.analyze_0x4e, pfn.NOBODY_NAMED),
    0x153: (lock_entries.analyze_0x153, lock_entries.NOBODY_NAMED),
    0x162: (lock_entries.analyze_0x162, lock_entries.NOBODY_NAMED),
    0x192: (lock_entries.analyze_0x192, lock_entries.NOBODY_NAMED),
}


def no_analysis_verdict(bugcheck: BugCheckSection) -> str:
    """The verdict of a bug check without a hunt: a sentence that stands alone (the JSON carries it)."""
    return (f"No driver is named: leakhunt has no hunt for bug check {bugcheck_code_text(bugcheck.code)} "
            f"{bugcheck.name}, so the report gives its decoded parameters only; leakhunt hunts the locked-pages "
            f"and lock-entry bug checks (0x76, 0xCB, 0xD9, 0x4E, 0x153, 0x162, 0x192).")


# What corrupt or inconsistent target data can raise deep inside an analysis (half-written, freed or
# overwritten structures, impossible layouts): the hunt stops there and the report keeps what it found.
DATA_ERRORS = (TargetError, LayoutError, struct.error, ValueError, OverflowError, RecursionError, MemoryError)


def analyze(source: Union[Target, KernelSession], options: Optional[Options] = None) -> Report:
    """Run the analysis for the bug check of ``source`` (a kernel session, or a bare target analyzed
    with its own symbols and the built-in tables) and return its report (never prints).

    An interrupted hunt returns what it found so far, marked partial; a hunt stopped by corrupt data
    returns what it found so far with a warning (and ``complete_hunt`` false).
    """
    try:
        with collector_paused():
            return _analyze(source, options)
    finally:
        (source.target if isinstance(source, KernelSession) else source).searches_done()


def _analyze(source: Union[Target, KernelSession], options: Optional[Options]) -> Report:
    context = Context(source, options or Options())
    entry = ANALYSES.get(context.decoded.code)  # the catalog folds "_M" forms into their base code
    if entry is None:
        context.report.analysis = "parameters only"
        _interruptible(context, generic.describe_crash)
        context.report.next_steps.extend(steps_left_to_do(context.report, context.decoded.next_steps))
        generic.blame_code_address(context)
        return context.conclude(no_analysis_verdict(context.report.bugcheck), hunted=False)
    analysis, nobody_named = entry
    try:
        analysis(context)
    except DATA_ERRORS as error:
        detail = " ".join(str(error).split())[:200]
        context.report.complete_hunt = False
        context.report.warn(f"the hunt stopped early on corrupt or inconsistent data ({type(error).__name__}"
                            f"{': ' + detail if detail else ''}): this report holds only what was found before")
    except BaseException as error:  # noqa: B902 - interrupts are turned into a partial report
        mark_interrupted(context, error)
    _interruptible(context, generic.describe_crash)
    return context.conclude(nobody_named)


def _interruptible(context: Context, step: Callable[[Context], None]) -> None:
    """Run ``step``; an interrupt during it makes the report partial (it keeps what it has)."""
    try:
        step(context)
    except BaseException as error:  # noqa: B902 - interrupts are turned into a partial report
        mark_interrupted(context, error)
