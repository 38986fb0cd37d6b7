"""Analyses, one per bug check family, behind one entry point: ``analyze(target, options)``."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from ..report import Report
from ..targets.base import Target
from .common import Context, Options
from .locked_pages import NOBODY_NAMED, analyze_0x76

# bug check code -> (analysis, the verdict when the evidence names nobody)
ANALYSES: Dict[int, Tuple[Callable[[Context], None], str]] = {
    0x76: (analyze_0x76, NOBODY_NAMED),
}

NO_ANALYSIS = ("leakhunt has no hunt for this bug check: the parameters are decoded above. "
               "Its hunts cover the locked-pages and lock-entry bug checks (0x76, 0xCB, 0xD9, 0x4E, 0x153, 0x162, 0x192).")


def is_interrupt(error: BaseException) -> bool:
    """Ctrl+C offline; inside WinDbg, pykd turns Ctrl+Break into SystemExit("CTRL+BREAK")."""
    if isinstance(error, KeyboardInterrupt):
        return True
    return isinstance(error, SystemExit) and "CTRL+BREAK" in str(error.code)


def analyze(target: Target, options: Optional[Options] = None) -> Report:
    """Run the analysis for the target's bug check and return its report (never prints).

    An interrupted hunt returns what it found so far, marked partial.
    """
    context = Context(target, options or Options())
    entry = ANALYSES.get(context.decoded.code)  # the catalog folds "_M" forms into their base code
    if entry is None:
        context.report.analysis = "parameters only"
        context.report.next_steps.extend(context.decoded.next_steps)
        return context.conclude(NO_ANALYSIS)
    analysis, nobody_named = entry
    try:
        analysis(context)
    except BaseException as error:  # noqa: B902 - interrupts are turned into a partial report
        if not is_interrupt(error):
            raise
        context.report.partial = True
        context.report.warn("the hunt was interrupted: this report holds only what was found before the interrupt")
    return context.conclude(nobody_named)
