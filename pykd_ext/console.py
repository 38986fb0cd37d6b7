"""What every front end shares: exit codes, one-line errors, and writing the report to its stream.

``leakhunt`` (cli.py), ``leakhunt triage`` (fleet/) and ``!py leakhunt`` / ``leakhunt.py`` (windbg.py)
all speak through this module, so an exit code means the same everywhere and every message has the
same form: one line on stderr, starting ``leakhunt:``. It imports nothing heavy: a usage error or
``--help`` loads none of the analyses.

Exit codes (README, "Exit codes"):
  0  the report names at least one suspect driver (triage: every input was analyzed)
  1  the report names no suspect (triage: some inputs were not analyzed; their status says why)
  2  usage error (bad arguments, a path given on the command line that does not exist)
  3  input error: a file that is missing, unreadable, truncated, corrupt or of the wrong kind
     (triage: the inputs named hold no dump or snapshot)
  4  the hunt was not possible or could not finish (the source lacks the memory it needs, or
     corrupt data stopped it); the bug check and whatever was found are still printed
  5  internal error in leakhunt (a bug: please report it with the input that caused it)
  6  output error: the report or a file leakhunt writes could not be written (a full disk, a closed
     or broken output, no permission, a device or a link where a file was to be written)
  130 interrupted (Ctrl+C, or Ctrl+Break in WinDbg)
"""
from __future__ import annotations

import errno
import os
import sys
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .report import Report

EXIT_SUSPECT = 0
EXIT_NO_SUSPECT = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_NO_HUNT = 4
EXIT_INTERNAL = 5
EXIT_OUTPUT = 6
EXIT_INTERRUPTED = 130
# A reader that stops early (``| head``) is not an error of the analysis.
EXIT_SUCCESS_IF_PIPE_CLOSED = 0

# Text columns of a report written to something that is not a terminal.
DEFAULT_WIDTH = 100


class UsageError(Exception):
    """Bad arguments (exit 2): the message says what to write instead."""


class FileKindError(Exception):
    """A file of the wrong kind for every command (exit 3)."""


class OutputError(Exception):
    """Something leakhunt writes could not be written (exit 6): the message names it and says why."""


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on (control and format characters, line
    breaks, lone surrogates) written as an escape such as ``\\x1b``: names read from a crashed machine's
    memory or a hostile file must not move the cursor, recolour the terminal or break a table."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def write(stream, text: str) -> None:
    """Write ``text``, escaping what the stream's encoding cannot hold (a cp1252 console, a C locale,
    a lone surrogate from a hostile file name) instead of failing halfway through a report."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding))


def stderr_line(text: str) -> None:
    """One line on stderr, whatever the message holds; nothing when there is no stderr to write to."""
    try:
        write(sys.stderr, "leakhunt: " + printable(text) + "\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass  # stderr closed too: the exit code is all that is left to say it


def why_not_written(error: BaseException) -> str:
    """The reason a write failed, in words: ``no space left on device``, ``the output is closed``."""
    if isinstance(error, (AttributeError, ValueError)):  # sys.stdout is None, or a closed file object
        return "the output is closed"
    if isinstance(error, OSError):
        if error.errno == errno.EBADF:
            return "the output is closed"
        if error.errno == errno.EPIPE:
            return "the reader of the output went away (broken pipe)"
        return (error.strerror or str(error)).lower().rstrip(".")
    return str(error)


def write_report(text: str, stream=None, what: str = "the report") -> None:
    """Write a whole report to ``stream`` (stdout by default) and flush it; raise OutputError with one
    line when it cannot be written (BrokenPipeError passes through: ``| head`` is not an error)."""
    try:
        stream = sys.stdout if stream is None else stream
        write(stream, text)
        stream.flush()
    except BrokenPipeError:
        raise
    except (AttributeError, OSError, ValueError) as error:
        raise OutputError(f"cannot write {what} to standard output: {why_not_written(error)}") from None


def reader_stopped_early() -> bool:
    """After a broken pipe on stdout: True when stdout is a pipe (a reader such as ``| head`` that has
    read what it wanted, which is not an error), False for a socket or anything else whose reader went
    away before the end."""
    import stat

    try:
        return stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def silence_stdout() -> None:
    """After a broken pipe: point stdout at the null device, so that the interpreter's last flush at
    exit does not report the same broken pipe again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (AttributeError, OSError, ValueError):
        pass


def is_terminal(stream) -> bool:
    """True when ``stream`` is an open terminal (False for a file, a pipe, a closed or missing stream)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def output_width(stream) -> int:
    """Columns of the text report: the terminal's when ``stream`` is one, else DEFAULT_WIDTH."""
    if is_terminal(stream):
        import shutil

        return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    return DEFAULT_WIDTH


def pfn_range_argument(text: str):
    """argparse type for --pfn-range (every front end takes it)."""
    import argparse

    from .targets.base import pfn_range_from_text

    try:
        return pfn_range_from_text(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def exit_code_for(report: "Report") -> int:
    """The exit code of a finished report."""
    if report.partial:
        return EXIT_INTERRUPTED
    if report.suspects:
        return EXIT_SUSPECT
    if not report.complete_hunt:
        return EXIT_NO_HUNT
    return EXIT_NO_SUSPECT


def exit_code_for_error(error: Exception, debug: bool = False) -> int:
    """Say ``error`` (raised by a command) in one line on stderr and return its exit code.

    With ``debug`` (LEAKHUNT_DEBUG=1) an unexpected error is raised again, for its traceback.
    """
    known = [(UsageError, EXIT_USAGE), (FileKindError, EXIT_INPUT), (OutputError, EXIT_OUTPUT)]
    if not isinstance(error, tuple(kind for kind, _ in known)):  # the command's own errors: loaded by then
        from .analyses.common import PfnRangeOutsideSource
        from .targets.base import TargetError

        known += [(PfnRangeOutsideSource, EXIT_USAGE), (TargetError, EXIT_INPUT)]
    for kind, code in known:
        if isinstance(error, kind):
            stderr_line(f"error: {error}")
            return code
    if debug:
        raise error
    stderr_line(f"internal error: {type(error).__name__}: {error}. This is a bug in leakhunt: please report it "
                f"with the input file (LEAKHUNT_DEBUG=1 shows the traceback)")
    return EXIT_INTERNAL


def debugging() -> bool:
    """LEAKHUNT_DEBUG=1: unexpected errors show their traceback."""
    return os.environ.get("LEAKHUNT_DEBUG") == "1"


def interrupted_line(what: Optional[str] = None) -> int:
    """One line for an interrupt outside a hunt; the exit code to return."""
    stderr_line("interrupted" + (f": {what}" if what else ""))
    return EXIT_INTERRUPTED
