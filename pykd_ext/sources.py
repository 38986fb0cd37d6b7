"""What kind of file the user gave, told by its first bytes, and the one way to open it as a Target.

``open_source`` opens a Windows kernel crash dump or a leakhunt snapshot as the right Target and refuses
anything else in leakhunt's words (never with a library's message such as "File is not a zip file");
every front end (``leakhunt analyze`` / ``replay``, ``leakhunt triage``) opens its inputs through it.
``kind_of_file`` lets ``leakhunt replay MEMORY.DMP`` and ``leakhunt analyze case.snap`` do the right
thing. A named pipe, a socket or a device is never opened: opening a FIFO waits for a writer that may
never come, and a file replaced by one after it was listed is caught on the opened descriptor.
"""
from __future__ import annotations

import os
import stat
import zipfile
from typing import Optional

KERNEL_DUMP = "kernel crash dump"
USER_MINIDUMP = "user-mode minidump"
SNAPSHOT = "leakhunt snapshot"
OTHER = "other"

# A snapshot is a ZIP archive (pykd_ext/targets/snapshot.py): its first member's local file header.
ZIP_MAGIC = b"PK\x03\x04"


def not_regular_reason(mode: int, what: str = "crash dump file") -> str:
    """Why a file of this ``st_mode`` is not read, or "" for a regular file: a named pipe, a socket or a
    device is never opened (opening a FIFO waits for a writer that may never come)."""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return f"is a directory, not a {what}"
    if stat.S_ISFIFO(mode):
        return f"is a named pipe (FIFO), not a {what}; it was not opened"
    if stat.S_ISSOCK(mode):
        return f"is a socket, not a {what}; it was not opened"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return f"is a device, not a {what}; it was not opened"
    return "is not a regular file; it was not opened"


def unopenable_reason(path: str, what: str = "crash dump file") -> str:
    """``not_regular_reason`` of the file at ``path`` (following links); "" when it is a regular file or
    cannot be looked at, in which case opening it says why."""
    try:
        return not_regular_reason(os.stat(path).st_mode, what)
    except OSError:
        return ""


def first_bytes(path: str, count: int = 8) -> bytes:
    """The first ``count`` bytes of ``path``, opened read-only without blocking and checked to be a
    regular file on the opened descriptor; raise OSError (with a one-line ``strerror`` for what is not a
    regular file)."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        reason = not_regular_reason(os.fstat(descriptor).st_mode)
        if reason:
            raise OSError(0, reason)
        return os.read(descriptor, count)
    finally:
        os.close(descriptor)


def kind_of_bytes(path: str, magic: bytes) -> str:
    """KERNEL_DUMP, USER_MINIDUMP, SNAPSHOT or OTHER (a damaged ZIP too) from the first 8 bytes."""
    from .targets.dumpheader import MINIDUMP_SIGNATURE, SIGNATURE, VALID_DUMP32, VALID_DUMP64

    if magic[:4] == SIGNATURE and magic[4:8] in (VALID_DUMP64, VALID_DUMP32):
        return KERNEL_DUMP
    if magic[:4] == MINIDUMP_SIGNATURE:
        return USER_MINIDUMP
    if magic[:4] == ZIP_MAGIC and zipfile.is_zipfile(path):  # a ZIP whose directory can be read
        return SNAPSHOT
    return OTHER


def kind_of_file(path: str) -> Optional[str]:
    """The kind of ``path`` (``kind_of_bytes``); None when it cannot be read (missing, not a regular
    file, no permission): the command reading it says why."""
    try:
        return kind_of_bytes(path, first_bytes(path))
    except OSError:
        return None


def open_error(path: str, error: OSError) -> str:
    """One line for a file that cannot be opened or read."""
    if isinstance(error, FileNotFoundError):
        return f"{path}: no such file"
    if isinstance(error, PermissionError):
        return f"{path}: permission denied"
    if not error.errno and error.strerror:  # first_bytes: not a regular file
        return f"{path} {error.strerror}"
    return f"cannot read {path}: {error.strerror or error}"


def open_source(path: str):
    """The Target for ``path``: a snapshot (SnapshotTarget), a small dump (SmallDumpTarget) or another
    kernel crash dump (DumpFileTarget), by its first bytes. Raises TargetError (DumpFileError,
    SnapshotError) with one line for anything else, and for a file that is missing, unreadable,
    truncated or corrupt."""
    from .targets.dumpheader import DumpFileError

    try:
        kind = kind_of_bytes(path, first_bytes(path))
    except OSError as error:
        raise DumpFileError(open_error(path, error)) from None
    if kind == SNAPSHOT:
        from .targets.snapshot import SnapshotTarget

        return SnapshotTarget.open(path)
    if kind == USER_MINIDUMP:
        raise DumpFileError(f"{path} is a user-mode minidump (MDMP), not a kernel crash dump: leakhunt reads "
                            f"kernel crash dumps (MEMORY.DMP) and leakhunt snapshots")
    if kind == OTHER:
        raise DumpFileError(f"{path} is neither a leakhunt snapshot (a ZIP archive) nor a Windows kernel crash "
                            f"dump (PAGEDU64 or PAGEDUMP), or it is truncated")
    return open_dump(path)


def open_dump(path: str):
    """The Target for the kernel crash dump ``path``: a SmallDumpTarget for a small (triage) dump, a
    DumpFileTarget for the others. Raises DumpFileError with one clear line."""
    from .targets.dumpfile import DumpFileTarget, open_read_only
    from .targets.dumpheader import DUMP_TRIAGE, DumpFileError, read_dump_header
    from .targets.smalldump import SmallDumpTarget

    handle = open_read_only(path)
    try:
        header = read_dump_header(handle, path, os.fstat(handle.fileno()).st_size)
        if header.dump_type == DUMP_TRIAGE:
            return SmallDumpTarget(path, handle, header)
        return DumpFileTarget.from_header(path, handle, header)
    except OSError as error:
        handle.close()
        raise DumpFileError(open_error(path, error)) from None
    except BaseException:
        handle.close()
        raise
