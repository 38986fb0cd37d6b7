"""Structure layouts: the one place where kernel structure offsets live.

A layout is taken from the target's own type information (debugger symbols) whenever the target
has it, and from the built-in tables below otherwise. Every built-in number comes from
`windows-kernel.md` section 4 (MinGW DDK headers cross-checked with public-PDB dumps) and is checked
by `tests/test_layouts.py`. Structures whose layout moves between Windows builds (`_EPROCESS`,
`_KTHREAD`, `_LOCK_TRACKER`...) are keyed by architecture and build.

Field kinds say how to decode a field: ``u8``, ``u16``, ``u32``, ``u64``, ``ptr`` (pointer-sized),
``i16`` (CSHORT) or ``struct`` (an embedded structure: only its offset is meaningful); ``kind[n]`` is
an embedded array of n elements (symbols, when present, give the real length).

The thread, lock-entry and lock-tracker tables (and the few stable layouts outside §4.1-4.8) are checked
by `tests/test_family_layouts.py`; a table whose build mapping is UNVERIFIED says so in its source.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple

from .arch import X64, X86, arch_named
from .typeinfo import TypeInfo

# The source of a layout from type information that does not name itself (the debugger's typeInfo).
SOURCE_DEBUGGER = "debugger symbols"
SOURCE_BUILTIN = "built-in"


class LayoutError(Exception):
    """A structure or field layout is not known for this target."""


@dataclass(frozen=True)
class StructLayout:
    name: str  # e.g. "_MDL"
    size: int
    offsets: Mapping[str, int]
    kinds: Mapping[str, str]
    source: str  # where it came from: "debugger symbols", "pdb ntkrnlmp.pdb GUID-AGE", a built-in table...
    # Byte size of each field, when the symbols said (built-in tables give array lengths in the kind).
    sizes: Mapping[str, int] = field(default_factory=dict)
    # Non-empty when a built-in table's build mapping is UNVERIFIED: why the table may not fit.
    unverified: str = ""
    # The build whose table was used for another build that has none (no symbols either), else None.
    guessed_from: Optional[int] = None
    # The architecture ("arm64") a table of another architecture's column was applied to, else "".
    used_for: str = ""

    def offset(self, field_name: str) -> int:
        try:
            return self.offsets[field_name]
        except KeyError:
            raise self.missing(field_name) from None

    def missing(self, field_name: str) -> LayoutError:
        return LayoutError(f"{self.name}.{field_name} is not in the {self.source} layout")

    def has(self, field_name: str) -> bool:
        return field_name in self.offsets

    @cached_property
    def _decoders_by_pointer_size(self) -> Dict[int, Dict[str, "FieldDecoder"]]:
        return {}

    def decoders(self, pointer_size: int) -> Dict[str, "FieldDecoder"]:
        """Field -> (offset, the bytes the field's data must reach, the ``unpack_from`` that decodes it,
        or None for an embedded structure or array, whose address is its value), for StructView's many
        reads; built once per pointer size. A negative offset (damaged symbols) can reach no data."""
        table = self._decoders_by_pointer_size.get(pointer_size)
        if table is None:
            table = self._decoders_by_pointer_size[pointer_size] = {
                field_name: _field_decoder(offset, _unpacker(self.kinds.get(field_name, "struct"), pointer_size))
                for field_name, offset in self.offsets.items()}
        return table

    def array_length(self, field_name: str, element_size: int) -> Optional[int]:
        """Elements of an array field: from the symbols' field size, else the ``kind[n]`` of the table."""
        if field_name in self.sizes and element_size:
            return self.sizes[field_name] // element_size
        match = _ARRAY_KIND.match(self.kinds.get(field_name, ""))
        return int(match.group(2)) if match else None


# How StructView decodes each fixed-size kind, and a pointer of each size (little-endian).
_KIND_UNPACKERS = {kind: struct.Struct(fmt) for kind, fmt in
                   (("u8", "<B"), ("u16", "<H"), ("i16", "<h"), ("u32", "<I"), ("u64", "<Q"))}
_POINTER_UNPACKERS = {8: struct.Struct("<Q"), 4: struct.Struct("<I")}
# Field kind -> byte size, for the fixed-size kinds.
KIND_SIZES = {kind: unpacker.size for kind, unpacker in _KIND_UNPACKERS.items()}
# Array kinds: "ptr[8]" (StackTrace), "struct[6]" (an embedded array of structures).
_ARRAY_KIND = re.compile(r"^(\w+)\[(\d+)\]$")


def _fields(pointer_size: int, spec: Iterable[Tuple[str, int, int, str]]) -> Tuple[Dict[str, int], Dict[str, str]]:
    """Split (name, x64 offset, x86 offset, kind) rows into the columns of one architecture."""
    offsets, kinds = {}, {}
    for name, off64, off32, kind in spec:
        offset = off64 if pointer_size == 8 else off32
        if offset is None:
            continue
        offsets[name] = offset
        kinds[name] = kind
    return offsets, kinds


# ---- stable layouts: the same on every build of an architecture (windows-kernel.md §4.1-4.8) ----
# (field, x64 offset, x86 offset, kind); None = field absent on that architecture.

_MDL = [
    ("Next", 0x00, 0x00, "ptr"),
    ("Size", 0x08, 0x04, "i16"),
    ("MdlFlags", 0x0A, 0x06, "u16"),
    ("AllocationProcessorNumber", 0x0C, None, "u16"),
    ("Process", 0x10, 0x08, "ptr"),
    ("MappedSystemVa", 0x18, 0x0C, "ptr"),
    ("StartVa", 0x20, 0x10, "ptr"),
    ("ByteCount", 0x28, 0x14, "u32"),
    ("ByteOffset", 0x2C, 0x18, "u32"),
]

_IRP = [
    ("Type", 0x00, 0x00, "i16"),
    ("Size", 0x02, 0x02, "u16"),
    ("MdlAddress", 0x08, 0x04, "ptr"),
    ("Flags", 0x10, 0x08, "u32"),
    ("AssociatedIrp", 0x18, 0x0C, "ptr"),
    ("ThreadListEntry", 0x20, 0x10, "struct"),
    ("IoStatus", 0x30, 0x18, "struct"),
    ("RequestorMode", 0x40, 0x20, "u8"),
    ("PendingReturned", 0x41, 0x21, "u8"),
    ("StackCount", 0x42, 0x22, "u8"),
    ("CurrentLocation", 0x43, 0x23, "u8"),
    ("Cancel", 0x44, 0x24, "u8"),
    ("CancelIrql", 0x45, 0x25, "u8"),
    ("UserIosb", 0x48, 0x28, "ptr"),
    ("UserEvent", 0x50, 0x2C, "ptr"),
    ("CancelRoutine", 0x68, 0x38, "ptr"),
    ("UserBuffer", 0x70, 0x3C, "ptr"),
    ("Tail", 0x78, 0x40, "struct"),
    ("Tail.Overlay.Thread", 0x98, 0x50, "ptr"),
    ("Tail.Overlay.ListEntry", 0xA8, 0x58, "struct"),
    ("Tail.Overlay.CurrentStackLocation", 0xB8, 0x60, "ptr"),
    ("Tail.Overlay.OriginalFileObject", 0xC0, 0x64, "ptr"),
]

_IO_STACK_LOCATION = [
    ("MajorFunction", 0x00, 0x00, "u8"),
    ("MinorFunction", 0x01, 0x01, "u8"),
    ("Flags", 0x02, 0x02, "u8"),
    ("Control", 0x03, 0x03, "u8"),
    ("Parameters", 0x08, 0x04, "struct"),
    ("DeviceObject", 0x28, 0x14, "ptr"),
    ("FileObject", 0x30, 0x18, "ptr"),
    ("CompletionRoutine", 0x38, 0x1C, "ptr"),
    ("Context", 0x40, 0x20, "ptr"),
]

_DEVICE_OBJECT = [
    ("Type", 0x00, 0x00, "i16"),
    ("Size", 0x02, 0x02, "u16"),
    ("ReferenceCount", 0x04, 0x04, "u32"),
    ("DriverObject", 0x08, 0x08, "ptr"),
    ("NextDevice", 0x10, 0x0C, "ptr"),
    ("AttachedDevice", 0x18, 0x10, "ptr"),
    ("CurrentIrp", 0x20, 0x14, "ptr"),
    ("Flags", 0x30, 0x1C, "u32"),
    ("Characteristics", 0x34, 0x20, "u32"),
    ("DeviceExtension", 0x40, 0x28, "ptr"),
    ("DeviceType", 0x48, 0x2C, "u32"),
    ("StackSize", 0x4C, 0x30, "u8"),
    ("DeviceObjectExtension", 0x138, 0xB0, "ptr"),
]

_DRIVER_OBJECT = [
    ("Type", 0x00, 0x00, "i16"),
    ("Size", 0x02, 0x02, "u16"),
    ("DeviceObject", 0x08, 0x04, "ptr"),
    ("Flags", 0x10, 0x08, "u32"),
    ("DriverStart", 0x18, 0x0C, "ptr"),
    ("DriverSize", 0x20, 0x10, "u32"),
    ("DriverSection", 0x28, 0x14, "ptr"),
    ("DriverExtension", 0x30, 0x18, "ptr"),
    ("DriverName", 0x38, 0x1C, "struct"),
    ("DriverInit", 0x58, 0x2C, "ptr"),
    ("DriverUnload", 0x68, 0x34, "ptr"),
    ("MajorFunction", 0x70, 0x38, "struct"),
]

_FILE_OBJECT = [
    ("Type", 0x00, 0x00, "i16"),
    ("Size", 0x02, 0x02, "u16"),
    ("DeviceObject", 0x08, 0x04, "ptr"),
    ("FileName", 0x58, 0x30, "struct"),
]

_UNICODE_STRING = [
    ("Length", 0x0, 0x0, "u16"),
    ("MaximumLength", 0x2, 0x2, "u16"),
    ("Buffer", 0x8, 0x4, "ptr"),
]

_LIST_ENTRY = [
    ("Flink", 0x0, 0x0, "ptr"),
    ("Blink", 0x8, 0x4, "ptr"),
]

_KLDR_DATA_TABLE_ENTRY = [
    ("InLoadOrderLinks", 0x00, 0x00, "struct"),
    ("DllBase", 0x30, 0x18, "ptr"),
    ("EntryPoint", 0x38, 0x1C, "ptr"),
    ("SizeOfImage", 0x40, 0x20, "u32"),
    ("FullDllName", 0x48, 0x24, "struct"),
    ("BaseDllName", 0x58, 0x2C, "struct"),
    ("Flags", 0x68, 0x34, "u32"),
]

# name -> (field rows, x64 sizeof, x86 sizeof); a sizeof of 0 means leakhunt does not rely on it
# (views then read up to the last known field).
STABLE_LAYOUTS = {
    "_MDL": (_MDL, 0x30, 0x1C),
    "_IRP": (_IRP, 0xD0, 0x70),
    "_IO_STACK_LOCATION": (_IO_STACK_LOCATION, 0x48, 0x24),
    "_DEVICE_OBJECT": (_DEVICE_OBJECT, 0x150, 0xB8),
    "_DRIVER_OBJECT": (_DRIVER_OBJECT, 0x150, 0xA8),
    "_FILE_OBJECT": (_FILE_OBJECT, 0, 0),
    "_UNICODE_STRING": (_UNICODE_STRING, 0x10, 0x8),
    "_LIST_ENTRY": (_LIST_ENTRY, 0x10, 0x8),
    "_KLDR_DATA_TABLE_ENTRY": (_KLDR_DATA_TABLE_ENTRY, 0, 0),
}

# ---- other stable layouts, from public PDB-derived headers and the PE format ----
# Checked by tests/test_family_layouts.py against the sources cited there.

# DISPATCHER_HEADER.Type (KOBJECTS: ProcessObject 3, ThreadObject 6), the first byte of KPROCESS/KTHREAD.
_DISPATCHER_HEADER = [
    ("Type", 0x0, 0x0, "u8"),
]

# RTL_BALANCED_NODE: the node of RTL_AVL_TREE / RTL_RB_TREE; ParentValue holds the parent pointer with
# the AVL Balance (2 bits) or red-black Red (1 bit) in its low bits (NTDIFF Win10_21H1_20180 _ETHREAD.h).
_RTL_BALANCED_NODE = [
    ("Left", 0x0, 0x0, "ptr"),
    ("Right", 0x8, 0x4, "ptr"),
    ("ParentValue", 0x10, 0x8, "ptr"),
]

# POOL_HEADER just before a small pool block (NTDIFF _POOL_HEADER.h: x64 16 bytes, x86 8). Its first 32
# bits (Ulong1) are the bit fields of POOL_HEADER_BITS.
_POOL_HEADER = [
    ("Ulong1", 0x0, 0x0, "u32"),
    ("PoolTag", 0x4, 0x4, "u32"),
]

# The bit fields in POOL_HEADER.Ulong1, (first bit, bits), per pointer size (NTDIFF x64 and x86 _POOL_HEADER.h:
# x64 four bytes; x86 9 + 7 bits in each USHORT). Symbols give a bit field's storage unit, not its bits,
# so these hold whatever the symbols say. BlockSize and PreviousSize count units of sizeof(POOL_HEADER);
# PoolType is the pool type plus one in an allocated block, 0 in a free one (WRK pool.h).
POOL_HEADER_BITS = {
    8: {"PreviousSize": (0, 8), "PoolIndex": (8, 8), "BlockSize": (16, 8), "PoolType": (24, 8)},
    4: {"PreviousSize": (0, 9), "PoolIndex": (9, 7), "BlockSize": (16, 9), "PoolType": (25, 7)},
}
# The kernel pool is the segment heap from Windows 10 19H1 (build 18362) on: a block of its VS allocator has
# a _HEAP_VS_CHUNK_HEADER (0x10 bytes on x64, in every real x64 kernel PDB of tests/data/symbols) before
# its POOL_HEADER. Not known for x86.
SEGMENT_HEAP_FIRST_BUILD = 18362
VS_CHUNK_HEADER_SIZE = {8: 0x10}

# PE headers of a loaded image (Microsoft PE format; IMAGE_SECTION_HEADER is 0x28 bytes on both).
_IMAGE_DOS_HEADER = [
    ("e_magic", 0x0, 0x0, "u16"),
    ("e_lfanew", 0x3C, 0x3C, "u32"),
]

_IMAGE_NT_HEADERS = [
    ("Signature", 0x0, 0x0, "u32"),
    ("FileHeader.NumberOfSections", 0x6, 0x6, "u16"),
    ("FileHeader.SizeOfOptionalHeader", 0x14, 0x14, "u16"),
    ("OptionalHeader", 0x18, 0x18, "struct"),
]

_IMAGE_SECTION_HEADER = [
    ("Name", 0x0, 0x0, "struct"),
    ("Misc.VirtualSize", 0x8, 0x8, "u32"),  # Misc is a union of PhysicalAddress and VirtualSize
    ("VirtualAddress", 0xC, 0xC, "u32"),
    ("Characteristics", 0x24, 0x24, "u32"),
]

OTHER_STABLE_LAYOUTS = {
    "_DISPATCHER_HEADER": (_DISPATCHER_HEADER, 0x18, 0x10),
    "_RTL_BALANCED_NODE": (_RTL_BALANCED_NODE, 0x18, 0xC),
    "_POOL_HEADER": (_POOL_HEADER, 0x10, 0x8),
    "_IMAGE_DOS_HEADER": (_IMAGE_DOS_HEADER, 0x40, 0x40),
    "_IMAGE_NT_HEADERS": (_IMAGE_NT_HEADERS, 0, 0),
    "_IMAGE_SECTION_HEADER": (_IMAGE_SECTION_HEADER, 0x28, 0x28),
}

# ---- layouts leakhunt takes from the kernel's symbols only ----
# name -> [(field, kind)]: the fields asked of the symbols. _POOL_TRACKER_BIG_PAGES (the entries of
# nt!PoolBigPageTable) grew from 0x18 to 0x20 bytes between builds 19041 and 20348 (real PDBs).
SYMBOLS_ONLY_LAYOUTS = {
    "_POOL_TRACKER_BIG_PAGES": [("Va", "ptr"), ("Key", "u32"), ("NumberOfBytes", "ptr")],
    # x64: the volatile registers a trap handler saves, then the machine frame the CPU pushed (Rip..SegSs).
    "_KTRAP_FRAME": [("Rax", "u64"), ("Rcx", "u64"), ("Rdx", "u64"), ("R8", "u64"), ("R9", "u64"), ("R10", "u64"),
                     ("R11", "u64"), ("Rbp", "u64"), ("ErrorCode", "u64"), ("Rip", "u64"), ("SegCs", "u16"),
                     ("EFlags", "u32"), ("Rsp", "u64"), ("SegSs", "u16")],
}

# ---- layouts that move between builds (windows-kernel.md §4.9), x64 only ----
# name -> build -> (sizeof or None when unknown, {field: (offset, kind)})

BUILD_LAYOUTS_X64: Dict[str, Dict[int, Tuple[Optional[int], Dict[str, Tuple[int, str]]]]] = {
    "_EPROCESS": {
        19045: (0xA40, {
            "UniqueProcessId": (0x440, "ptr"),
            "ActiveProcessLinks": (0x448, "struct"),
            "NumberOfLockedPages": (0x500, "u64"),
            "Peb": (0x550, "ptr"),
            "ImageFilePointer": (0x5A0, "ptr"),
            "ImageFileName": (0x5A8, "struct"),
            "ThreadListHead": (0x5E0, "struct"),
            "LockedPagesList": (0x608, "ptr"),
        }),
        26100: (None, {
            "UniqueProcessId": (0x1D0, "ptr"),
            "ActiveProcessLinks": (0x1D8, "struct"),
            "NumberOfLockedPages": (0x290, "u64"),
            "Peb": (0x2E0, "ptr"),
            "ImageFilePointer": (0x330, "ptr"),
            "ImageFileName": (0x338, "struct"),
            "ThreadListHead": (0x370, "struct"),
            "LockedPagesList": (0x398, "ptr"),
        }),
    },
    # §4.9. The 19045 tables are the NTDIFF Win10_21H1_20180 layout (0x430-byte KTHREAD), which the
    # reference believes unchanged through 22H2: build mapping UNVERIFIED (see UNVERIFIED_BUILD_TABLES).
    # ApcState.Process is ApcState (0x98) + KAPC_STATE.Process (0x20) in both NTDIFF headers.
    "_KTHREAD": {
        19045: (0x430, {
            "StackLimit": (0x30, "ptr"),
            "StackBase": (0x38, "ptr"),
            "ApcState.Process": (0xB8, "ptr"),
            "Process": (0x220, "ptr"),
            "ThreadListEntry": (0x2F8, "struct"),
            "MutantListHead": (0x308, "struct"),
            "AbEntrySummary": (0x318, "u8"),
            "AbWaitEntryCount": (0x319, "u8"),
            "LockEntries": (0x320, "ptr"),
            "AbOrphanedEntrySummary": (0x366, "u8"),
            "AbOwnedEntryCount": (0x367, "u8"),
        }),
        26100: (0x4C0, {
            "ApcState.Process": (0xB8, "ptr"),
            "Process": (0x220, "ptr"),
            "ThreadListEntry": (0x2F8, "struct"),
            "MutantListHead": (0x308, "struct"),
            "AbWaitEntryCount": (0x318, "u8"),
            "AbOwnedEntryCount": (0x319, "u8"),
            "KernelAbEntries": (0x470, "ptr"),
            "UserAbEntries": (0x478, "ptr"),
        }),
    },
    # ETHREAD: Cid, IrpList, Win32StartAddress, ThreadListEntry from §4.9; StartAddress and the
    # LockEntries[6] array that KTHREAD.LockEntries points to from the same NTDIFF header; 26100 from NTKLIB.
    # sizeof 0x898 is the 19041.804 PDB's (ISF 5278AFF86C341677D7D7835C85B7B844-1; NTDIFF 20180 says 0x8A0).
    "_ETHREAD": {
        19045: (0x898, {
            "StartAddress": (0x450, "ptr"),
            "Cid": (0x478, "struct"),
            "Cid.UniqueProcess": (0x478, "ptr"),
            "Cid.UniqueThread": (0x480, "ptr"),
            "IrpList": (0x4B0, "struct"),
            "Win32StartAddress": (0x4D0, "ptr"),
            "ThreadListEntry": (0x4E8, "struct"),
            "LockEntries": (0x650, "struct[6]"),
        }),
        26100: (0x798, {
            "StartAddress": (0x4E0, "ptr"),
            "Cid": (0x508, "struct"),
            "Cid.UniqueProcess": (0x508, "ptr"),
            "Cid.UniqueThread": (0x510, "ptr"),
            "IrpList": (0x540, "struct"),
            "Win32StartAddress": (0x560, "ptr"),
            "ThreadListEntry": (0x578, "struct"),
        }),
    },
    # §4.9 _KLOCK_ENTRY. LockState's first pointer-sized word is the lock address with flag bits;
    # 19045 keeps SessionId beside it, 26100 (NTKLIB, sizeof 0x58) moved LockState to the front.
    "_KLOCK_ENTRY": {
        19045: (0x60, {
            "TreeNode": (0x00, "struct"),
            "EntryFlags": (0x18, "u32"),
            "EntryOffset": (0x18, "u8"),
            "ThreadLocalFlags": (0x19, "u8"),
            "AcquiredByte": (0x1A, "u8"),
            "CrossThreadFlags": (0x1B, "u8"),
            "LockState": (0x20, "u64"),
            "SessionId": (0x28, "u32"),
            "OwnerTree": (0x30, "struct"),
            "WaiterTree": (0x40, "struct"),
            "EntryLock": (0x50, "u64"),
            # A 4-byte union on 19041.804 (ISF 5278AFF86C341677D7D7835C85B7B844-1 _KLOCK_ENTRY_BOOST_BITMAP).
            "BoostBitmap": (0x58, "u32"),
        }),
        26100: (0x58, {
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
    },
    # KTHREAD.KernelAbEntries on 24H2 points to this header followed by its entries (NTKLIB).
    "_KLOCK_ENTRIES": {
        26100: (0x10, {
            "Thread": (0x0, "ptr"),
            "AvailableEntryBitmap": (0x8, "u16"),
            "OrphanedEntryBitmap": (0xA, "u16"),
            "EntryCount": (0xC, "u8"),
            "Entries": (0x10, "struct"),
        }),
    },
    # §4.10. LockTree / LockMdlSwitchedTree are RTL_AVL_TREEs: one pointer, the root node.
    "_LOCK_HEADER": {
        19045: (0x28, {
            "LockTree": (0x00, "ptr"),
            "LockMdlSwitchedTree": (0x08, "ptr"),
            "Count": (0x10, "u64"),
            "Lock": (0x18, "u64"),
            "Valid": (0x20, "u32"),
        }),
        26100: (0x20, {
            "LockTree": (0x00, "ptr"),
            "LockMdlSwitchedTree": (0x08, "ptr"),
            "Count": (0x10, "u64"),
            "Lock": (0x18, "u32"),
            "Valid": (0x1C, "u32"),
        }),
    },
    # §4.10: 19045 uses variant B (0x90), 26100 the NTKLIB layout (0xC0, 14 saved frames).
    "_LOCK_TRACKER": {
        19045: (0x90, {
            "LockTrackerNode": (0x00, "struct"),
            "Mdl": (0x18, "ptr"),
            "StartVa": (0x20, "ptr"),
            "Count": (0x28, "u64"),
            "Offset": (0x30, "u32"),
            "Length": (0x34, "u32"),
            "Who": (0x38, "u32"),
            "Hash": (0x3C, "u32"),
            "Page": (0x40, "u64"),
            "StackTrace": (0x48, "ptr[8]"),
            "Process": (0x88, "ptr"),
        }),
        26100: (0xC0, {
            "LockTrackerNode": (0x00, "struct"),
            "Mdl": (0x18, "ptr"),
            "StartVa": (0x20, "ptr"),
            "Count": (0x28, "u64"),
            "Offset": (0x30, "u32"),
            "Length": (0x34, "u32"),
            "Who": (0x38, "u32"),
            "Hash": (0x3C, "u32"),
            "Page": (0x40, "u64"),
            "StackTrace": (0x48, "ptr[14]"),
            "Process": (0xB8, "ptr"),
        }),
    },
}

# Builds whose kernel has every field of another build's x64 tables at the same offset and size: build
# 19041 (Windows 10 20H1) and the 19045 tables, checked against the real ntkrnlmp.pdb of 10.0.19041.804
# (tests/test_smalldump.py). Such a build gets that table as its own, not as a guess.
SAME_X64_OFFSETS = {19041: 19045}

# x86 tables for builds whose layout the reference gives (§4.10: the later x86 variants), same format.
BUILD_LAYOUTS_X86: Dict[str, Dict[int, Tuple[Optional[int], Dict[str, Tuple[int, str]]]]] = {
    "_LOCK_HEADER": {
        19045: (0x14, {
            "LockTree": (0x0, "ptr"),
            "LockMdlSwitchedTree": (0x4, "ptr"),
            "Count": (0x8, "u32"),
            "Lock": (0xC, "u32"),
            "Valid": (0x10, "u32"),
        }),
    },
    "_LOCK_TRACKER": {
        19045: (0x50, {
            "LockTrackerNode": (0x00, "struct"),
            "Mdl": (0x0C, "ptr"),
            "StartVa": (0x10, "ptr"),
            "Count": (0x14, "u32"),
            "Offset": (0x18, "u32"),
            "Length": (0x1C, "u32"),
            "Who": (0x20, "u32"),
            "Hash": (0x24, "u32"),
            "Page": (0x28, "u32"),
            "StackTrace": (0x2C, "ptr[8]"),
            "Process": (0x4C, "ptr"),
        }),
    },
}

_SAME_AS_19041 = "matches the 19041.804 kernel PDB; 19045 is assumed to run the same kernel"

# Built-in tables whose mapping to a Windows build is not verified: (name, pointer size, build) -> why.
# A report that used one says so (Report.layouts and a warning); symbols always take precedence.
# The x64 19045 tables match the 19041.804 kernel PDB (ISF 5278AFF86C341677D7D7835C85B7B844-1, checked by
# tests/test_layouts_real_symbols.py); what stays unverified is that a 19045 kernel has the same layouts.
UNVERIFIED_BUILD_TABLES: Dict[Tuple[str, int, int], str] = {
    ("_KTHREAD", 8, 19045): _SAME_AS_19041,
    ("_ETHREAD", 8, 19045): _SAME_AS_19041,
    ("_KLOCK_ENTRY", 8, 19045): _SAME_AS_19041,
    ("_LOCK_HEADER", 8, 19045): _SAME_AS_19041,
    ("_LOCK_TRACKER", 8, 19045): _SAME_AS_19041,
    ("_ETHREAD", 8, 26100): "NTKLIB layouts, whose exact build is not confirmed",
    ("_KLOCK_ENTRY", 8, 26100): "NTKLIB layouts, whose exact build is not confirmed",
    ("_KLOCK_ENTRIES", 8, 26100): "NTKLIB layouts, whose exact build is not confirmed",
    ("_LOCK_TRACKER", 8, 26100): "NTKLIB layouts, whose exact build is not confirmed",
    ("_LOCK_HEADER", 4, 19045): "which build uses the later x86 header is not known",
    ("_LOCK_TRACKER", 4, 19045): "which build uses x86 tracker variant B is not known",
}

# The stable tables on an architecture that borrows the x64 column (ARM64: LLP64 like x64, and no
# architecture-specific fields in these structures), with what each ARM64 layout was checked against.
# The ARM64 headers of build 26100 are ntdiff/headers Win11_2409_24H2/ARM64 (_MDL in ntdll.dll's
# _KSWAPPABLE_PAGE.h; _IRP, _IO_STACK_LOCATION, _FILE_OBJECT and _UNICODE_STRING in ndis.sys's; _DEVICE_OBJECT,
# _DISPATCHER_HEADER and _LIST_ENTRY in ntdll.dll's _DEVICE_OBJECT.h; _RTL_BALANCED_NODE in _KLOCK_ENTRY.h);
# _DRIVER_OBJECT and _KLDR_DATA_TABLE_ENTRY are identical on ARM64 and x64 build 19569 (the same headers).
_ARM64_HEADERS_26100 = "the ARM64 headers of build 26100"
CHECKED_FOR_ARM64: Dict[str, str] = {
    **{name: _ARM64_HEADERS_26100 for name in ("_MDL", "_IRP", "_IO_STACK_LOCATION", "_DEVICE_OBJECT", "_FILE_OBJECT",
                                               "_UNICODE_STRING", "_LIST_ENTRY", "_DISPATCHER_HEADER",
                                               "_RTL_BALANCED_NODE")},
    "_DRIVER_OBJECT": "the ARM64 headers of build 19569",
    "_KLDR_DATA_TABLE_ENTRY": "the ARM64 headers of build 19569",
    **{name: "the PE format, the same for every PE32+ image" for name in ("_IMAGE_DOS_HEADER", "_IMAGE_NT_HEADERS",
                                                                         "_IMAGE_SECTION_HEADER")},
}
# What the stable tables were checked against on each architecture that borrows another's column.
CHECKED_ON: Dict[str, Dict[str, str]] = {"arm64": CHECKED_FOR_ARM64}
# The architectures a table column belongs to (the callers that name no architecture).
_COLUMN_ARCHES = {X64.pointer_size: X64, X86.pointer_size: X86}

# Length of EPROCESS.ImageFileName (UCHAR[15]).
IMAGE_FILE_NAME_LENGTH = 15


def builtin_layout(name: str, pointer_size: int, build: Optional[int] = None,
                   arch_name: str = "") -> Optional[StructLayout]:
    """The built-in layout of ``name`` for an architecture and build, or None if not known.

    ``arch_name`` names the architecture; without it, the one whose table column ``pointer_size``
    selects (x64 or x86). An architecture that borrows another's column (ARM64: the x64 one) gets the
    stable tables of that column, labelled with what they were checked against on it, and no per-build
    table: the structures that move between builds differ between architectures too, so only its
    kernel's symbols describe them. A structure whose layout moves between builds and has no table for
    ``build`` gets the table of the nearest build that has one, marked ``unverified`` with the build it
    was made for: its offsets may be wrong, and the report says so (the kernel's own symbols avoid the
    guess).
    """
    target_arch = arch_named(arch_name) if arch_name else _COLUMN_ARCHES[pointer_size]
    column = arch_named(target_arch.layout_column)
    arch = column.name
    pointer_size = column.pointer_size
    stable = STABLE_LAYOUTS.get(name) or OTHER_STABLE_LAYOUTS.get(name)
    if stable is not None:
        rows, size64, size32 = stable
        offsets, kinds = _fields(pointer_size, rows)
        if not offsets:
            return None
        size = size64 if column is X64 else size32
        if target_arch is column:
            return StructLayout(name, size, offsets, kinds, f"{SOURCE_BUILTIN} {arch} table")
        checked = CHECKED_ON.get(target_arch.name, {}).get(name)
        note = f"matches {checked}" if checked else "UNVERIFIED there"
        return StructLayout(name, size, offsets, kinds,
                            f"{SOURCE_BUILTIN} {arch} table (used for {target_arch.label}: {note})",
                            used_for=target_arch.name)
    per_build = (BUILD_LAYOUTS_X64 if column is X64 else BUILD_LAYOUTS_X86).get(name)
    if not per_build or target_arch is not column:
        return None
    shared = SAME_X64_OFFSETS.get(build) if column is X64 else None
    if build not in per_build and shared in per_build:
        size, table = per_build[shared]
        offsets = {field_name: offset for field_name, (offset, _) in table.items()}
        kinds = {field_name: kind for field_name, (_, kind) in table.items()}
        return StructLayout(name, size or 0, offsets, kinds,
                            f"{SOURCE_BUILTIN} {arch} build {shared} table (the offsets of build {build})")
    table_build = build if build in per_build else nearest_build(per_build, build)
    size, table = per_build[table_build]
    offsets = {field_name: offset for field_name, (offset, _) in table.items()}
    kinds = {field_name: kind for field_name, (_, kind) in table.items()}
    source = f"{SOURCE_BUILTIN} {arch} build {table_build} table"
    if table_build != build:
        unverified = f"guessed for build {build or 'unknown'}, which has no table"
        source += f" ({unverified})"
    else:
        unverified = UNVERIFIED_BUILD_TABLES.get((name, pointer_size, table_build), "")
        if unverified:
            source += f" (build mapping UNVERIFIED: {unverified})"
    return StructLayout(name, size or 0, offsets, kinds, source, unverified=unverified,
                        guessed_from=table_build if table_build != build else None)


def nearest_build(tables: Mapping[int, object], build: Optional[int]) -> int:
    """The build of the table closest to ``build`` (the newest table when the build is unknown)."""
    if build is None:
        return max(tables)
    return min(tables, key=lambda candidate: (abs(candidate - build), -candidate))


class TypeSource(Protocol):
    """What Layouts needs from its owner (the kernel session, or in tests a bare Target)."""

    arch: str
    pointer_size: int
    build: Optional[int]

    def read(self, address: int, size: int) -> bytes: ...

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]: ...


class Layouts:
    """Resolves the structure layouts of one kernel: type information first, then the built-in tables.

    ``source.type_info`` answers from the best symbols there are (the debugger, a PDB, an ISF file or
    a recording); each answer names where it came from. Remembers which source served each structure,
    for the report.
    """

    def __init__(self, source: TypeSource):
        self.source = source
        self._cache: Dict[str, Optional[StructLayout]] = {}
        # Structures whose symbol layout was refused, with the reason, for the report's warnings.
        self.problems: Dict[str, str] = {}

    def get(self, name: str) -> StructLayout:
        layout = self.find(name)
        if layout is None:
            build = self.source.build
            raise LayoutError(
                f"the layout of {name} is unknown for {arch_named(self.source.arch).label} build "
                f"{build or 'unknown'} and there are no symbols for it")
        return layout

    def find(self, name: str) -> Optional[StructLayout]:
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def peek_certain(self, name: str) -> Optional[StructLayout]:
        """find(), but None instead of another build's table, and not recorded among the layouts used: for
        what only tells places apart and blames nobody (where a thread's kernel stack is)."""
        layout = self._cache[name] if name in self._cache else self._resolve(name)
        return None if layout is None or layout.guessed_from is not None else layout

    def _resolve(self, name: str) -> Optional[StructLayout]:
        builtin = builtin_layout(name, self.source.pointer_size, self.source.build, self.source.arch)
        info = self.source.type_info("nt!" + name, known_field_names(name))
        if info is None:
            return builtin
        implausible = _implausible_type_info(info)
        if implausible:
            self.problems[name] = (f"the symbols' layout of {name} was ignored ({implausible}); "
                                   + ("the built-in table was used" if builtin else "no built-in table exists"))
            return builtin
        offsets = {field_name: field_info.offset for field_name, field_info in info.fields.items()}
        kinds = {field_name: known_field_kind(name, field_name)
                 or _kind_from_size(field_info.size)
                 for field_name, field_info in info.fields.items()}
        sizes = {field_name: field_info.size for field_name, field_info in info.fields.items()}
        return StructLayout(name, info.size, offsets, kinds, info.source or SOURCE_DEBUGGER, sizes)

    def sources(self) -> Dict[str, str]:
        """Which source served each structure used so far: {"_MDL": "debugger symbols", ...}."""
        return {name: layout.source for name, layout in sorted(self._cache.items()) if layout is not None}

    def unverified(self) -> Dict[str, str]:
        """The structures used so far that came from a built-in table of UNVERIFIED build mapping (not
        counting another build's table, which ``guessed()`` lists)."""
        return {name: layout.unverified for name, layout in sorted(self._cache.items())
                if layout is not None and layout.unverified and layout.guessed_from is None}

    def borrowed(self) -> Dict[str, StructLayout]:
        """The structures used so far that came from another architecture's built-in column (ARM64's
        stable structures from the x64 tables)."""
        return {name: layout for name, layout in sorted(self._cache.items()) if layout is not None and layout.used_for}

    def unknown(self) -> List[str]:
        """The structures asked for so far that neither symbols nor a built-in table describe."""
        return sorted(name for name, layout in self._cache.items() if layout is None)

    def guessed(self) -> Dict[str, StructLayout]:
        """The structures used so far that came from another build's table (no table, no symbols)."""
        return {name: layout for name, layout in sorted(self._cache.items())
                if layout is not None and layout.guessed_from is not None}

    def view(self, name: str, address: int) -> "StructView":
        """Read the whole structure at ``address`` in one read and decode fields from it."""
        layout = self.get(name)
        size = layout.size or (max(layout.offsets.values()) + self.source.pointer_size)
        return StructView(layout, address, self.source.read(address, size), self.source.pointer_size)


def _implausible_type_info(info) -> str:
    """Why a layout from type information cannot be right, or "" (a damaged or hostile source)."""
    if info.size <= 0:
        return f"size {info.size}"
    for field_name, field_info in info.fields.items():
        if field_info.offset + max(field_info.size, 0) > info.size:
            return f"field {field_name} at {field_info.offset:#x} lies past the size {info.size:#x}"
    return ""


def _kind_from_size(size: int) -> str:
    return {1: "u8", 2: "u16", 4: "u32", 8: "u64"}.get(size, "struct")


def known_field_names(name: str) -> List[str]:
    """Every field leakhunt knows for ``name`` on any architecture or build, in table order."""
    names: List[str] = [field_name for field_name, _ in SYMBOLS_ONLY_LAYOUTS.get(name, [])]
    stable = STABLE_LAYOUTS.get(name) or OTHER_STABLE_LAYOUTS.get(name)
    if stable is not None:
        names = [row[0] for row in stable[0]]
    for per_build in (BUILD_LAYOUTS_X64, BUILD_LAYOUTS_X86):
        for _, table in per_build.get(name, {}).values():
            names.extend(field_name for field_name in table if field_name not in names)
    return names


def known_field_kind(name: str, field_name: str) -> Optional[str]:
    """How to decode a field (its C type does not change between builds even when it moves)."""
    for symbols_field, kind in SYMBOLS_ONLY_LAYOUTS.get(name, []):
        if symbols_field == field_name:
            return kind
    stable = STABLE_LAYOUTS.get(name) or OTHER_STABLE_LAYOUTS.get(name)
    if stable is not None:
        for row in stable[0]:
            if row[0] == field_name:
                return row[3]
    for per_build in (BUILD_LAYOUTS_X64, BUILD_LAYOUTS_X86):
        for _, table in per_build.get(name, {}).values():
            if field_name in table:
                return table[field_name][1]
    return None


def _unpacker(kind: str, pointer_size: int) -> Optional[struct.Struct]:
    """How a field of ``kind`` is decoded; None for an embedded structure or array."""
    if kind == "struct" or "[" in kind:
        return None
    return _POINTER_UNPACKERS[pointer_size] if kind == "ptr" else _KIND_UNPACKERS[kind]


# A field's decoder: (offset, bytes the data must hold to decode it, unpack_from or None).
FieldDecoder = Tuple[int, int, Optional[Callable[[bytes, int], Tuple[int]]]]
_UNREACHABLE = 1 << 62  # the data a field at a negative offset would need: more than any read holds


def _field_decoder(offset: int, unpacker: Optional[struct.Struct]) -> FieldDecoder:
    if unpacker is None:
        return offset, offset, None
    return offset, offset + unpacker.size if offset >= 0 else _UNREACHABLE, unpacker.unpack_from


class StructView:
    """The bytes of one structure instance, decoded field by field through its layout."""

    __slots__ = ("layout", "address", "data", "pointer_size", "_decoders")

    def __init__(self, layout: StructLayout, address: int, data: bytes, pointer_size: int):
        self.layout = layout
        self.address = address
        self.data = data
        self.pointer_size = pointer_size
        self._decoders = layout.decoders(pointer_size)

    def __getitem__(self, field_name: str) -> int:
        decoder = self._decoders.get(field_name)
        if decoder is None:
            raise self.layout.missing(field_name)
        offset, end, unpack_from = decoder
        if unpack_from is None:
            return self.address + offset
        if end > len(self.data):
            raise LayoutError(f"{self.layout.name}.{field_name} lies past the {len(self.data):#x} bytes read")
        return unpack_from(self.data, offset)[0]

    def address_of(self, field_name: str) -> int:
        return self.address + self.layout.offset(field_name)

    def bytes_of(self, field_name: str, length: int) -> bytes:
        offset = self.layout.offset(field_name)
        return self.data[offset:offset + length]
