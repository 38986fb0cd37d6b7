"""What a triage run analyses: the inputs, their statuses, and the facts known before opening them.

Inputs are files and folders (walked recursively; a file in a folder is taken when its name matches
one of the globs, compared without regard to case, so ``*.dmp`` also takes ``MEMORY.DMP``) or the
lines of a list file. Every input is looked at with ``stat`` only: a directory, a named pipe or a
device that happens to match the glob gets a status and is never opened (opening a FIFO for reading
blocks until a writer appears).
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import IO, Iterable, List, Optional, Sequence, Tuple

from ..sources import not_regular_reason

STATUS_ANALYZED = "analyzed"  # the analysis ran to its end (whatever its exit code)
STATUS_INPUT_ERROR = "input_error"  # missing, unreadable, not a dump or snapshot, not a regular file
STATUS_DAMAGED = "damaged"  # a crash dump shorter than its header says, or corrupt: refused, never analyzed
STATUS_ANALYSIS_ERROR = "analysis_error"  # leakhunt failed on it (an internal error, exit code 5)
STATUS_TIMEOUT = "timeout"  # still running at --timeout: the analysis was killed
STATUS_CRASHED = "crashed"  # the process analyzing it died (a signal, or an exit without a result)
STATUSES = (STATUS_ANALYZED, STATUS_DAMAGED, STATUS_INPUT_ERROR, STATUS_ANALYSIS_ERROR, STATUS_TIMEOUT,
            STATUS_CRASHED)

DEFAULT_GLOBS = ("*.dmp", "*.snap")

# --timeout's default: a base for opening and small dumps, plus time per GiB for two streaming passes
# over a dump on slow shared storage (about 35 MB/s).
TIMEOUT_BASE_S = 120.0
TIMEOUT_PER_GIB_S = 60.0



@dataclass(frozen=True)
class InputFile:
    """One input as listed: its path (absolute), size and modification time, or why it cannot be opened."""

    path: str
    size: Optional[int]
    mtime: Optional[float]
    problem: str = ""  # one line when the input is not a regular file (it is then never opened)
    missing: bool = False  # the path does not exist (a problem too)
    # Where the analysis looks for the kernel's symbols (``_NT_SYMBOL_PATH`` syntax), resolved on the
    # machine that analyzes the input: the triage run's --symbol-path or _NT_SYMBOL_PATH.
    symbol_path: Optional[str] = None

    @property
    def key(self) -> Tuple[str, Optional[int], Optional[float]]:
        """What --resume compares: the same path, size and mtime is the same input."""
        return (self.path, self.size, self.mtime)


def timeout_for_size(size: Optional[int]) -> float:
    """The default --timeout of one input, in seconds, from its size."""
    return TIMEOUT_BASE_S + TIMEOUT_PER_GIB_S * (size or 0) / (1 << 30)


def describe(path: str, listed: bool = False) -> InputFile:
    """Stat ``path`` (following a symbolic link, never opening it); ``listed``: found by walking a folder."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return InputFile(path, None, None, "no such file" + (" (was it removed after it was listed?)" if listed else ""),
                         missing=True)
    except OSError as error:
        return InputFile(path, None, None, f"cannot look at it: {error.strerror or error}")
    reason = not_regular_reason(info.st_mode)
    return InputFile(path, info.st_size if not reason else None, info.st_mtime, reason)


def matches(name: str, globs: Sequence[str]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in globs)


def _walk(folder: str, globs: Sequence[str]) -> Iterable[InputFile]:
    errors: List[OSError] = []
    for directory, subdirectories, files in os.walk(folder, onerror=errors.append):
        subdirectories.sort()
        # A folder whose name matches (a directory called x.dmp) is listed too, to get its status.
        for name in sorted(files) + subdirectories:
            if matches(name, globs):
                yield describe(os.path.join(directory, name), listed=True)
    for error in errors:
        yield InputFile(os.path.abspath(error.filename or folder), None, None,
                        f"cannot list this folder: {error.strerror or error}")


def collect_inputs(paths: Iterable[str], globs: Sequence[str] = DEFAULT_GLOBS) -> List[InputFile]:
    """Every input named by ``paths``: a file as given (whatever its name), a folder walked recursively.

    Paths are made absolute; each input is listed once, in the order found.
    """
    seen = set()
    found: List[InputFile] = []
    for given in paths:
        path = os.path.abspath(given)
        listed = _walk(path, globs) if os.path.isdir(path) else [describe(path)]
        for entry in listed:
            if entry.path not in seen:
                seen.add(entry.path)
                found.append(entry)
    return found


def read_path_list(stream: IO[str]) -> List[str]:
    """The paths of a --from list: one a line; blank lines are skipped."""
    return [line.rstrip("\r\n") for line in stream if line.strip()]
