"""What kind of file the user gave: a Windows kernel crash dump or a leakhunt snapshot, told by its magic.

``leakhunt replay MEMORY.DMP`` and ``leakhunt analyze case.snap`` then do the right thing instead of
failing on the wrong reader, and a file that is neither is refused in leakhunt's words (never with a
library's message such as "File is not a zip file").
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


def kind_of_file(path: str) -> Optional[str]:
    """KERNEL_DUMP, USER_MINIDUMP, SNAPSHOT or OTHER (a damaged ZIP too) from the first bytes of ``path``
    (opened read-only);
    None when it cannot be read (missing, a directory, no permission): the command reading it says why."""
    from .targets.dumpheader import MINIDUMP_SIGNATURE, SIGNATURE, VALID_DUMP32, VALID_DUMP64

    if unopenable_reason(path):
        return None
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError:
        return None
    if magic[:4] == SIGNATURE and magic[4:8] in (VALID_DUMP64, VALID_DUMP32):
        return KERNEL_DUMP
    if magic[:4] == MINIDUMP_SIGNATURE:
        return USER_MINIDUMP
    if magic[:4] == ZIP_MAGIC and zipfile.is_zipfile(path):  # a ZIP whose directory can be read
        return SNAPSHOT
    return OTHER
