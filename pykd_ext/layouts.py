"""Structure layouts: the one place where kernel structure offsets live.

A layout is taken from the target's own type information (debugger symbols) whenever the target
has it, and from the built-in tables below otherwise. Every built-in number comes from
`windows-kernel.md` section 4 (MinGW DDK headers cross-checked with public-PDB dumps) and is checked
by `tests/test_layouts.py`. Structures whose layout moves between Windows builds (`_EPROCESS`,
`_KTHREAD`, `_LOCK_TRACKER`...) are keyed by architecture and build.

Field kinds say how to decode a field: ``u8``, ``u16``, ``u32``, ``u64``, ``ptr`` (pointer-sized),
``i16`` (CSHORT) or ``struct`` (an embedded structure: only its offset is meaningful).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from .targets.base import Target

SOURCE_SYMBOLS = "symbols"
SOURCE_BUILTIN = "built-in"


class LayoutError(Exception):
    """A structure or field layout is not known for this target."""


@dataclass(frozen=True)
class StructLayout:
    name: str  # e.g. "_MDL"
    size: int
    offsets: Mapping[str, int]
    kinds: Mapping[str, str]
    source: str  # SOURCE_SYMBOLS or a description of the built-in table used

    def offset(self, field_name: str) -> int:
        try:
            return self.offsets[field_name]
        except KeyError:
            raise LayoutError(f"{self.name}.{field_name} is not in the {self.source} layout") from None

    def has(self, field_name: str) -> bool:
        return field_name in self.offsets


# Field kind -> byte size, for the fixed-size kinds.
KIND_SIZES = {"u8": 1, "u16": 2, "i16": 2, "u32": 4, "u64": 8}


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
}

# Length of EPROCESS.ImageFileName (UCHAR[15]).
IMAGE_FILE_NAME_LENGTH = 15


def builtin_layout(name: str, pointer_size: int, build: Optional[int] = None) -> Optional[StructLayout]:
    """The built-in layout of ``name`` for an architecture (and build), or None if not known."""
    arch = "x64" if pointer_size == 8 else "x86"
    if name in STABLE_LAYOUTS:
        rows, size64, size32 = STABLE_LAYOUTS[name]
        offsets, kinds = _fields(pointer_size, rows)
        return StructLayout(name, size64 if pointer_size == 8 else size32, offsets, kinds,
                            f"{SOURCE_BUILTIN} {arch} table")
    per_build = BUILD_LAYOUTS_X64.get(name) if pointer_size == 8 else None
    if per_build and build in per_build:
        size, table = per_build[build]
        offsets = {field_name: offset for field_name, (offset, _) in table.items()}
        kinds = {field_name: kind for field_name, (_, kind) in table.items()}
        return StructLayout(name, size or 0, offsets, kinds, f"{SOURCE_BUILTIN} {arch} build {build} table")
    return None


class Layouts:
    """Resolves the layouts of one target: symbols first, then the built-in tables.

    Remembers which source served each structure, for the report.
    """

    def __init__(self, target: Target):
        self.target = target
        self._cache: Dict[str, Optional[StructLayout]] = {}

    def get(self, name: str) -> StructLayout:
        layout = self.find(name)
        if layout is None:
            build = self.target.build
            raise LayoutError(
                f"the layout of {name} is unknown for {self.target.arch} build {build or 'unknown'} "
                f"and the target has no type information for it")
        return layout

    def find(self, name: str) -> Optional[StructLayout]:
        if name not in self._cache:
            self._cache[name] = self._resolve(name)
        return self._cache[name]

    def _resolve(self, name: str) -> Optional[StructLayout]:
        builtin = builtin_layout(name, self.target.pointer_size, self.target.build)
        info = self.target.type_info("nt!" + name, known_field_names(name))
        if info is None:
            return builtin
        offsets = {field_name: field_info.offset for field_name, field_info in info.fields.items()}
        kinds = {field_name: known_field_kind(name, field_name)
                 or _kind_from_size(field_info.size)
                 for field_name, field_info in info.fields.items()}
        return StructLayout(name, info.size, offsets, kinds, SOURCE_SYMBOLS)

    def sources(self) -> Dict[str, str]:
        """Which source served each structure used so far: {"_MDL": "symbols", ...}."""
        return {name: layout.source for name, layout in sorted(self._cache.items()) if layout is not None}

    def view(self, name: str, address: int) -> "StructView":
        """Read the whole structure at ``address`` in one read and decode fields from it."""
        layout = self.get(name)
        size = layout.size or (max(layout.offsets.values()) + self.target.pointer_size)
        return StructView(layout, address, self.target.read(address, size), self.target.pointer_size)


def _kind_from_size(size: int) -> str:
    return {1: "u8", 2: "u16", 4: "u32", 8: "u64"}.get(size, "struct")


def known_field_names(name: str) -> List[str]:
    """Every field leakhunt knows for ``name`` on any architecture or build, in table order."""
    names: List[str] = []
    if name in STABLE_LAYOUTS:
        names = [row[0] for row in STABLE_LAYOUTS[name][0]]
    for _, table in BUILD_LAYOUTS_X64.get(name, {}).values():
        names.extend(field_name for field_name in table if field_name not in names)
    return names


def known_field_kind(name: str, field_name: str) -> Optional[str]:
    """How to decode a field (its C type does not change between builds even when it moves)."""
    if name in STABLE_LAYOUTS:
        for row in STABLE_LAYOUTS[name][0]:
            if row[0] == field_name:
                return row[3]
    for _, table in BUILD_LAYOUTS_X64.get(name, {}).values():
        if field_name in table:
            return table[field_name][1]
    return None


@dataclass
class StructView:
    """The bytes of one structure instance, decoded field by field through its layout."""

    layout: StructLayout
    address: int
    data: bytes
    pointer_size: int

    def __getitem__(self, field_name: str) -> int:
        offset = self.layout.offset(field_name)
        kind = self.layout.kinds.get(field_name, "struct")
        if kind == "struct":
            return self.address + offset
        if kind == "ptr":
            fmt = "<Q" if self.pointer_size == 8 else "<I"
        else:
            fmt = {"u8": "<B", "u16": "<H", "i16": "<h", "u32": "<I", "u64": "<Q"}[kind]
        end = offset + struct.calcsize(fmt)
        if end > len(self.data):
            raise LayoutError(f"{self.layout.name}.{field_name} lies past the {len(self.data):#x} bytes read")
        return struct.unpack_from(fmt, self.data, offset)[0]

    def address_of(self, field_name: str) -> int:
        return self.address + self.layout.offset(field_name)

    def bytes_of(self, field_name: str, length: int) -> bytes:
        offset = self.layout.offset(field_name)
        return self.data[offset:offset + length]
