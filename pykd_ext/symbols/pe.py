"""The CodeView identity of a loaded PE image: which PDB describes it (name, GUID, age).

Read through a ``read(address, size) -> bytes`` callable at the image base, following the Microsoft
PE format: IMAGE_DOS_HEADER (``MZ``, ``e_lfanew`` at 0x3C) -> ``PE\\0\\0`` and the 20-byte COFF file
header (Machine, NumberOfSections, TimeDateStamp at +4, SizeOfOptionalHeader at +16) -> the optional
header (Magic 0x10B PE32 / 0x20B PE32+; SizeOfImage at 56; NumberOfRvaAndSizes at 92 / 108; the Debug
data directory, entry 6, at 144 / 160) -> IMAGE_DEBUG_DIRECTORY entries (28 bytes: Type at 12,
SizeOfData at 16, AddressOfRawData at 20, an RVA) -> the IMAGE_DEBUG_TYPE_CODEVIEW (2) record
``RSDS``, a 16-byte GUID, a 4-byte age and the NUL-terminated PDB path. In a loaded image the debug
data is found by its RVA, not by PointerToRawData (a file offset).

Every offset and length is checked against what was read and against SizeOfImage. A page that is not
in the source raises the source's MemoryReadError; bytes that are not a PE image raise NotAPeImage.
"""
from __future__ import annotations

import ntpath
import struct
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from ..targets.base import TargetError
from .base import PdbIdentity

Reader = Callable[[int, int], bytes]

DOS_HEADER_SIZE = 0x40
E_LFANEW_OFFSET = 0x3C
PE_SIGNATURE = b"PE\x00\x00"
FILE_HEADER_SIZE = 20
PE32_MAGIC = 0x10B
PE32_PLUS_MAGIC = 0x20B
# Optional header offsets (PE32, PE32+).
SIZE_OF_IMAGE_OFFSET = 56
NUMBER_OF_RVA_AND_SIZES_OFFSET = {PE32_MAGIC: 92, PE32_PLUS_MAGIC: 108}
DEBUG_DIRECTORY_ENTRY_OFFSET = {PE32_MAGIC: 144, PE32_PLUS_MAGIC: 160}
IMAGE_DIRECTORY_ENTRY_DEBUG = 6
DEBUG_DIRECTORY_ENTRY_SIZE = 28
IMAGE_DEBUG_TYPE_CODEVIEW = 2
RSDS_SIGNATURE = b"RSDS"
RSDS_HEADER_SIZE = 24  # signature, GUID, age
# Bounds for values a hostile header could make huge: e_lfanew is a few hundred bytes in practice, a
# debug directory a handful of entries, a PDB path at most a few hundred characters.
MAX_E_LFANEW = 0x10000
MAX_DEBUG_ENTRIES = 64
MAX_CODEVIEW_SIZE = RSDS_HEADER_SIZE + 1024


class NotAPeImage(TargetError):
    """The bytes at the address are not a PE image, or its headers are inconsistent."""


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


def read_image_identity(read: Reader, base: int) -> ImageIdentity:
    """The identity of the image loaded at ``base``; MemoryReadError passes through."""
    dos = _read(read, base, DOS_HEADER_SIZE, "IMAGE_DOS_HEADER")
    if dos[:2] != b"MZ":
        raise NotAPeImage(f"no PE image at {base:#x}: it does not start with MZ")
    e_lfanew = struct.unpack_from("<I", dos, E_LFANEW_OFFSET)[0]
    if not DOS_HEADER_SIZE <= e_lfanew <= MAX_E_LFANEW:
        raise NotAPeImage(f"no PE image at {base:#x}: e_lfanew {e_lfanew:#x} is out of range")
    nt = _read(read, base + e_lfanew, 4 + FILE_HEADER_SIZE + 2, "IMAGE_NT_HEADERS")
    if nt[:4] != PE_SIGNATURE:
        raise NotAPeImage(f"no PE image at {base:#x}: no PE signature at e_lfanew {e_lfanew:#x}")
    machine, _, time_date_stamp = struct.unpack_from("<HHI", nt, 4)
    size_of_optional_header = struct.unpack_from("<H", nt, 4 + 16)[0]
    magic = struct.unpack_from("<H", nt, 4 + FILE_HEADER_SIZE)[0]
    if magic not in (PE32_MAGIC, PE32_PLUS_MAGIC):
        raise NotAPeImage(f"no PE image at {base:#x}: optional header magic {magic:#x} is neither PE32 nor PE32+")
    optional_at = base + e_lfanew + 4 + FILE_HEADER_SIZE
    needed = NUMBER_OF_RVA_AND_SIZES_OFFSET[magic] + 4
    if size_of_optional_header < needed:
        raise NotAPeImage(f"the PE image at {base:#x} has a {size_of_optional_header}-byte optional header, "
                          f"too short for its own fields")
    optional = _read(read, optional_at, min(size_of_optional_header, DEBUG_DIRECTORY_ENTRY_OFFSET[magic] + 8),
                     "IMAGE_OPTIONAL_HEADER")
    size_of_image = struct.unpack_from("<I", optional, SIZE_OF_IMAGE_OFFSET)[0]
    facts = dict(base=base, machine=machine, pe32_plus=magic == PE32_PLUS_MAGIC,
                 time_date_stamp=time_date_stamp, size_of_image=size_of_image)
    if size_of_image < e_lfanew + 4 + FILE_HEADER_SIZE + size_of_optional_header:
        raise NotAPeImage(f"the PE image at {base:#x} is inconsistent: SizeOfImage {size_of_image:#x} is smaller "
                          f"than its headers")
    directories = struct.unpack_from("<I", optional, NUMBER_OF_RVA_AND_SIZES_OFFSET[magic])[0]
    debug_entry_at = DEBUG_DIRECTORY_ENTRY_OFFSET[magic]
    if directories <= IMAGE_DIRECTORY_ENTRY_DEBUG or len(optional) < debug_entry_at + 8:
        return ImageIdentity(**facts, pdb=None, no_pdb_reason="the image has no debug data directory")
    debug_rva, debug_size = struct.unpack_from("<II", optional, debug_entry_at)
    if debug_rva == 0 or debug_size == 0:
        return ImageIdentity(**facts, pdb=None, no_pdb_reason="the image's debug data directory is empty")
    _check_inside(debug_rva, debug_size, size_of_image, base, "debug directory")
    entries = min(debug_size // DEBUG_DIRECTORY_ENTRY_SIZE, MAX_DEBUG_ENTRIES)
    directory = _read(read, base + debug_rva, entries * DEBUG_DIRECTORY_ENTRY_SIZE, "debug directory")
    for index in range(entries):
        debug_type, size_of_data, address_of_raw_data = struct.unpack_from(
            "<III", directory, index * DEBUG_DIRECTORY_ENTRY_SIZE + 12)
        if debug_type != IMAGE_DEBUG_TYPE_CODEVIEW:
            continue
        if address_of_raw_data == 0:
            return ImageIdentity(**facts, pdb=None, no_pdb_reason="the CodeView record is not mapped in the image")
        _check_inside(address_of_raw_data, size_of_data, size_of_image, base, "CodeView record")
        return _with_codeview(read, facts, address_of_raw_data, size_of_data)
    return ImageIdentity(**facts, pdb=None, no_pdb_reason="the debug directory has no CodeView entry")


def _with_codeview(read: Reader, facts: dict, rva: int, size: int) -> ImageIdentity:
    base = facts["base"]
    if size < len(RSDS_SIGNATURE):
        raise NotAPeImage(f"the CodeView record of the image at {base:#x} is {size} bytes, too short for a signature")
    record = _read(read, base + rva, min(size, MAX_CODEVIEW_SIZE), "CodeView record")
    if record[:4] != RSDS_SIGNATURE:
        signature = record[:4].decode("ascii", "replace")
        return ImageIdentity(**facts, pdb=None,
                             no_pdb_reason=f"the CodeView record is {signature!r}, not an RSDS (PDB 7.0) record")
    if size < RSDS_HEADER_SIZE + 1:
        raise NotAPeImage(f"the CodeView record of the image at {base:#x} is {size} bytes, too short for RSDS")
    guid = uuid.UUID(bytes_le=bytes(record[4:20])).hex.upper()
    age = struct.unpack_from("<I", record, 20)[0]
    path = bytes(record[RSDS_HEADER_SIZE:]).split(b"\x00", 1)[0].decode("utf-8", "replace")
    name = ntpath.basename(path)
    if not name:
        raise NotAPeImage(f"the CodeView record of the image at {base:#x} names no PDB file")
    return ImageIdentity(**facts, pdb=PdbIdentity(name, guid, age), pdb_path=path)


def _check_inside(rva: int, size: int, size_of_image: int, base: int, what: str) -> None:
    if rva + size > size_of_image:
        raise NotAPeImage(f"the {what} of the image at {base:#x} ({rva:#x}+{size:#x}) lies outside its "
                          f"SizeOfImage {size_of_image:#x}")


def _read(read: Reader, address: int, size: int, what: str) -> bytes:
    data = read(address, size)
    if len(data) < size:
        raise NotAPeImage(f"the {what} at {address:#x} is cut short: {len(data)} of {size} bytes")
    return data
