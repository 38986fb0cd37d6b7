"""An EXCEPTION_RECORD as ``.exr`` decodes it: the code (named), the faulting address, the parameters,
and for an access violation or an in-page error what was accessed and how.

Layouts (winnt.h, public): EXCEPTION_RECORD64, the native record of x64 and ARM64, is ExceptionCode
(u32, +0x0), ExceptionFlags (u32, +0x4), ExceptionRecord (u64, +0x8: a nested record), ExceptionAddress
(u64, +0x10), NumberParameters (u32, +0x18), then 15 u64 ExceptionInformation at +0x20 (0x98 bytes);
EXCEPTION_RECORD32, x86's, has 32-bit pointers: +0x8, +0xC, NumberParameters +0x10, information at
+0x14 (0x50 bytes). For STATUS_ACCESS_VIOLATION and STATUS_IN_PAGE_ERROR, ExceptionInformation[0] is
the access (0 read, 1 write, 8 execute: a DEP fault) and [1] the address accessed; an in-page error's
[2] is the NTSTATUS of the I/O that failed.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import List, Optional

from ..ntstatus import STATUS_ACCESS_VIOLATION, status_of, status_text
from ..targets.base import Target

EXCEPTION_MAXIMUM_PARAMETERS = 15
# (layout of the fixed part, offset of ExceptionInformation, record size) per pointer size.
RECORD_LAYOUTS = {8: ("<IIQQI", 0x20, 0x98), 4: ("<IIIII", 0x14, 0x50)}
STATUS_IN_PAGE_ERROR = 0xC0000006
ACCESS_KINDS = {0: "read", 1: "write", 8: "execute"}


@dataclass
class ExceptionInfo:
    """A decoded EXCEPTION_RECORD (problems: what does not agree with itself or the bug check)."""

    address: int  # where the record is
    code: int
    flags: int
    nested: int  # ExceptionRecord: a chained record, usually 0
    exception_address: int
    parameters: List[int]
    problems: List[str] = field(default_factory=list)

    @property
    def code_text(self) -> str:
        """``c0000005 (Access violation) STATUS_ACCESS_VIOLATION`` or the code's hex with its parts."""
        status = status_of(self.code)
        if status is None:
            return status_text(self.code)
        return f"{self.code:08x} ({status.words}) {status.name}"

    @property
    def access(self) -> Optional[str]:
        """"read", "write" or "execute" for an access violation or in-page error, else None."""
        if self.code in (STATUS_ACCESS_VIOLATION, STATUS_IN_PAGE_ERROR) and len(self.parameters) >= 2:
            return ACCESS_KINDS.get(self.parameters[0])
        return None

    @property
    def accessed_address(self) -> Optional[int]:
        return self.parameters[1] if self.access is not None else None

    @property
    def io_status(self) -> Optional[int]:
        """The NTSTATUS of the failed I/O of an in-page error."""
        if self.code == STATUS_IN_PAGE_ERROR and len(self.parameters) >= 3:
            return self.parameters[2]
        return None


def read_exception_record(target: Target, address: int) -> ExceptionInfo:
    """Decode the EXCEPTION_RECORD at ``address`` (raises MemoryReadError when it is not in memory)."""
    fixed, information, size = RECORD_LAYOUTS[target.pointer_size]
    raw = target.read(address, size)
    code, flags, nested, exception_address, count = struct.unpack_from(fixed, raw)
    info = ExceptionInfo(address, code, flags, nested, exception_address, [])
    if count > EXCEPTION_MAXIMUM_PARAMETERS:
        info.problems.append(f"NumberParameters {count} is more than a record holds ({EXCEPTION_MAXIMUM_PARAMETERS}): "
                             f"the record is corrupt or not a record")
        count = 0
    width = target.pointer_size
    info.parameters = list(struct.unpack_from(f"<{count}{'Q' if width == 8 else 'I'}", raw, information))
    return info
