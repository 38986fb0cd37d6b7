"""PE images: the headers of a loaded image or of an image file, and what their directories point to.

Read through a ``read(rva, size) -> bytes`` callable, so that one parser serves an image loaded in the
target's memory (``read(base + rva)``) and an image file on disk (``PeImage.from_file``: the RVA is
mapped to a file offset through the section table). Formats as the Microsoft PE format specification
gives them:

- IMAGE_DOS_HEADER (``MZ``, ``e_lfanew`` at 0x3C) -> ``PE\\0\\0`` and the 20-byte COFF file header
  (Machine, NumberOfSections at +2, TimeDateStamp at +4, SizeOfOptionalHeader at +16) -> the optional
  header (Magic 0x10B PE32 / 0x20B PE32+; ImageBase at 28 (u32) / 24 (u64); SizeOfImage at 56,
  SizeOfHeaders at 60; NumberOfRvaAndSizes at 92 / 108, then the data directories, 8 bytes each:
  2 resources, 3 exceptions (``.pdata``), 6 debug) -> the section table (40-byte IMAGE_SECTION_HEADERs:
  Name, VirtualSize, VirtualAddress, SizeOfRawData, PointerToRawData, ..., Characteristics at 36);
- the debug directory: IMAGE_DEBUG_DIRECTORY entries (28 bytes: Type at 12, SizeOfData at 16,
  AddressOfRawData at 20, an RVA, PointerToRawData at 24); the IMAGE_DEBUG_TYPE_CODEVIEW (2) record
  ``RSDS``, a 16-byte GUID, a 4-byte age and the NUL-terminated PDB path names the PDB by identity. In
  a loaded image the debug data is found by its RVA, not by PointerToRawData (a file offset);
- the version resource: the resource directory tree (type RT_VERSION 16 -> first name -> first
  language -> IMAGE_RESOURCE_DATA_ENTRY, whose OffsetToData is an RVA), then VS_VERSIONINFO: its
  VS_FIXEDFILEINFO (signature 0xFEEF04BD; FileVersionMS/LS, ProductVersionMS/LS) and the
  StringFileInfo's ``FileVersion`` string.

Every offset and length is checked against what was read and against SizeOfImage. A page that is not
in the source raises the source's MemoryReadError; bytes that are not a PE image raise NotAPeImage.
"""
from __future__ import annotations

import ntpath
import os
import struct
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from ..targets.base import TargetError
from .base import PdbIdentity, file_stamp

Reader = Callable[[int, int], bytes]

DOS_HEADER_SIZE = 0x40
E_LFANEW_OFFSET = 0x3C
PE_SIGNATURE = b"PE\x00\x00"
FILE_HEADER_SIZE = 20
PE32_MAGIC = 0x10B
PE32_PLUS_MAGIC = 0x20B
# Optional header offsets (PE32, PE32+).
SIZE_OF_IMAGE_OFFSET = 56
SIZE_OF_HEADERS_OFFSET = 60
SECTION_ALIGNMENT_OFFSET = 32
IMAGE_BASE_OFFSET = {PE32_MAGIC: (28, "<I"), PE32_PLUS_MAGIC: (24, "<Q")}
NUMBER_OF_RVA_AND_SIZES_OFFSET = {PE32_MAGIC: 92, PE32_PLUS_MAGIC: 108}
MAX_DATA_DIRECTORIES = 16
IMAGE_DIRECTORY_ENTRY_RESOURCE = 2
IMAGE_DIRECTORY_ENTRY_EXCEPTION = 3
IMAGE_DIRECTORY_ENTRY_DEBUG = 6
SECTION_HEADER_SIZE = 40
DEBUG_DIRECTORY_ENTRY_SIZE = 28
IMAGE_DEBUG_TYPE_CODEVIEW = 2
RSDS_SIGNATURE = b"RSDS"
RSDS_HEADER_SIZE = 24  # signature, GUID, age
RT_VERSION = 16
RESOURCE_DIRECTORY_SIZE = 16
RESOURCE_ENTRY_SIZE = 8
RESOURCE_SUBDIRECTORY = 0x80000000
VS_FIXEDFILEINFO_SIGNATURE = 0xFEEF04BD
# Bounds for values a hostile header could make huge: e_lfanew is a few hundred bytes in practice, a
# debug directory a handful of entries, a PDB path at most a few hundred characters; the Windows
# loader refuses more than 96 sections; a version resource is a few KiB.
MAX_E_LFANEW = 0x10000
MAX_DEBUG_ENTRIES = 64
MAX_CODEVIEW_SIZE = RSDS_HEADER_SIZE + 1024
MAX_SECTIONS = 96
MAX_RESOURCE_ENTRIES = 4096
MAX_VERSION_RESOURCE = 0x10000
MAX_VERSION_BLOCKS = 256
# An image file's first bytes, kept when it is opened: its headers (SizeOfHeaders is 0x400-0x1000).
FILE_HEAD_BYTES = 0x2000
# One read of an image file: a directory, a resource, a function table; never a whole large image.
MAX_FILE_READ = 64 << 20
# An image file is read in chunks of this size, the last few kept (its function table is read entry by
# entry): 1 MiB of a file at most.
FILE_CHUNK_BYTES = 1 << 16
MAX_FILE_CHUNKS = 16


class NotAPeImage(TargetError):
    """The bytes at the address are not a PE image, or its headers are inconsistent."""


@dataclass(frozen=True)
class Section:
    """One IMAGE_SECTION_HEADER."""

    name: str
    virtual_address: int
    virtual_size: int
    raw_size: int
    raw_pointer: int
    characteristics: int

    @property
    def mapped_size(self) -> int:
        """The bytes the section spans in the loaded image (a VirtualSize of 0: its raw size)."""
        return self.virtual_size or self.raw_size


@dataclass(frozen=True)
class DebugEntry:
    """One IMAGE_DEBUG_DIRECTORY entry."""

    type: int  # IMAGE_DEBUG_TYPE_* (2 CodeView, 13 POGO, 16 repro, ...)
    size: int
    rva: int  # AddressOfRawData; 0 when the data is not mapped
    file_pointer: int  # PointerToRawData


@dataclass(frozen=True)
class ImageVersion:
    """What the version resource says: ``file_version`` is the VS_FIXEDFILEINFO's (``10.0.19041.1110``,
    the IMAGE_VERSION of ``!analyze``), ``file_version_text`` the FileVersion string (``10.0.19041.1110
    (WinBuild.160101.0800)``, "" when the resource has none)."""

    file_version: str
    product_version: str
    file_version_text: str = ""


@dataclass(frozen=True)
class ImageIdentity:
    """What the headers of one loaded image say about it."""

    base: int
    machine: int  # IMAGE_FILE_MACHINE_* (0x8664 x64, 0x14C x86, 0xAA64 ARM64)
    pe32_plus: bool
    time_date_stamp: int
    size_of_image: int
    pdb: Optional[PdbIdentity]  # None when the image names no PDB (see ``no_pdb_reason``)
    pdb_path: str = ""  # the path the linker wrote, e.g. "ntkrnlmp.pdb"
    no_pdb_reason: str = ""


class PeImage:
    """The headers of one PE image, read through ``read(rva, size)``; the directories are read when
    asked for. ``where`` says which image in messages (``at 0xfffff8047ba00000``, ``in amdppm.sys``)."""

    def __init__(self, read: Reader, where: str):
        self._read = read
        self.where = where
        self.path: Optional[str] = None  # the image file's, for an image read from disk
        self._function_tables: Dict[int, Optional[bytes]] = {}
        dos = self._bytes(0, DOS_HEADER_SIZE, "IMAGE_DOS_HEADER")
        if dos[:2] != b"MZ":
            raise NotAPeImage(f"no PE image {where}: it does not start with MZ")
        e_lfanew = struct.unpack_from("<I", dos, E_LFANEW_OFFSET)[0]
        if not DOS_HEADER_SIZE <= e_lfanew <= MAX_E_LFANEW:
            raise NotAPeImage(f"no PE image {where}: e_lfanew {e_lfanew:#x} is out of range")
        nt = self._bytes(e_lfanew, 4 + FILE_HEADER_SIZE + 2, "IMAGE_NT_HEADERS")
        if nt[:4] != PE_SIGNATURE:
            raise NotAPeImage(f"no PE image {where}: no PE signature at e_lfanew {e_lfanew:#x}")
        self.machine, section_count, self.time_date_stamp = struct.unpack_from("<HHI", nt, 4)
        size_of_optional_header = struct.unpack_from("<H", nt, 4 + 16)[0]
        magic = struct.unpack_from("<H", nt, 4 + FILE_HEADER_SIZE)[0]
        if magic not in (PE32_MAGIC, PE32_PLUS_MAGIC):
            raise NotAPeImage(f"no PE image {where}: optional header magic {magic:#x} is neither PE32 nor PE32+")
        self.pe32_plus = magic == PE32_PLUS_MAGIC
        optional_at = e_lfanew + 4 + FILE_HEADER_SIZE
        directories_at = NUMBER_OF_RVA_AND_SIZES_OFFSET[magic] + 4
        if size_of_optional_header < directories_at:
            raise NotAPeImage(f"the PE image {where} has a {size_of_optional_header}-byte optional header, "
                              f"too short for its own fields")
        optional = self._bytes(optional_at, min(size_of_optional_header,
                                                directories_at + 8 * MAX_DATA_DIRECTORIES), "IMAGE_OPTIONAL_HEADER")
        self.size_of_image = struct.unpack_from("<I", optional, SIZE_OF_IMAGE_OFFSET)[0]
        self.size_of_headers = struct.unpack_from("<I", optional, SIZE_OF_HEADERS_OFFSET)[0]
        self.section_alignment = struct.unpack_from("<I", optional, SECTION_ALIGNMENT_OFFSET)[0]
        base_offset, base_format = IMAGE_BASE_OFFSET[magic]
        self.image_base = struct.unpack_from(base_format, optional, base_offset)[0]
        headers_end = optional_at + size_of_optional_header
        if self.size_of_image < headers_end:
            raise NotAPeImage(f"the PE image {where} is inconsistent: SizeOfImage {self.size_of_image:#x} is "
                              f"smaller than its headers")
        count = struct.unpack_from("<I", optional, NUMBER_OF_RVA_AND_SIZES_OFFSET[magic])[0]
        count = min(count, MAX_DATA_DIRECTORIES, (len(optional) - directories_at) // 8)
        self.directories: List[Tuple[int, int]] = [struct.unpack_from("<II", optional, directories_at + 8 * n)
                                                    for n in range(count)]
        if section_count > MAX_SECTIONS:
            raise NotAPeImage(f"the PE image {where} claims {section_count} sections (the loader takes at most "
                              f"{MAX_SECTIONS})")
        table = self._bytes(headers_end, SECTION_HEADER_SIZE * section_count, "section table") if section_count \
            else b""
        self.sections = [_section(table, n * SECTION_HEADER_SIZE) for n in range(section_count)]

    @classmethod
    def from_file(cls, path: str) -> "PeImage":
        """The image file at ``path`` (read-only): headers at their file offsets, the rest through the
        section table, read when asked for. OSError passes through; what is not a PE image raises
        NotAPeImage."""
        layout = _FileLayout(path)
        image = cls(layout, f"in {os.path.basename(path)}")
        layout.map_sections(image.sections, image.size_of_headers, image.section_alignment)
        image.path = path
        return image

    # ---- what the directories give ----

    def directory(self, index: int) -> Optional[Tuple[int, int]]:
        """(RVA, size) of data directory ``index``, or None when the image has no such directory."""
        if index >= len(self.directories):
            return None
        rva, size = self.directories[index]
        return (rva, size) if rva and size else None

    @property
    def exception_directory(self) -> Optional[Tuple[int, int]]:
        """(RVA, size) of the exception directory (the ``.pdata`` function table), or None."""
        return self.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)

    def function_table(self, entry_size: int) -> Optional[bytes]:
        """The exception directory's whole entries (``entry_size`` bytes each), read once in one piece (an
        image file is kept for the process: every dump of a fleet searches the same bytes); None, also
        remembered, where they cannot be read in one piece."""
        if entry_size not in self._function_tables:
            table, size = self.exception_directory or (0, 0)
            try:
                self._function_tables[entry_size] = self.read(table, size - size % entry_size) \
                    if size >= entry_size else b""
            except TargetError:
                self._function_tables[entry_size] = None
        return self._function_tables[entry_size]

    def debug_entries(self) -> List[DebugEntry]:
        """The debug directory's entries (at most MAX_DEBUG_ENTRIES)."""
        found = self.directory(IMAGE_DIRECTORY_ENTRY_DEBUG)
        if found is None:
            return []
        rva, size = found
        self._check_inside(rva, size, "debug directory")
        count = min(size // DEBUG_DIRECTORY_ENTRY_SIZE, MAX_DEBUG_ENTRIES)
        data = self._bytes(rva, count * DEBUG_DIRECTORY_ENTRY_SIZE, "debug directory")
        return [DebugEntry(*struct.unpack_from("<IIII", data, n * DEBUG_DIRECTORY_ENTRY_SIZE + 12))
                for n in range(count)]

    def codeview(self) -> Tuple[Optional[PdbIdentity], str, str]:
        """(the PDB identity of the RSDS record, the PDB path the linker wrote, "") or (None, "", why not)."""
        if len(self.directories) <= IMAGE_DIRECTORY_ENTRY_DEBUG:
            return None, "", "the image has no debug data directory"
        if self.directory(IMAGE_DIRECTORY_ENTRY_DEBUG) is None:
            return None, "", "the image's debug data directory is empty"
        for entry in self.debug_entries():
            if entry.type != IMAGE_DEBUG_TYPE_CODEVIEW:
                continue
            if entry.rva == 0:
                return None, "", "the CodeView record is not mapped in the image"
            self._check_inside(entry.rva, entry.size, "CodeView record")
            return self._rsds(entry.rva, entry.size)
        return None, "", "the debug directory has no CodeView entry"

    def _rsds(self, rva: int, size: int) -> Tuple[Optional[PdbIdentity], str, str]:
        if size < len(RSDS_SIGNATURE):
            raise NotAPeImage(f"the CodeView record of the image {self.where} is {size} bytes, too short for a "
                              f"signature")
        record = self._bytes(rva, min(size, MAX_CODEVIEW_SIZE), "CodeView record")
        if record[:4] != RSDS_SIGNATURE:
            signature = record[:4].decode("ascii", "replace")
            return None, "", f"the CodeView record is {signature!r}, not an RSDS (PDB 7.0) record"
        if size < RSDS_HEADER_SIZE + 1:
            raise NotAPeImage(f"the CodeView record of the image {self.where} is {size} bytes, too short for RSDS")
        guid = uuid.UUID(bytes_le=bytes(record[4:20])).hex.upper()
        age = struct.unpack_from("<I", record, 20)[0]
        path = bytes(record[RSDS_HEADER_SIZE:]).split(b"\x00", 1)[0].decode("utf-8", "replace")
        name = ntpath.basename(path)
        if not name:
            raise NotAPeImage(f"the CodeView record of the image {self.where} names no PDB file")
        return PdbIdentity(name, guid, age), path, ""

    def identity(self, base: int) -> ImageIdentity:
        """The image's facts and CodeView identity, for an image loaded at ``base``."""
        pdb, path, why = self.codeview()
        return ImageIdentity(base, self.machine, self.pe32_plus, self.time_date_stamp, self.size_of_image, pdb,
                             path, why)

    def version(self) -> Optional[ImageVersion]:
        """The version resource's file and product versions, or None when the image has none."""
        found = self.directory(IMAGE_DIRECTORY_ENTRY_RESOURCE)
        if found is None:
            return None
        root, size = found
        self._check_inside(root, size, "resource directory")
        entry = self._resource_entry(root, size, root, RT_VERSION)  # type -> first name -> first language
        for _ in range(2):
            if entry is None or not entry & RESOURCE_SUBDIRECTORY:
                return None
            entry = self._resource_entry(root, size, root + (entry & ~RESOURCE_SUBDIRECTORY), None)
        if entry is None or entry & RESOURCE_SUBDIRECTORY:
            return None
        if entry + 16 > size:
            raise NotAPeImage(f"the version resource of the image {self.where} lies outside its resource directory")
        data_rva, data_size = struct.unpack_from("<II", self._bytes(root + entry, 8, "resource data entry"))
        self._check_inside(data_rva, data_size, "version resource")
        data = self._bytes(data_rva, min(data_size, MAX_VERSION_RESOURCE), "version resource")
        return _version_info(data, self.where)

    def _resource_entry(self, root: int, size: int, table: int, wanted: Optional[int]) -> Optional[int]:
        """OffsetToData of the entry with ID ``wanted`` (None: the first entry) of the resource
        directory table at RVA ``table``."""
        if not root <= table <= root + size - RESOURCE_DIRECTORY_SIZE:
            raise NotAPeImage(f"a resource directory of the image {self.where} lies outside the resource data")
        header = self._bytes(table, RESOURCE_DIRECTORY_SIZE, "resource directory")
        named, numbered = struct.unpack_from("<HH", header, 12)
        count = min(named + numbered, MAX_RESOURCE_ENTRIES, (root + size - table - RESOURCE_DIRECTORY_SIZE)
                    // RESOURCE_ENTRY_SIZE)
        entries = self._bytes(table + RESOURCE_DIRECTORY_SIZE, count * RESOURCE_ENTRY_SIZE, "resource directory")
        for number in range(count):
            name, offset = struct.unpack_from("<II", entries, number * RESOURCE_ENTRY_SIZE)
            if wanted is None or (number >= named and name == wanted):
                return offset
        return None

    # ---- reading ----

    def read(self, rva: int, size: int) -> bytes:
        """``size`` bytes of the image at ``rva``: from memory, or from the file through its sections
        (for an exception directory's function table, say)."""
        return self._bytes(rva, size, f"{size:#x} bytes")

    def _bytes(self, rva: int, size: int, what: str) -> bytes:
        data = self._read(rva, size)
        if len(data) < size:
            raise NotAPeImage(f"the {what} of the image {self.where} (RVA {rva:#x}) is cut short: {len(data)} of "
                              f"{size} bytes")
        return data

    def _check_inside(self, rva: int, size: int, what: str) -> None:
        if rva + size > self.size_of_image:
            raise NotAPeImage(f"the {what} of the image {self.where} ({rva:#x}+{size:#x}) lies outside its "
                              f"SizeOfImage {self.size_of_image:#x}")


def read_image_identity(read: Reader, base: int) -> ImageIdentity:
    """The identity of the image loaded at ``base``, read through ``read(address, size)``;
    MemoryReadError passes through."""
    return PeImage(lambda rva, size: read(base + rva, size), f"at {base:#x}").identity(base)


def image_store_key(time_date_stamp: int, size_of_image: int) -> str:
    """The symbol store key of an image file: TimeDateStamp as 8 upper-case hex digits, then
    SizeOfImage in lower-case hex without leading zeros (``C9C030003b000``)."""
    return f"{time_date_stamp:08X}{size_of_image:x}"


def _section(table: bytes, at: int) -> Section:
    name = bytes(table[at:at + 8]).split(b"\x00", 1)[0].decode("utf-8", "replace")
    virtual_size, virtual_address, raw_size, raw_pointer = struct.unpack_from("<IIII", table, at + 8)
    characteristics = struct.unpack_from("<I", table, at + 36)[0]
    return Section(name, virtual_address, virtual_size, raw_size, raw_pointer, characteristics)


class _FileLayout:
    """read(rva, size) over an image file: until ``map_sections``, RVA = file offset (the headers);
    then the headers as they are and a section's bytes from its raw data (zeros past SizeOfRawData,
    as the loader fills them). The first bytes are kept; the rest is read from the file when asked
    for, and the file must not have changed meanwhile."""

    def __init__(self, path: str):
        self.path = path
        self.where = f"in {os.path.basename(path)}"
        with open(path, "rb") as handle:
            self.stamp = file_stamp(os.fstat(handle.fileno()))
            self.head = handle.read(FILE_HEAD_BYTES)
        self.sections: Optional[List[Section]] = None
        self.size_of_headers = 0
        self.alignment = 1
        self._chunks: "OrderedDict[int, bytes]" = OrderedDict()

    def map_sections(self, sections: List[Section], size_of_headers: int, alignment: int) -> None:
        """From now on, RVAs through the sections, each spanning its size rounded up to the section
        alignment (the loader maps whole pages)."""
        self.sections = sorted(sections, key=lambda section: section.virtual_address)
        self.size_of_headers = size_of_headers
        self.alignment = alignment if alignment and not alignment & (alignment - 1) else 1

    def __call__(self, rva: int, size: int) -> bytes:
        if self.sections is None:
            return self._file_bytes(rva, size)
        pieces = []
        while size > 0:
            piece = self._piece(rva, size)
            pieces.append(piece)
            rva += len(piece)
            size -= len(piece)
        return b"".join(pieces)

    def _piece(self, rva: int, size: int) -> bytes:
        if rva < self.size_of_headers:
            length = min(size, self.size_of_headers - rva)
            return self._file_bytes(rva, length).ljust(length, b"\x00")
        for section in self.sections or ():
            extent = -(-section.mapped_size // self.alignment) * self.alignment
            inside = rva - section.virtual_address
            if 0 <= inside < extent:
                length = min(size, extent - inside)
                raw = b""
                if inside < section.raw_size:
                    raw = self._file_bytes(section.raw_pointer + inside, min(length, section.raw_size - inside))
                return raw.ljust(length, b"\x00")
        raise NotAPeImage(f"RVA {rva:#x} of the image {self.where} lies in no section")

    def _file_bytes(self, offset: int, size: int) -> bytes:
        if offset + size <= len(self.head):
            return self.head[offset:offset + size]
        if size > MAX_FILE_READ:
            raise NotAPeImage(f"a read of {size:#x} bytes of the image {self.where} is more than it can hold")
        first, last = offset // FILE_CHUNK_BYTES, (offset + size - 1) // FILE_CHUNK_BYTES
        data = b"".join(self._chunk(number) for number in range(first, last + 1))
        start = offset - first * FILE_CHUNK_BYTES
        return data[start:start + size]

    def _chunk(self, number: int) -> bytes:
        """The file's ``number``-th chunk, read once (the unwinder reads a function table entry by entry)."""
        chunk = self._chunks.get(number)
        if chunk is None:
            with open(self.path, "rb") as handle:
                if file_stamp(os.fstat(handle.fileno())) != self.stamp:
                    raise NotAPeImage(f"the image file {self.path} changed after it was opened")
                handle.seek(number * FILE_CHUNK_BYTES)
                chunk = handle.read(FILE_CHUNK_BYTES)
            self._chunks[number] = chunk
            while len(self._chunks) > MAX_FILE_CHUNKS:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(number)
        return chunk



def _version_info(data: bytes, where: str) -> Optional[ImageVersion]:
    """VS_VERSIONINFO: the fixed file info, then the first StringTable's FileVersion."""
    root = next(_version_blocks(data, 0, len(data), where), None)
    if root is None or root[0] != "VS_VERSION_INFO":
        return None
    _, value_at, value_length, children_at, end = root
    if value_length < 52:
        return None
    signature, _, file_ms, file_ls, product_ms, product_ls = struct.unpack_from("<6I", data, value_at)
    if signature != VS_FIXEDFILEINFO_SIGNATURE:
        return None
    strings: Dict[str, str] = {}
    info = next((block for block in _version_blocks(data, children_at, end, where) if block[0] == "StringFileInfo"),
                None)
    table = next(_version_blocks(data, info[3], info[4], where), None) if info else None
    for key, string_at, string_length, _, _ in (_version_blocks(data, table[3], table[4], where) if table else ()):
        strings.setdefault(key, data[string_at:string_at + string_length].decode("utf-16-le", "replace")
                           .split("\x00", 1)[0])
    return ImageVersion(_dotted(file_ms, file_ls), _dotted(product_ms, product_ls), strings.get("FileVersion", ""))


def _version_blocks(data: bytes, position: int, end: int, where: str) -> Iterator[Tuple[str, int, int, int, int]]:
    """The version blocks side by side in data[position:end] (at most MAX_VERSION_BLOCKS)."""
    for _ in range(MAX_VERSION_BLOCKS):
        block = _version_block(data, position, end, where)
        if block is None:
            return
        yield block
        position = _aligned(block[4])


def _version_block(data: bytes, position: int, end: int, where: str) -> Optional[Tuple[str, int, int, int, int]]:
    """One version block (wLength, wValueLength, wType, szKey, padding, value, children):
    (key, value offset, value length in bytes, first child offset, block end), or None at padding."""
    if position + 6 > end:
        return None
    length, value_length, text = struct.unpack_from("<HHH", data, position)
    if length == 0:
        return None
    block_end = position + length
    if length < 6 or block_end > end:
        raise NotAPeImage(f"the version resource of the image {where} holds a block that runs past its parent")
    key_end = position + 6
    while key_end + 2 <= block_end and data[key_end:key_end + 2] != b"\x00\x00":
        key_end += 2
    key = data[position + 6:key_end].decode("utf-16-le", "replace")
    value_at = _aligned(key_end + 2)
    value_bytes = value_length * 2 if text == 1 else value_length
    if value_at + value_bytes > block_end:
        raise NotAPeImage(f"the version resource of the image {where} holds a value that runs past its block")
    return key, value_at, value_bytes, _aligned(value_at + value_bytes), block_end


def _aligned(position: int) -> int:
    return (position + 3) & ~3


def _dotted(most: int, least: int) -> str:
    return f"{most >> 16}.{most & 0xFFFF}.{least >> 16}.{least & 0xFFFF}"
