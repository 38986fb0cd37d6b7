"""What ``vertarget`` says about the crashed system beyond the dump header: the kernel's build string and
the uptime.

- The build string ("Built by: 19041.1.amd64fre.vb_release.191206-1406") is the ASCII string that
  ``nt!NtBuildLab`` points at; the kernel debugger data block (KDDEBUGGER_DATA64, wdbgexts.h; its
  address is the dump header's KdDebuggerDataBlock, its header's OwnerTag is "KDBG") holds that pointer
  at +0x208 on every architecture (its fields are 64-bit everywhere). Both real small dumps of the
  tests keep the block and the string.
- The uptime is KUSER_SHARED_DATA.InterruptTime (+0x8, a KSYSTEM_TIME: LowPart u32, High1Time i32, in
  100 ns units since boot; offsets from the kernels' symbol tables), at the fixed kernel address of the
  shared data page (x64 and ARM64 0xFFFFF780`00000000, x86 0xFFDF0000), when the source holds that page.
"""
from __future__ import annotations

import struct
from typing import Optional

from ..targets.base import MemoryReadError, Target

KDDEBUGGER_OWNER_TAG = b"KDBG"
KDDEBUGGER_OWNER_TAG_OFFSET = 0x10  # after the header's LIST_ENTRY64
KDDEBUGGER_NT_BUILD_LAB = 0x208
MAX_BUILD_LAB = 128
SHARED_USER_DATA = {8: 0xFFFFF78000000000, 4: 0xFFDF0000}
INTERRUPT_TIME = 0x8


def build_lab(target: Target, nt_build_lab: Optional[int], debugger_data: Optional[int]) -> Optional[str]:
    """The kernel's NtBuildLab string, at ``nt_build_lab`` (the symbol, when known) or through the debugger
    data block at ``debugger_data``; None when the source does not hold them or they do not look like
    what they are."""
    try:
        pointer = nt_build_lab or _build_lab_pointer(target, debugger_data)
        if pointer is None or not target.is_kernel_address(pointer):
            return None
        raw = _read_up_to(target, pointer, MAX_BUILD_LAB)
    except MemoryReadError:
        return None
    text = raw.split(b"\0", 1)[0]
    if not text or not all(0x20 <= byte < 0x7F for byte in text):
        return None
    return text.decode("ascii")


def uptime_seconds(target: Target) -> Optional[float]:
    """Seconds from boot to the crash (KUSER_SHARED_DATA.InterruptTime), or None."""
    try:
        raw = target.read(SHARED_USER_DATA[target.pointer_size] + INTERRUPT_TIME, 8)
    except (MemoryReadError, KeyError):
        return None
    low, high = struct.unpack("<Ii", raw)
    ticks = (high << 32) | low
    return ticks / 10_000_000 if ticks > 0 else None


def _build_lab_pointer(target: Target, debugger_data: Optional[int]) -> Optional[int]:
    """KDDEBUGGER_DATA64.NtBuildLab, when ``debugger_data`` is a debugger data block ("KDBG")."""
    if not debugger_data or target.read(debugger_data + KDDEBUGGER_OWNER_TAG_OFFSET, 4) != KDDEBUGGER_OWNER_TAG:
        return None
    return struct.unpack("<Q", target.read(debugger_data + KDDEBUGGER_NT_BUILD_LAB, 8))[0]


def _read_up_to(target: Target, address: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``address``, stopping at the end of the first page the source lacks."""
    ranges = target.readable_ranges(address, size)
    if not ranges or ranges[0][0] != address:
        raise MemoryReadError(address, size)
    return target.read(address, ranges[0][1] - address)
