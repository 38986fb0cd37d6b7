"""The triage section of a small memory dump (DumpType 4): what a kernel minidump holds beyond its header.

A small dump (``C:\\Windows\\Minidump\\*.dmp``) has no physical memory. After the dump header comes a
``TRIAGE_DUMP`` (at 0x2000 in a 64-bit dump, 0x1000 in a 32-bit one): a table of file offsets to the
copies the kernel made when it crashed. Every offset is from the start of the file.

=========================  =========================================================================
field                      what is there
=========================  =========================================================================
ServicePackBuild           u32
SizeOfDump                 u32: bytes of triage data (the file may be longer: secondary data follows)
ValidOffset                u32: offset of the dword ``TRGD`` that marks the section complete
ContextOffset              CONTEXT of the crashing processor (the header's own ContextRecord)
ExceptionOffset            EXCEPTION_RECORD64 (the header's Exception)
MmOffset                   DUMP_MM_STORAGE (Version, Size, pool and verifier counters)
UnloadedDriversOffset      u32 count (padded to 8), then DUMP_UNLOADED_DRIVERS entries
PrcbOffset                 copy of the crashing processor's KPRCB
ProcessOffset              copy of the crashing thread's EPROCESS
ThreadOffset               copy of the crashing thread's ETHREAD
CallStackOffset, Size      copy of the crashing thread's kernel stack from TopOfStack up
DriverListOffset, Count    DUMP_DRIVER_ENTRY: a string-pool offset of the image path, then a copy of
                           the image's ``_KLDR_DATA_TABLE_ENTRY`` (DllBase, SizeOfImage, TimeDateStamp)
StringPoolOffset, Size     strings: a u32 length in characters, then UTF-16LE
BrokenDriverOffset         a string: the image the kernel blamed (its copy of KiBugCheckDriver), or 0
TriageOptions              u32
TopOfStack                 pointer: the virtual address of the first byte of the stack copy
ArchitectureSpecific       16 bytes (IA-64 backing store; unused on x64 and ARM64)
DataPage Address/Offset/   64-bit only: one extra page of data (0 when absent)
Size
DebuggerDataOffset, Size   copy of the KDDEBUGGER_DATA64 block (at the header's KdDebuggerDataBlock)
DataBlocksOffset, Count    TRIAGE_DATA_BLOCK {pointer VirtualAddress, u32 Offset, u32 Size}: memory
                           the kernel chose to keep, each at its virtual address
=========================  =========================================================================

The layout is the one described by the public dump parsers of rizin (``librz/bin/format/dmp/
dmp_specs.h``) and Ghidra (``ghidra/file/formats/dump/pagedump/TriageDump.java``), and was checked
field by field against the two real small dumps in the test samples (x64 build 19041, ARM64 build
22000): the x64 dump's first driver entry is ntoskrnl.exe at 0xfffff8047ba00000, the header's
PsLoadedModuleList lies inside it, and every string, block and copy lies inside the file. The 32-bit
layout (at 0x1000, 32-bit fields) follows the same descriptions and has no real sample to check it.

Every offset and count is checked against the file size; anything impossible raises ``TriageError``
naming it (the caller falls back to the header alone).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Dict, List, Optional, Tuple

from ..arch import arch_named
from .dumpheader import DumpFileError, DumpHeader, HEADER32_SIZE, HEADER64_SIZE

TRIAGE_VALID = b"TRGD"

# TRIAGE_DUMP field order; the 64-bit section widens TopOfStack, has the DataPage fields and pads the
# IA-64 ArchitectureSpecific union to 16 bytes.
TRIAGE_FIELDS = ("ServicePackBuild", "SizeOfDump", "ValidOffset", "ContextOffset", "ExceptionOffset", "MmOffset",
                  "UnloadedDriversOffset", "PrcbOffset", "ProcessOffset", "ThreadOffset", "CallStackOffset",
                  "SizeOfCallStack", "DriverListOffset", "DriverCount", "StringPoolOffset", "StringPoolSize",
                  "BrokenDriverOffset", "TriageOptions")
TRIAGE_TAIL_FIELDS = ("DebuggerDataOffset", "DebuggerDataSize", "DataBlocksOffset", "DataBlocksCount")
TRIAGE64_TOP_OF_STACK = 0x48  # u64, after the 18 dwords
TRIAGE64_DATA_PAGE = 0x60  # u64 DataPageAddress, u32 DataPageOffset, u32 DataPageSize
TRIAGE64_TAIL = 0x70
TRIAGE64_SIZE = 0x80
TRIAGE32_TOP_OF_STACK = 0x48  # u32
TRIAGE32_TAIL = 0x58  # after three dwords of architecture-specific data
TRIAGE32_SIZE = 0x68


@dataclass(frozen=True)
class EntryLayout:
    """Sizes and offsets of the per-pointer-size triage records."""

    driver_entry: int  # sizeof DUMP_DRIVER_ENTRY
    ldr_entry: int  # offset of the _KLDR_DATA_TABLE_ENTRY copy in it
    dll_base: int  # offsets inside that copy
    size_of_image: int
    check_sum: int
    time_date_stamp: int
    unloaded_entry: int  # sizeof DUMP_UNLOADED_DRIVERS: UNICODE_STRING, WCHAR[12], start, end
    unloaded_name: int
    unloaded_start: int
    data_block: int  # sizeof TRIAGE_DATA_BLOCK


ENTRY_LAYOUTS = {
    8: EntryLayout(driver_entry=0x90, ldr_entry=0x08, dll_base=0x30, size_of_image=0x40, check_sum=0x78,
                   time_date_stamp=0x80, unloaded_entry=0x38, unloaded_name=0x10, unloaded_start=0x28, data_block=0x10),
    4: EntryLayout(driver_entry=0x48, ldr_entry=0x04, dll_base=0x18, size_of_image=0x20, check_sum=0x3C,
                   time_date_stamp=0x40, unloaded_entry=0x28, unloaded_name=0x08, unloaded_start=0x20, data_block=0x0C),
}
UNLOADED_NAME_CHARACTERS = 12  # DUMP_UNLOADED_DRIVERS keeps only the first 12 characters of a name
UNLOADED_COUNT_SIZE = 8  # the u32 count is padded to 8 bytes before the entries (both samples)

# Caps on counts and sizes: beyond these the section is damaged (Windows keeps 50 unloaded drivers, a
# kernel a few hundred images, a small dump a few MiB).
MAX_DRIVERS = 4096
MAX_UNLOADED = 64
MAX_DATA_BLOCKS = 1 << 16
MAX_STRING_CHARACTERS = 1024
MAX_COPY_BYTES = 1 << 24


class TriageError(DumpFileError):
    """The triage section of a small dump is missing or damaged."""


class TriageTruncated(TriageError):
    """The file ends before the triage section does: ``needed`` bytes are what its header says the
    section holds (SizeOfDump, or the section's own header)."""

    def __init__(self, needed: int, what: str):
        super().__init__(what)
        self.needed = needed
        self.what = what


@dataclass(frozen=True)
class DriverEntry:
    """One loaded image of the triage driver list."""

    path: str  # as the string pool has it, e.g. \SystemRoot\system32\ntoskrnl.exe
    base: int
    size: int
    timestamp: int  # TimeDateStamp of the image's PE header
    check_sum: int

    @property
    def image(self) -> str:
        return self.path.rsplit("\\", 1)[-1]


@dataclass(frozen=True)
class UnloadedDriver:
    """One entry of the kernel's unloaded-driver list (MmUnloadedDrivers) as the dump copied it."""

    name: str  # at most UNLOADED_NAME_CHARACTERS characters
    start: int
    end: int

    @property
    def truncated(self) -> bool:
        return len(self.name) >= UNLOADED_NAME_CHARACTERS and "." not in self.name

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end


@dataclass(frozen=True)
class DataBlock:
    address: int  # virtual address of the first byte
    offset: int  # where the bytes are in the file
    size: int


@dataclass
class TriageDump:
    """The decoded triage section of one small dump."""

    fields: Dict[str, int]  # every TRIAGE_DUMP field by name
    drivers: List[DriverEntry]
    unloaded: List[UnloadedDriver]
    blocks: List[DataBlock]  # the data blocks, then the debugger data block
    broken_driver: Optional[str]
    registers: List[Tuple[str, int]]  # (name, value) from the context record, program counter first

    @property
    def top_of_stack(self) -> int:
        return self.fields["TopOfStack"]

    def copy(self, name: str) -> Tuple[int, int]:
        """(file offset, size) of the Prcb, Process, Thread or CallStack copy."""
        return _copy_extent(self.fields, name)


def _copy_extent(fields: Dict[str, int], name: str) -> Tuple[int, int]:
    """(file offset, size) of a copy. The Prcb, Process and Thread copies carry no size: each one ends
    where the next part of the section begins (in both real samples: Prcb, Process, Thread, CallStack)."""
    offset = fields[name + "Offset"]
    if name == "CallStack":
        return offset, fields["SizeOfCallStack"]
    if not offset:
        return 0, 0
    following = [fields[field] for field in SECTION_PARTS if fields[field] > offset]
    return offset, (min(following) - offset) if following else 0


# The parts of the section, by the fields that give their offsets.
SECTION_PARTS = ("ContextOffset", "ExceptionOffset", "MmOffset", "UnloadedDriversOffset", "PrcbOffset",
                 "ProcessOffset", "ThreadOffset", "CallStackOffset", "DriverListOffset", "StringPoolOffset",
                 "DebuggerDataOffset", "DataBlocksOffset", "ValidOffset")
COPIES = ("Prcb", "Process", "Thread", "CallStack")


class _File:
    """Bounded reads of the dump file: every read past the end or beyond ``limit`` is a TriageError."""

    def __init__(self, handle: BinaryIO, size: int):
        self.handle = handle
        self.size = size

    def check(self, offset: int, size: int, what: str) -> None:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise TriageError(f"its {what} ({size:#x} bytes at {offset:#x}) lies past the end of the file "
                              f"({self.size:#x} bytes)")

    def read(self, offset: int, size: int, what: str) -> bytes:
        self.check(offset, size, what)
        self.handle.seek(offset)
        data = self.handle.read(size)
        if len(data) != size:
            raise TriageError(f"its {what} at {offset:#x} could not be read whole")
        return data


def read_triage(handle: BinaryIO, header: DumpHeader) -> TriageDump:
    """Decode the triage section after ``header``. Raises TriageError saying what is damaged."""
    source = _File(handle, header.file_size)
    width = header.pointer_size
    fields = _section_fields(source, header)
    valid = fields["ValidOffset"]
    if fields["SizeOfDump"] > header.file_size and valid + 4 > header.file_size:
        # The section's own size and its completion marker both lie past the end: the file was cut short.
        raise TriageTruncated(fields["SizeOfDump"], "its triage section (SizeOfDump) holds")
    if source.read(valid, 4, "TRGD marker") != TRIAGE_VALID:
        raise TriageError(f"the dword at its ValidOffset {valid:#x} is not TRGD (an incomplete triage section)")
    for name in COPIES:
        offset, size = _copy_extent(fields, name)
        if size < 0 or size > MAX_COPY_BYTES:
            raise TriageError(f"its {name} copy has an impossible size ({size:#x} bytes at {offset:#x})")
        source.check(offset, size, f"{name} copy")
    layout = ENTRY_LAYOUTS[width]
    pool = _StringPool(source, fields["StringPoolOffset"], fields["StringPoolSize"])
    drivers = _drivers(source, fields, layout, width, pool)
    unloaded = _unloaded(source, fields, layout, width)
    blocks = _blocks(source, fields, header, layout, width)
    broken = None
    if fields["BrokenDriverOffset"]:
        broken = pool.string(fields["BrokenDriverOffset"], "broken-driver name", inside_pool=False)
    registers = _registers(source, fields, header)
    return TriageDump(fields, drivers, unloaded, blocks, broken, registers)


def _section_fields(source: _File, header: DumpHeader) -> Dict[str, int]:
    start = HEADER64_SIZE if header.pointer_size == 8 else HEADER32_SIZE
    size = TRIAGE64_SIZE if header.pointer_size == 8 else TRIAGE32_SIZE
    if header.file_size < start + size:
        raise TriageTruncated(start + size, "a small dump's header and triage section header take")
    raw = source.read(start, size, "triage section")
    fields = dict(zip(TRIAGE_FIELDS, struct.unpack_from(f"<{len(TRIAGE_FIELDS)}I", raw, 0)))
    if header.pointer_size == 8:
        fields["TopOfStack"] = struct.unpack_from("<Q", raw, TRIAGE64_TOP_OF_STACK)[0]
        fields["DataPageAddress"], fields["DataPageOffset"], fields["DataPageSize"] = \
            struct.unpack_from("<QII", raw, TRIAGE64_DATA_PAGE)
        tail = TRIAGE64_TAIL
    else:
        fields["TopOfStack"] = struct.unpack_from("<I", raw, TRIAGE32_TOP_OF_STACK)[0]
        fields["DataPageAddress"] = fields["DataPageOffset"] = fields["DataPageSize"] = 0
        tail = TRIAGE32_TAIL
    fields.update(zip(TRIAGE_TAIL_FIELDS, struct.unpack_from("<4I", raw, tail)))
    for name, cap in (("DriverCount", MAX_DRIVERS), ("DataBlocksCount", MAX_DATA_BLOCKS)):
        if fields[name] > cap:
            raise TriageError(f"its {name} {fields[name]} is beyond any real small dump's ({cap})")
    return fields


class _StringPool:
    """The string pool: each string a u32 count of UTF-16 characters, then the characters."""

    def __init__(self, source: _File, offset: int, size: int):
        source.check(offset, size, "string pool")
        self.source = source
        self.start = offset
        self.end = offset + size

    def string(self, offset: int, what: str, inside_pool: bool = True) -> str:
        if inside_pool and not self.start <= offset < self.end:
            raise TriageError(f"its {what} at {offset:#x} is outside the string pool "
                              f"[{self.start:#x}, {self.end:#x})")
        count = struct.unpack("<I", self.source.read(offset, 4, what))[0]
        if count > MAX_STRING_CHARACTERS:
            raise TriageError(f"its {what} at {offset:#x} claims {count} characters")
        if inside_pool and offset + 4 + 2 * count > self.end:
            raise TriageError(f"its {what} at {offset:#x} runs past the end of the string pool")
        raw = self.source.read(offset + 4, 2 * count, what)
        return raw.decode("utf-16-le", errors="replace").split("\0", 1)[0]


def _pointer(raw: bytes, offset: int, width: int) -> int:
    return struct.unpack_from("<Q" if width == 8 else "<I", raw, offset)[0]


def _drivers(source: _File, fields: Dict[str, int], layout: EntryLayout, width: int,
             pool: _StringPool) -> List[DriverEntry]:
    count = fields["DriverCount"]
    raw = source.read(fields["DriverListOffset"], count * layout.driver_entry, "driver list")
    drivers = []
    for index in range(count):
        entry = index * layout.driver_entry
        ldr = entry + layout.ldr_entry
        name_offset = struct.unpack_from("<I", raw, entry)[0]
        path = pool.string(name_offset, f"name of driver entry {index}")
        drivers.append(DriverEntry(
            path=path,
            base=_pointer(raw, ldr + layout.dll_base, width),
            size=struct.unpack_from("<I", raw, ldr + layout.size_of_image)[0],
            timestamp=struct.unpack_from("<I", raw, ldr + layout.time_date_stamp)[0],
            check_sum=struct.unpack_from("<I", raw, ldr + layout.check_sum)[0]))
    return drivers


def _unloaded(source: _File, fields: Dict[str, int], layout: EntryLayout, width: int) -> List[UnloadedDriver]:
    offset = fields["UnloadedDriversOffset"]
    if not offset:
        return []
    count = struct.unpack("<I", source.read(offset, 4, "unloaded-driver count"))[0]
    if count > MAX_UNLOADED:
        raise TriageError(f"its unloaded-driver list claims {count} entries")
    raw = source.read(offset + UNLOADED_COUNT_SIZE, count * layout.unloaded_entry, "unloaded-driver list")
    drivers = []
    for index in range(count):
        entry = index * layout.unloaded_entry
        length = min(struct.unpack_from("<H", raw, entry)[0], 2 * UNLOADED_NAME_CHARACTERS)
        name = raw[entry + layout.unloaded_name:entry + layout.unloaded_name + length].decode(
            "utf-16-le", errors="replace").split("\0", 1)[0]
        start = _pointer(raw, entry + layout.unloaded_start, width)
        end = _pointer(raw, entry + layout.unloaded_start + width, width)
        drivers.append(UnloadedDriver(name, start, end))
    return drivers


def _blocks(source: _File, fields: Dict[str, int], header: DumpHeader, layout: EntryLayout,
            width: int) -> List[DataBlock]:
    count = fields["DataBlocksCount"]
    raw = source.read(fields["DataBlocksOffset"], count * layout.data_block, "data block table") if count else b""
    blocks = []
    for index in range(count):
        entry = index * layout.data_block
        address = _pointer(raw, entry, width)
        offset, size = struct.unpack_from("<II", raw, entry + width)
        source.check(offset, size, f"data block {index}")
        if address + size > 1 << (8 * width):
            raise TriageError(f"its data block {index} at {address:#x} runs past the end of the address space")
        blocks.append(DataBlock(address, offset, size))
    if fields["DebuggerDataOffset"] and fields["DebuggerDataSize"] and header.kd_debugger_data_block:
        offset, size = fields["DebuggerDataOffset"], fields["DebuggerDataSize"]
        source.check(offset, size, "debugger data copy")
        blocks.append(DataBlock(header.kd_debugger_data_block, offset, size))
    return blocks


def _registers(source: _File, fields: Dict[str, int], header: DumpHeader) -> List[Tuple[str, int]]:
    """The registers of the crashing processor's CONTEXT that the architecture's reports show."""
    context = arch_named(header.arch).context
    if context is None or header.pointer_size != 8 or not fields["ContextOffset"]:
        return []
    extent = max(sum(context.registers[name]) for name in context.shown)  # the record up to the last one shown
    return context.read(source.read(fields["ContextOffset"], extent, "context record"))
