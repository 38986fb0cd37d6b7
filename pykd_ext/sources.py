"""What kind of file the user gave: a Windows kernel crash dump or a leakhunt snapshot, told by its magic.

``leakhunt replay MEMORY.DMP`` and ``leakhunt analyze case.snap`` then do the right thing instead of
failing on the wrong reader, and a file that is neither is refused in leakhunt's words (never with a
library's message such as "File is not a zip file").
"""
from __future__ import annotations

import zipfile
from typing import Optional

KERNEL_DUMP = "kernel crash dump"
USER_MINIDUMP = "user-mode minidump"
SNAPSHOT = "leakhunt snapshot"
OTHER = "other"

# A snapshot is a ZIP archive (pykd_ext/targets/snapshot.py): its first member's local file header.
ZIP_MAGIC = b"PK\x03\x04"


def kind_of_file(path: str) -> Optional[str]:
    """KERNEL_DUMP, USER_MINIDUMP, SNAPSHOT or OTHER (a damaged ZIP too) from the first bytes of ``path``
    (opened read-only);
    None when it cannot be read (missing, a directory, no permission): the command reading it says why."""
    from .targets.dumpheader import MINIDUMP_SIGNATURE, SIGNATURE, VALID_DUMP32, VALID_DUMP64

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
