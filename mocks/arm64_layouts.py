"""The ARM64 kernel the test scenarios synthesize: Windows 11 24H2 (build 26100) on ARM64.

leakhunt has no built-in ARM64 tables for the structures that move between builds (an ARM64 kernel gets
them from its symbols only), so the scenario builders and the ARM64 test kernel (``mocks/test_kernel.py
--arch arm64``) take them from here. The offsets are those of the ARM64 headers of build 26100
(ntdiff/headers ``Win11_2409_24H2/ARM64/System32``: ntoskrnl.exe's _EPROCESS.h and _ETHREAD.h, which
holds _KTHREAD; ntdll.dll's _KLOCK_ENTRY.h), not leakhunt's: they differ from the x64 ones of the same
build (the ARM64 _KPROCESS ends at 0x1B8, its _KTHREAD has Process at 0x240), which is what the tests
with and without symbols rely on.

_KLOCK_ENTRIES, _LOCK_HEADER and _LOCK_TRACKER are in no ARM64 header found; the test kernel lays them
out like leakhunt's x64 build 26100 tables (pointer, counter and flag fields only, the same on both
64-bit architectures in principle), and nothing here claims that real ARM64 kernels agree.

Each entry: name -> (sizeof, {field path: (offset, kind)}), the format of ``layouts.BUILD_LAYOUTS_X64``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from pykd_ext.layouts import BUILD_LAYOUTS_X64, StructLayout

BUILD = 26100

ARM64_BUILD_LAYOUTS: Dict[str, Tuple[int, Dict[str, Tuple[int, str]]]] = {
    "_EPROCESS": (0x900, {
        "UniqueProcessId": (0x1C0, "ptr"),
        "ActiveProcessLinks": (0x1C8, "struct"),
        "NumberOfLockedPages": (0x280, "u64"),
        "Peb": (0x2D0, "ptr"),
        "ImageFilePointer": (0x320, "ptr"),
        "ImageFileName": (0x328, "struct"),
        "ThreadListHead": (0x360, "struct"),
        "LockedPagesList": (0x388, "ptr"),
    }),
    # ApcState (a _KAPC_STATE) is at 0x90 and its Process at +0x20.
    "_KTHREAD": (0x4A0, {
        "StackLimit": (0x30, "ptr"),
        "StackBase": (0x38, "ptr"),
        "ApcState.Process": (0xB0, "ptr"),
        "Process": (0x240, "ptr"),
        "ThreadListEntry": (0x318, "struct"),
        "MutantListHead": (0x328, "struct"),
        "AbWaitEntryCount": (0x338, "u8"),
        "AbOwnedEntryCount": (0x339, "u8"),
        "KernelAbEntries": (0x490, "ptr"),
        "UserAbEntries": (0x498, "ptr"),
    }),
    "_ETHREAD": (0x768, {
        "StartAddress": (0x4C0, "ptr"),
        "Cid": (0x4E8, "struct"),
        "Cid.UniqueProcess": (0x4E8, "ptr"),
        "Cid.UniqueThread": (0x4F0, "ptr"),
        "IrpList": (0x520, "struct"),
        "Win32StartAddress": (0x540, "ptr"),
        "ThreadListEntry": (0x558, "struct"),
    }),
    "_KLOCK_ENTRY": (0x58, {
        "LockState": (0x00, "u64"),
        "EntryFlags": (0x08, "u32"),
        "EntryIndex": (0x08, "u8"),
        "WaitingByte": (0x09, "u8"),
        "AcquiredByte": (0x0A, "u8"),
        "CrossThreadFlags": (0x0B, "u8"),
        "TreeNode": (0x10, "struct"),
        "OwnerTree": (0x28, "struct"),
        "WaiterTree": (0x38, "struct"),
        "EntryLock": (0x48, "u64"),
        "BoostBitmap": (0x50, "u64"),
    }),
    **{name: BUILD_LAYOUTS_X64[name][BUILD] for name in ("_KLOCK_ENTRIES", "_LOCK_HEADER", "_LOCK_TRACKER")},
}


def arm64_layout(name: str) -> Optional[StructLayout]:
    """The test ARM64 kernel's layout of a structure that moves between builds, or None."""
    if name not in ARM64_BUILD_LAYOUTS:
        return None
    size, rows = ARM64_BUILD_LAYOUTS[name]
    return StructLayout(name, size, {field: offset for field, (offset, _) in rows.items()},
                        {field: kind for field, (_, kind) in rows.items()}, f"test ARM64 build {BUILD} kernel")
