"""``!py leakhunt``: leakhunt inside WinDbg through pykd (the logic behind scripts/leakhunt.py).

Inside WinDbg (``!py leakhunt [options]``) the target is whatever the debugger has open and the report
is DML with links to ``!irp``, ``dt nt!_MDL``, ``!pool``, ``lmvm``, ``!thread``. Outside WinDbg on
Windows (``python leakhunt.py MEMORY.DMP [options]``) pykd opens the dump itself and the report is
plain text. Also runnable as ``!py -m pykd_ext.windbg [options]``.

Nothing escapes to the debugger: a bad argument, a target that is not a crashed kernel, a missing
pykd or an internal error is one line; Ctrl+Break (pykd raises ``SystemExit("CTRL+BREAK")``) during
the hunt prints the report found so far, marked partial. Exit codes (standalone only) are the
``leakhunt`` command's (pykd_ext/console.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, List, Optional

from . import __version__
from .analyses import Options
from .analyses.common import is_interrupt
from .console import (EXIT_INPUT, EXIT_INTERRUPTED, EXIT_USAGE, UsageError, debugging, exit_code_for,
                      exit_code_for_error, OutputError, pfn_range_argument, stderr_line, write_report)
from .render.jsonout import render_json
from .render.text import render_dml, render_text
from .outfiles import refuse_unless_replaceable
from .run import run_analysis
from .targets.base import Target

# Seconds between two progress lines of a long search (the output window has no carriage return).
PROGRESS_INTERVAL = 5.0


class _ArgumentsDone(Exception):
    """argparse wanted to exit (after --help, --version or a usage error)."""

    def __init__(self, status: int, message: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that never calls sys.exit(): under !py the script must return normally."""

    def exit(self, status: int = 0, message: Optional[str] = None):
        raise _ArgumentsDone(status, message or "")

    def error(self, message: str):
        raise _ArgumentsDone(EXIT_USAGE, f"error: {message} (--help lists the options)")


def build_parser(in_windbg: bool) -> argparse.ArgumentParser:
    # Imported here: it imports pykd, which main() checks for first.
    from .targets.pykd_target import DEFAULT_SEARCH, SEARCH_METHODS

    parser = _Parser(
        prog="!py leakhunt" if in_windbg else "leakhunt.py",
        description="Find the driver that leaked locked pages in the crashed Windows kernel "
                    + ("WinDbg has open." if in_windbg else "of a crash dump opened through pykd."))
    if not in_windbg:
        parser.add_argument("dump", help="kernel crash dump file (MEMORY.DMP)")
    parser.add_argument("--version", action="version", version=f"leakhunt {__version__}")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="report format (default: text, with DML links inside WinDbg)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show rejected candidates and why, and where each layout came from")
    parser.add_argument("--pfn-range", metavar="START-END", type=pfn_range_argument,
                        help="search only these physical page frame numbers (hex), like !search's StartPFN EndPFN")
    parser.add_argument("--search", choices=SEARCH_METHODS, default=DEFAULT_SEARCH,
                        help="native: the debugger's !search, one value at a time (default; works on kernel "
                             "dumps); scan: read physical memory into leakhunt and look for all values in one "
                             "pass (faster on complete dumps and live targets when the hunt finds many MDLs)")
    parser.add_argument("--record", metavar="FILE",
                        help="also write what the hunt read to a snapshot file (replay it with `leakhunt replay`)")
    parser.add_argument("--force", action="store_true", help="let --record overwrite an existing file")
    return parser


class LineProgress:
    """progress(done, total) printed as a whole line at most every ``interval`` seconds."""

    def __init__(self, write: Callable[[str], None], interval: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.write = write
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self.clock = clock
        self._next = clock() + self.interval

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if total <= 0 or now < self._next:
            return
        self._next = now + self.interval
        self.write(f"leakhunt: searching memory: {100 * done // total}% (Ctrl+Break stops the hunt and "
                   f"prints what was found so far)\n")


def main(argv: Optional[List[str]] = None) -> int:
    """Run leakhunt against the debugger's target; return the exit code (never raises)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from .targets import pykd_target
    except ImportError as error:
        stderr_line(f"error: pykd is not available in this Python ({error}): without a debugger, `leakhunt analyze "
                    f"MEMORY.DMP` reads the dump offline on any OS; to run this script, install pykd with `pip install "
                    f"pykd` in a Windows Python (or `!pip install pykd` inside WinDbg)")
        return EXIT_INPUT
    try:
        in_windbg = pykd_target.in_windbg()
        try:
            args = build_parser(in_windbg).parse_args(argv)
        except _ArgumentsDone as done:
            if done.message:
                stderr_line(done.message.strip())
            return done.status
        return _run(args, pykd_target, in_windbg)
    except BaseException as error:  # noqa: B902 - nothing may escape into the debugger
        if is_interrupt(error):
            stderr_line("interrupted (Ctrl+Break) before the hunt started: nothing to report")
            return EXIT_INTERRUPTED
        if isinstance(error, SystemExit) or not isinstance(error, Exception):
            raise
        return exit_code_for_error(error, debugging())


def _run(args, pykd_target, in_windbg: bool) -> int:
    if not in_windbg:
        pykd_target.load_dump(args.dump)
    if args.record:
        try:  # before the hunt: a path that cannot be written is said at once
            refuse_unless_replaceable(args.record, args.force, "snapshot")
        except OutputError as error:
            raise UsageError(f"--record {error}") from None
    target: Target = pykd_target.PykdTarget(args.search)
    if target.bugcheck().code == 0:
        raise pykd_target.NotKernelTarget("the target has not crashed (bug check code 0): leakhunt analyzes a "
                                          "kernel stopped by a bug check")
    progress = LineProgress(sys.stderr.write) if args.format == "text" else None
    report = run_analysis(target, Options(verbose=args.verbose, pfn_range=args.pfn_range, progress=progress),
                          record_path=args.record, overwrite=args.force,
                          say=lambda path: stderr_line(f"recorded this session to {os.path.abspath(path)} (replay it "
                                                f"anywhere with `leakhunt replay {os.path.basename(path)}`)"))
    if args.format == "json":
        text, dml = render_json(report), False
    elif in_windbg:
        text, dml = render_dml(report, verbose=args.verbose), True
    else:
        text, dml = render_text(report, verbose=args.verbose), False
    if in_windbg:
        pykd_target.write(text, dml)
    else:  # a console that cannot encode a name gets an escape, not a failure halfway through
        write_report(text)
    return exit_code_for(report)


def run_script() -> None:
    """Entry of scripts/leakhunt.py: under !py return normally, standalone exit with the code."""
    code = main()
    if not hasattr(sys.stdout, "writedml"):  # pykd's own isWindbgExt() test; pykd may be missing here
        sys.exit(code)


if __name__ == "__main__":
    run_script()
