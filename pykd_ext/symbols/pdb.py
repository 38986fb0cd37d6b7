"""An image's PDB (the kernel's ``ntkrnlmp.pdb``, a driver's), read with the standard library only.

A PDB is an MSF 7.0 container: a superblock, a stream directory, and numbered streams stored as lists
of fixed-size blocks. leakhunt reads these (format as documented by LLVM's "The PDB File Format" pages
and Microsoft's cvinfo.h):

- the PDB info stream (1): version, signature, age, GUID; the GUID with the DBI stream's age is the
  identity the image's CodeView (RSDS) record names; its named stream map gives the ``/names`` stream
  (the string table of source file names);
- the DBI stream (3): the age, the machine (pointer size), the module info substream (one entry per
  object file: its module stream), the section contributions (which module made which bytes), the
  optional debug header that names the section header stream (and the OMAP of an image rearranged
  after linking), and the symbol record stream: S_PUB32 / S_GDATA32 / S_LDATA32 give section:offset
  addresses, turned into RVAs with the section headers (and OMAP);
- the module streams, when an address is to be named: S_GPROC32 / S_LPROC32 (and their _ID and DPC
  variants) give each function's start and length, S_GDATA32 / S_LDATA32 the statics, and the C13
  DEBUG_S_LINES subsections, with DEBUG_S_FILECHKSMS and ``/names``, the source line of each address;
- the TPI stream (2): type records. Only their offsets are indexed when the file is opened; a
  structure is decoded when it is asked for (its record found by name), with the few records its
  field paths go through, and cached.

Opening reads the info, DBI, TPI and symbol record streams and closes the file; what names addresses
is read at the first ``locate`` (the file is opened again, and must not have changed), one module
stream at a time, and cached. Everything read from the file is checked against the bounds of what
holds it; chains of records (modifiers, forward references, LF_INDEX continuations, nested members)
are capped, so a truncated or hostile file gives one SymbolFileError line rather than a traceback, a
hang or a huge allocation.
"""
from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from typing import Dict, List, Optional, Sequence, Tuple

from ..typeinfo import FieldInfo, TypeInfo
from .base import DATA, PROCEDURE, PUBLIC, CodeLocation, PdbIdentity, SymbolFile, SymbolFileError, file_stamp
from .names import undecorate

MSF_MAGIC = b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\x00\x00\x00"
BLOCK_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768)
NIL_STREAM_SIZE = 0xFFFFFFFF
NO_STREAM = 0xFFFF

# Fixed stream numbers.
STREAM_PDB_INFO = 1
STREAM_TPI = 2
STREAM_DBI = 3

# PDB info stream versions (PdbStreamVersion); MSF 7.0 files carry VC70 or later.
PDB_INFO_VERSIONS = (19941610, 19950623, 19950814, 19960307, 19970604, 20000404, 20030901, 20091201, 20140508)
TPI_VERSIONS = (19951122, 20040203)  # V70, V80
DBI_HEADER = struct.Struct("<iIIHHHHHHiiiiiIiiHHI")  # DbiStreamHeader, 64 bytes
TPI_HEADER = struct.Struct("<IIIII")  # version, header size, first and end type index, record bytes
# Optional debug header slots (u16 stream numbers: FPO, exception, fixup, OMAP to source, OMAP from
# source, section headers, token/RID map, xdata, pdata, new FPO, original section headers).
DEBUG_HEADER_OMAP_FROM_SOURCE = 4
DEBUG_HEADER_SECTION_HEADERS = 5
DEBUG_HEADER_ORIGINAL_SECTION_HEADERS = 10
SECTION_HEADER_SIZE = 40  # IMAGE_SECTION_HEADER; VirtualSize at +8, VirtualAddress at +12

MACHINE_X86 = 0x14C
MACHINE_POINTER_SIZES = {MACHINE_X86: 4, 0x1C4: 4, 0x1C0: 4, 0x8664: 8, 0xAA64: 8, 0x200: 8}

# Symbol records with an address: S_LDATA32, S_GDATA32 (type, offset, segment, name) and S_PUB32
# (flags, offset, segment, name): the name starts 14 bytes into the record in all three.
S_LDATA32, S_GDATA32, S_PUB32 = 0x110C, 0x110D, 0x110E
ADDRESS_SYMBOLS = (S_LDATA32, S_GDATA32, S_PUB32)
DATA_SYMBOLS = (S_LDATA32, S_GDATA32)
SYMBOL_NAME_OFFSET = 14
# Procedures (PROCSYM32: parent, end, next, length at +16, debug start, debug end, type, offset at +32,
# segment at +36, flags, the name at +39): S_LPROC32, S_GPROC32, their _ID forms and the DPC forms.
PROCEDURE_SYMBOLS = (0x110F, 0x1110, 0x1146, 0x1147, 0x1155, 0x1156)
PROCEDURE_NAME_OFFSET = 39

# Module info (DBI substream): a 64-byte fixed part (ModuleSymStream u16 at 34, SymByteSize at 36,
# C11ByteSize at 40, C13ByteSize at 44), then the module and object names, aligned to 4.
MODULE_INFO_SIZE = 64
# Section contributions: a version, then entries (section u16, offset i32 at 4, size i32 at 8, module
# u16 at 16) of 28 bytes (V60), or 32 (V2, one more field).
SECTION_CONTRIBUTION_SIZES = {0xF12EBA2D: 28, 0xF13151E4: 32}
# Module streams: a signature (4: C13 records), symbol records, C11 lines, C13 line subsections.
CV_SIGNATURE_C13 = 4
DEBUG_S_LINES = 0xF2
DEBUG_S_FILECHKSMS = 0xF4
CV_LINES_HAVE_COLUMNS = 1
# Line numbers that mark compiler-made code rather than a line of the source (cvinfo.h).
HIDDEN_LINES = (0xFEEFEE, 0xF00F00)
# The /names string table.
STRING_TABLE_SIGNATURE = 0xEFFEEFFE
NAMES_STREAM = "/names"

# Type record leaves (cvinfo.h LEAF_ENUM_e).
LF_MODIFIER = 0x1001
LF_POINTER = 0x1002
LF_FIELDLIST = 0x1203
LF_BITFIELD = 0x1205
LF_ARRAY = 0x1503
LF_CLASS = 0x1504
LF_STRUCTURE = 0x1505
LF_UNION = 0x1506
LF_ENUM = 0x1507
LF_INTERFACE = 0x1519
# The 32-bit-property forms of recent Microsoft PDBs: property u32, field list, [derived, vshape],
# then the member count and the size as numeric leaves, then the name.
LF_CLASS2 = 0x1608
LF_STRUCTURE2 = 0x1609
LF_UNION2 = 0x160A
LF_INTERFACE2 = 0x160B
CLASS_KINDS = (LF_CLASS, LF_STRUCTURE, LF_INTERFACE)
CLASS2_KINDS = (LF_CLASS2, LF_STRUCTURE2, LF_INTERFACE2)
UDT_KINDS = CLASS_KINDS + CLASS2_KINDS + (LF_UNION, LF_UNION2, LF_ENUM)

# Field list leaves.
LF_BCLASS = 0x1400
LF_VBCLASS = 0x1401
LF_IVBCLASS = 0x1402
LF_INDEX = 0x1404
LF_VFUNCTAB = 0x1409
LF_FRIENDCLS = 0x140B
LF_VFUNCOFF = 0x140C
LF_ENUMERATE = 0x1502
LF_FRIENDFCN = 0x150C
LF_MEMBER = 0x150D
LF_STMEMBER = 0x150E
LF_METHOD = 0x150F
LF_NESTTYPE = 0x1510
LF_ONEMETHOD = 0x1511
LF_NESTTYPEEX = 0x1512
LF_MEMBERMODIFY = 0x1513

# UDT property bits (CV_prop_t).
PROP_FORWARD_REF = 0x80
PROP_HAS_UNIQUE_NAME = 0x200

# Numeric leaves: (struct format, byte width) of the integer kinds; other kinds only by their width.
NUMERIC_INTEGERS = {0x8000: ("<b", 1), 0x8001: ("<h", 2), 0x8002: ("<H", 2), 0x8003: ("<i", 4),
                    0x8004: ("<I", 4), 0x8009: ("<q", 8), 0x800A: ("<Q", 8)}
FIRST_TYPE_INDEX = 0x1000

# Primitive type indices (< 0x1000): bits 0-7 the base type, bits 8-11 the pointer mode.
PRIMITIVE_SIZES = {
    0x03: 0, 0x08: 4,  # void, HRESULT
    0x10: 1, 0x20: 1, 0x68: 1, 0x69: 1, 0x70: 1, 0x7C: 1, 0x30: 1,  # chars, int8, bool8
    0x11: 2, 0x21: 2, 0x72: 2, 0x73: 2, 0x71: 2, 0x7A: 2, 0x31: 2, 0x46: 2,  # shorts, wchar, char16
    0x12: 4, 0x22: 4, 0x74: 4, 0x75: 4, 0x7B: 4, 0x32: 4, 0x40: 4, 0x45: 4,  # longs, ints, char32, float
    0x13: 8, 0x23: 8, 0x76: 8, 0x77: 8, 0x33: 8, 0x41: 8, 0x50: 8,  # quads, double, complex32
    0x44: 6, 0x42: 10,  # real48, real80
    0x14: 16, 0x24: 16, 0x78: 16, 0x79: 16, 0x43: 16, 0x51: 16,  # octawords, real128, complex64
    0x52: 20, 0x53: 32,  # complex80, complex128
}
PRIMITIVE_POINTER_SIZES = {1: 2, 2: 4, 3: 4, 4: 4, 5: 6, 6: 8, 7: 16}

# Caps: how far a chain of records is followed before the file is called malformed.
MAX_TYPE_CHAIN = 64  # modifiers, forward references, arrays of arrays, nested member lookups
MAX_FIELD_LISTS = 4096  # LF_INDEX continuations of one field list
MAX_NAME_HITS = 1 << 16  # places where a looked-for name's bytes occur
MAX_ANONYMOUS_VISITS = 4096  # structures searched through unnamed members for one member name
MAX_NAMED_STREAMS = 4096  # entries of the info stream's named stream map


class PdbFile(SymbolFile):
    """An image's PDB: identity, machine, symbol RVAs by name, names of addresses, structure layouts."""

    kind = "pdb"

    def __init__(self, path: str, identity: PdbIdentity, pointer_size: Optional[int],
                 types: Optional["_TypeStream"], symbols: Optional["_SymbolStream"],
                 debug: Optional["_DebugInfo"] = None, machine: Optional[int] = None):
        self.path = path
        self.identity = identity
        self.pointer_size = pointer_size
        self.machine = machine
        self._types = types
        self._symbols = symbols
        self._debug = debug
        self._addresses: Optional[_AddressIndex] = None

    @classmethod
    def open(cls, path: str) -> "PdbFile":
        """Open and check a PDB (read-only): its streams are read and indexed, the file closed again."""
        name = os.path.basename(path)
        try:
            with open(path, "rb") as handle:
                stamp = file_stamp(os.fstat(handle.fileno()))
                msf = _Msf(handle, name)
                dbi = _read_dbi(msf)
                identity, named_streams = _read_identity(msf, name, dbi.age)
                types = _TypeStream(msf.stream(STREAM_TPI), name) if msf.stream_size(STREAM_TPI) else None
                symbols = None if dbi.symbol_records is None else \
                    _SymbolStream(dbi.symbol_records, dbi.addresses, name)
                msf.handle = None  # streams read later open the file again (_DebugInfo.stream)
        except SymbolFileError:
            raise
        except OSError as error:
            raise SymbolFileError(f"{name}: cannot read the PDB: {error.strerror or error}") from None
        except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as error:
            raise SymbolFileError(f"{name}: malformed PDB ({type(error).__name__}: {error})") from None
        debug = _DebugInfo(path, stamp, msf, dbi, named_streams.get(NAMES_STREAM))
        machine = dbi.machine if dbi.machine in MACHINE_POINTER_SIZES else None
        return cls(path, identity, dbi.pointer_size, types, symbols, debug, machine)

    def rva(self, name: str) -> Optional[int]:
        if self._symbols is None:
            return None
        found = self._guarded(self._symbols.rva, name)
        if found is None and self.pointer_size == 4:  # x86 publics carry the C decoration
            found = self._guarded(self._symbols.rva, "_" + name)
        return found

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]:
        if self._types is None:
            return None
        return self._guarded(self._types.type_info, name, field_names)

    def _locate(self, rva: int) -> Optional[CodeLocation]:
        index = self._address_index()
        return None if index is None else self._guarded(index.locate, rva)

    def locate_data(self, rva: int) -> Optional[CodeLocation]:
        """The global or static variable that holds ``rva`` (kind DATA), or None: for a lock or a
        structure that is a driver global (``lockdrv!g_StateLock``)."""
        index = self._address_index()
        return None if index is None else self._guarded(index.data, rva)

    def close(self) -> None:
        super().close()
        self._types = None
        self._symbols = None
        self._debug = None
        self._addresses = None

    def _address_index(self) -> Optional["_AddressIndex"]:
        if self._addresses is None and self._debug is not None:
            x86 = self._debug.machine == MACHINE_X86
            self._addresses = _AddressIndex(self.identity.name, self._symbols, self._types, self._debug, x86)
        return self._addresses

    def _guarded(self, method, *args):
        """A lookup; what the index checks could not foresee still ends as one SymbolFileError line."""
        try:
            return method(*args)
        except SymbolFileError:
            raise
        except OSError as error:
            raise SymbolFileError(f"{self.identity.name}: cannot read the PDB again: {error.strerror or error}") \
                from None
        except (struct.error, IndexError, ValueError, OverflowError, RecursionError, MemoryError) as error:
            raise SymbolFileError(f"{self.identity.name}: malformed PDB ({type(error).__name__}: {error})") \
                from None



class _Msf:
    """The MSF 7.0 container: superblock, stream directory, and streams read block by block."""

    def __init__(self, handle, name: str):
        self.handle = handle
        self.name = name
        handle.seek(0, os.SEEK_END)
        file_size = handle.tell()
        header = self._read_at(0, min(file_size, 56))
        if len(header) < 56 or header[:32] != MSF_MAGIC:
            raise self.error("not a PDB file (no MSF 7.0 signature)")
        block_size, _, block_count, directory_bytes, _, block_map_block = struct.unpack_from("<6I", header, 32)
        if block_size not in BLOCK_SIZES:
            raise self.error(f"unsupported MSF block size {block_size}")
        if block_count * block_size > file_size:
            raise self.error(f"the file is cut short: {file_size} bytes, the MSF header says "
                             f"{block_count} blocks of {block_size}")
        self.block_size = block_size
        self.block_count = block_count
        if directory_bytes < 4 or directory_bytes > block_count * block_size:
            raise self.error(f"stream directory of {directory_bytes} bytes")
        directory_blocks = -(-directory_bytes // block_size)
        if directory_blocks > block_size // 4:
            raise self.error(f"stream directory of {directory_blocks} blocks does not fit its block map")
        self._check_block(block_map_block, "the block map")
        block_map = struct.unpack_from(f"<{directory_blocks}I", self._read_at(block_map_block * block_size,
                                                                            4 * directory_blocks))
        for block in block_map:
            self._check_block(block, "the stream directory")
        directory = self._read_blocks(block_map, directory_bytes, "the stream directory")
        self._parse_directory(directory)

    def error(self, what: str) -> SymbolFileError:
        return SymbolFileError(f"{self.name}: {what}")

    def _read_at(self, offset: int, size: int) -> bytes:
        self.handle.seek(offset)
        data = self.handle.read(size)
        if len(data) != size:
            raise self.error(f"the file is cut short at {offset + len(data):#x}")
        return data

    def _check_block(self, block: int, what: str) -> None:
        if not 0 < block < self.block_count:
            raise self.error(f"{what} is in block {block}, outside the {self.block_count} blocks of the file")

    def _parse_directory(self, directory: bytearray) -> None:
        (stream_count,) = struct.unpack_from("<I", directory, 0)
        if stream_count > (len(directory) - 4) // 4:
            raise self.error(f"the stream directory claims {stream_count} streams in {len(directory)} bytes")
        sizes = struct.unpack_from(f"<{stream_count}I", directory, 4)
        sizes = [0 if size == NIL_STREAM_SIZE else size for size in sizes]
        block_counts = [-(-size // self.block_size) for size in sizes]
        position = 4 + 4 * stream_count
        if position + 4 * sum(block_counts) > len(directory):
            raise self.error("the stream directory lists more blocks than it holds")
        if sum(block_counts) > self.block_count:  # each block belongs to one stream at most
            raise self.error(f"the streams claim {sum(block_counts)} blocks of the file's {self.block_count}")
        self.sizes = sizes
        self._block_lists: List[Tuple[int, ...]] = []
        for index, count in enumerate(block_counts):
            blocks = struct.unpack_from(f"<{count}I", directory, position)
            position += 4 * count
            for block in blocks:
                self._check_block(block, f"stream {index}")
            self._block_lists.append(blocks)

    def stream_size(self, index: int) -> int:
        return self.sizes[index] if 0 <= index < len(self.sizes) else 0

    def stream(self, index: int) -> bytearray:
        if not 0 <= index < len(self.sizes):
            raise self.error(f"stream {index} is named but the file has {len(self.sizes)} streams")
        return self._read_blocks(self._block_lists[index], self.sizes[index], f"stream {index}")

    def _read_blocks(self, blocks: Sequence[int], size: int, what: str) -> bytearray:
        """The ``size`` bytes stored in ``blocks``, runs of consecutive blocks read at once."""
        data = bytearray(size)
        view = memoryview(data)
        position = 0
        run_start = 0
        for number in range(1, len(blocks) + 1):
            if number < len(blocks) and blocks[number] == blocks[number - 1] + 1:
                continue
            first = blocks[run_start]
            length = min((number - run_start) * self.block_size, size - position)
            self.handle.seek(first * self.block_size)
            if self.handle.readinto(view[position:position + length]) != length:
                raise self.error(f"{what} is cut short")
            position += length
            run_start = number
        return data


def _read_identity(msf: _Msf, name: str, dbi_age: Optional[int]) -> Tuple[PdbIdentity, Dict[str, int]]:
    """PDB info stream: Version, Signature, Age, then the GUID (Data1..3 little-endian, Data4 bytes),
    then the named stream map (name -> stream number).

    The age is the DBI stream's when there is one: tools that rewrite a PDB (pdbcopy, which makes
    Microsoft's public PDBs) bump the info stream's age but not the DBI's, and the image's CodeView
    record and the symbol store name the DBI age (LLVM issue 57300: an ntdll.pdb with info age 3,
    DBI age 1, stored under age 1)."""
    if msf.stream_size(STREAM_PDB_INFO) < 28:
        raise msf.error("the PDB info stream is missing or too short")
    info = msf.stream(STREAM_PDB_INFO)
    version, _, info_age = struct.unpack_from("<III", info, 0)
    if version not in PDB_INFO_VERSIONS:
        raise msf.error(f"unknown PDB info stream version {version}")
    data1, data2, data3 = struct.unpack_from("<IHH", info, 12)
    guid = f"{data1:08X}{data2:04X}{data3:04X}{bytes(info[20:28]).hex().upper()}"
    return PdbIdentity(name, guid, info_age if dbi_age is None else dbi_age), _named_streams(info, msf)


def _named_streams(info: bytearray, msf: _Msf) -> Dict[str, int]:
    """The info stream's named stream map: the names' buffer (u32 length, bytes), then a hash table
    (size, capacity, the present and deleted bit vectors as u32 word counts and words, then one
    (name offset, stream) pair per present bucket). A stream without one (an old writer) gives {}."""
    if len(info) < 32:
        return {}
    (buffer_size,) = struct.unpack_from("<I", info, 28)
    position = 32 + buffer_size
    if position + 12 > len(info):
        raise msf.error("the named stream map of the PDB info stream runs past its end")
    buffer = info[32:position]
    size, _, present_words = struct.unpack_from("<III", info, position)
    position += 12 + 4 * present_words
    if position + 4 > len(info):
        raise msf.error("the named stream map of the PDB info stream runs past its end")
    (deleted_words,) = struct.unpack_from("<I", info, position)
    position += 4 + 4 * deleted_words
    if size > MAX_NAMED_STREAMS or position + 8 * size > len(info):
        raise msf.error(f"the named stream map of the PDB info stream claims {size} streams")
    streams: Dict[str, int] = {}
    for number in range(size):
        offset, stream = struct.unpack_from("<II", info, position + 8 * number)
        if offset >= len(buffer):
            raise msf.error("the named stream map of the PDB info stream names a stream outside its names")
        streams[_c_string(buffer, offset, len(buffer), msf.name)[0]] = stream
    return streams


class _Dbi:
    """What the DBI stream gives: its age, machine and pointer size, the symbol record stream with the
    section VirtualAddresses (and OMAP) that turn its section:offset into RVAs, the image's sections
    (name, RVA, size), and the raw module info and section contribution substreams."""

    def __init__(self, age: Optional[int] = None, machine: int = 0, symbol_records: Optional[bytearray] = None,
                 addresses: Optional["_Addresses"] = None, sections: Sequence[Tuple[str, int, int]] = (),
                 module_info: bytes = b"", contributions: bytes = b""):
        self.age = age
        self.machine = machine
        self.pointer_size = MACHINE_POINTER_SIZES.get(machine)
        self.symbol_records = symbol_records
        self.addresses = addresses or _Addresses([], None)
        self.sections = list(sections)
        self.module_info = module_info
        self.contributions = contributions


class _Addresses:
    """section:offset -> RVA: the section's VirtualAddress plus the offset, then, for an image
    rearranged after linking (BBT), through the OMAP-from-source table: the entry with the greatest
    source RVA not above it moves it (a target of 0: the address has no place in the final image)."""

    def __init__(self, sections: List[int], omap: Optional[Tuple[array, array]]):
        self.sections = sections
        self.omap = omap

    def rva(self, segment: int, offset: int) -> Optional[int]:
        if not 1 <= segment <= len(self.sections):
            return None
        rva = self.sections[segment - 1] + offset
        if self.omap is None:
            return rva
        sources, targets = self.omap
        at = bisect_right(sources, rva) - 1
        if at < 0 or targets[at] == 0:
            return None
        return targets[at] + rva - sources[at]


def _read_dbi(msf: _Msf) -> _Dbi:
    """DBI stream: header, substream sizes, the optional debug header's section header (and OMAP)
    streams."""
    size = msf.stream_size(STREAM_DBI)
    if size == 0:
        return _Dbi()
    if size < DBI_HEADER.size:
        raise msf.error(f"the DBI stream is {size} bytes, shorter than its header")
    dbi = msf.stream(STREAM_DBI)
    fields = DBI_HEADER.unpack_from(dbi, 0)
    signature, age, symbol_stream = fields[0], fields[2], fields[7]
    substreams = fields[9:14] + (fields[16], fields[15])  # modules .. type server map, EC, debug header
    machine = fields[18]
    if signature != -1:
        raise msf.error("the DBI stream has no version signature (-1)")
    if any(length < 0 for length in substreams) or DBI_HEADER.size + sum(substreams) > size:
        raise msf.error("the DBI substreams run past the DBI stream")
    debug_header = struct.unpack_from(f"<{substreams[-1] // 2}H", dbi, DBI_HEADER.size + sum(substreams[:-1]))

    def named(slot: int) -> Optional[int]:
        stream = debug_header[slot] if slot < len(debug_header) else NO_STREAM
        return None if stream == NO_STREAM or msf.stream_size(stream) == 0 else stream

    omap = None
    sections = _read_sections(msf, named(DEBUG_HEADER_SECTION_HEADERS))
    address_sections = sections
    if named(DEBUG_HEADER_OMAP_FROM_SOURCE) is not None:
        omap = _read_omap(msf, named(DEBUG_HEADER_OMAP_FROM_SOURCE))
        address_sections = _read_sections(msf, named(DEBUG_HEADER_ORIGINAL_SECTION_HEADERS)) or sections
    records = msf.stream(symbol_stream) if symbol_stream != NO_STREAM else None
    module_info_end = DBI_HEADER.size + substreams[0]
    return _Dbi(age, machine, records, _Addresses([rva for _, rva, _ in address_sections], omap), sections,
                bytes(dbi[DBI_HEADER.size:module_info_end]),
                bytes(dbi[module_info_end:module_info_end + substreams[1]]))


def _read_sections(msf: _Msf, stream: Optional[int]) -> List[Tuple[str, int, int]]:
    """(name, VirtualAddress, VirtualSize) of each IMAGE_SECTION_HEADER of a section header stream."""
    if stream is None:
        return []
    headers = msf.stream(stream)
    if len(headers) % SECTION_HEADER_SIZE:
        raise msf.error(f"the section header stream is {len(headers)} bytes, not a whole number of headers")
    sections = []
    for at in range(0, len(headers), SECTION_HEADER_SIZE):
        virtual_size, virtual_address = struct.unpack_from("<II", headers, at + 8)
        name = bytes(headers[at:at + 8]).split(b"\x00", 1)[0].decode("utf-8", "replace")
        sections.append((name, virtual_address, virtual_size))
    return sections


def _read_omap(msf: _Msf, stream: int) -> Tuple[array, array]:
    """The OMAP-from-source table: (source RVA, target RVA) pairs in increasing source order."""
    data = msf.stream(stream)
    if len(data) % 8:
        raise msf.error(f"the OMAP stream is {len(data)} bytes, not a whole number of entries")
    pairs = array("I", bytes(data))
    if sys.byteorder == "big":
        pairs.byteswap()
    sources, targets = pairs[0::2], pairs[1::2]
    if any(sources[n] > sources[n + 1] for n in range(len(sources) - 1)):
        raise msf.error("the OMAP table is not in increasing address order")
    return sources, targets


def _index_records(data: bytearray, start: int, end: int, what: str, name: str) -> array:
    """Offsets of the length-prefixed records (u16 length, then that many bytes) in data[start:end]."""
    offsets = array("I")
    append = offsets.append
    position = start
    while position < end:
        if position + 4 > end:
            raise SymbolFileError(f"{name}: {what} ends inside a record header at {position - start:#x}")
        append(position)
        length = data[position] | data[position + 1] << 8
        if length < 2:
            raise SymbolFileError(f"{name}: {what} holds a record of length {length} at {position - start:#x}")
        position += 2 + length
    if position != end:
        raise SymbolFileError(f"{name}: the last record of {what} runs past its end")
    return offsets


def _c_string(data: bytearray, position: int, end: int, name: str) -> Tuple[str, int]:
    """A zero-terminated UTF-8 string inside data[position:end], and the position after it."""
    stop = data.find(b"\x00", position, end)
    if stop < 0:
        raise SymbolFileError(f"{name}: a name at {position:#x} is not terminated inside its record")
    return data[position:stop].decode("utf-8", "replace"), stop + 1


class _SymbolStream:
    """The DBI symbol record stream; addresses of S_PUB32 / S_GDATA32 / S_LDATA32 by name."""

    def __init__(self, data: bytearray, addresses: _Addresses, name: str):
        self.data = data
        self.addresses = addresses
        self.name = name
        self.records = _index_records(data, 0, len(data), "the symbol record stream", name)
        self._cache: Dict[str, Optional[int]] = {}

    def rva(self, symbol: str) -> Optional[int]:
        if symbol not in self._cache:
            self._cache[symbol] = self._find(symbol)
        return self._cache[symbol]

    def _find(self, symbol: str) -> Optional[int]:
        """Look for the name's bytes and keep a hit that is the name field of an address record.

        The bytes are looked for without the name's terminating zero: zero bytes are everywhere in
        these streams, and a needle ending with one makes ``find`` slow."""
        name = symbol.encode("utf-8")
        if not name:
            return None
        data, records = self.data, self.records
        position = data.find(name, SYMBOL_NAME_OFFSET)
        hits = 0
        while position >= 0:
            hits += 1
            if hits > MAX_NAME_HITS:
                raise SymbolFileError(f"{self.name}: {symbol!r} occurs more than {MAX_NAME_HITS} times "
                                      f"in the symbol records")
            start = position - SYMBOL_NAME_OFFSET
            at = bisect_right(records, start) - 1
            if at >= 0 and records[at] == start:
                length, kind = struct.unpack_from("<HH", data, start)
                terminator = position + len(name)
                if kind in ADDRESS_SYMBOLS and terminator < start + 2 + length and data[terminator] == 0:
                    offset, segment = struct.unpack_from("<IH", data, start + 8)
                    rva = self.addresses.rva(segment, offset)
                    if rva is not None:
                        return rva
            position = data.find(name, position + 1)
        return None


class _DebugInfo:
    """What opening keeps for naming addresses later: the file's path and (size, mtime) stamp, the
    stream directory (the file is opened again to read a module stream, and must not have changed),
    the DBI's machine, sections, module info and section contributions, and the /names stream."""

    def __init__(self, path: str, stamp: Tuple[int, int], msf: _Msf, dbi: _Dbi, names_stream: Optional[int]):
        self.path = path
        self.stamp = stamp
        self.msf = msf
        self.machine = dbi.machine
        self.addresses = dbi.addresses
        self.sections = dbi.sections
        self.module_info = dbi.module_info
        self.contributions = dbi.contributions
        self.names_stream = names_stream

    def stream(self, index: int) -> bytearray:
        with open(self.path, "rb") as handle:
            if file_stamp(os.fstat(handle.fileno())) != self.stamp:
                raise self.msf.error("the file changed after it was opened; it is not read again")
            self.msf.handle = handle
            try:
                return self.msf.stream(index)
            finally:
                self.msf.handle = None


class _ModuleInfo:
    """One entry of the DBI's module info: the module's stream and the sizes of its three parts."""

    __slots__ = ("name", "stream", "symbol_bytes", "c11_bytes", "c13_bytes")

    def __init__(self, name: str, stream: int, symbol_bytes: int, c11_bytes: int, c13_bytes: int):
        self.name = name
        self.stream = stream
        self.symbol_bytes = symbol_bytes
        self.c11_bytes = c11_bytes
        self.c13_bytes = c13_bytes


class _ModuleSymbols:
    """What one module stream gives: its procedures (start RVA, length, name) and data symbols (start
    RVA, type, name), each sorted by RVA; its line tables, one per DEBUG_S_LINES subsection (code
    start and end RVA, order in the stream, the lines (start, end, line, file checksum offset) and
    their starts);
    and its file checksums (offset -> offset of the file name in /names)."""

    def __init__(self):
        self.procedures: List[Tuple[int, int, str]] = []
        self.data: List[Tuple[int, int, str]] = []
        self.line_tables: List[Tuple[int, int, int, List[Tuple[int, int, int, int]], List[int]]] = []
        self.files: Dict[int, int] = {}
        self.procedure_starts: List[int] = []
        self.data_starts: List[int] = []
        self.line_table_starts: List[int] = []

    def sort(self) -> None:
        self.procedures.sort(key=lambda entry: entry[0])  # stable: folded functions stay in stream order
        self.data.sort(key=lambda entry: entry[0])
        self.line_tables.sort(key=lambda table: (table[0], table[2]))
        self.procedure_starts = [entry[0] for entry in self.procedures]
        self.data_starts = [entry[0] for entry in self.data]
        self.line_table_starts = [table[0] for table in self.line_tables]

    def procedure(self, rva: int) -> Optional[Tuple[int, int, str]]:
        """The procedure whose code holds ``rva``; of functions the linker folded into one body (one
        start), the first in the stream."""
        at = bisect_right(self.procedure_starts, rva) - 1
        if at < 0:
            return None
        at = bisect_left(self.procedure_starts, self.procedure_starts[at])
        if rva < self.procedures[at][0] + max(self.procedures[at][1], 1):
            return self.procedures[at]
        return None

    def nearest_data(self, rva: int) -> Optional[Tuple[int, int, str]]:
        at = bisect_right(self.data_starts, rva) - 1
        return self.data[at] if at >= 0 else None

    def line(self, rva: int) -> Optional[Tuple[int, int]]:
        """(line, file checksum offset) of the line that covers ``rva``: the first line that starts
        at it, else the last that starts before it (several lines can start at one address: the
        earlier ones hold no code of their own). Code folded by the linker has several line tables
        from one start: the first in the stream counts. Both as LLVM's PDB reader decides."""
        at = bisect_right(self.line_table_starts, rva) - 1
        if at < 0:
            return None
        first = bisect_left(self.line_table_starts, self.line_table_starts[at])
        for _, end, _, lines, line_starts in self.line_tables[first:at + 1]:
            if rva < end:
                found = bisect_left(line_starts, rva)  # at a line's own address, the first line there
                if found == len(line_starts) or line_starts[found] != rva:
                    found -= 1  # inside: the last line that starts before it
                if found >= 0 and rva < lines[found][1] and lines[found][2] not in HIDDEN_LINES:
                    return lines[found][2], lines[found][3]
                return None
        return None


class _AddressIndex:
    """RVA -> name, built on first use: the publics and global data of the symbol record stream
    sorted by RVA, the section contributions (which module's stream describes an RVA), and each
    module stream as it is needed.

    An image rearranged after linking (OMAP) has contributions in its original layout: every module
    stream is then searched, each symbol and line moved through the OMAP on its own."""

    def __init__(self, name: str, symbols: Optional[_SymbolStream], types: Optional["_TypeStream"],
                 debug: _DebugInfo, x86: bool):
        self.name = name
        self.symbols = symbols
        self.types = types
        self.debug = debug
        self.x86 = x86
        self._publics: Optional[Tuple[List[int], List[int]]] = None
        self._globals: Optional[Tuple[List[int], List[int]]] = None
        self._contributions: Optional[Tuple[List[int], List[int], List[int]]] = None
        self._module_infos: Optional[List[_ModuleInfo]] = None
        self._modules: Dict[int, _ModuleSymbols] = {}
        self._names: Optional[bytearray] = None

    def error(self, what: str) -> SymbolFileError:
        return SymbolFileError(f"{self.name}: {what}")

    # ---- the answers ----

    def locate(self, rva: int) -> Optional[CodeLocation]:
        modules = [self._module(number) for number in self._modules_at(rva)]
        procedure = next((found for found in (module.procedure(rva) for module in modules) if found), None)
        file, line = self._line(rva, modules)
        if procedure is not None:
            start, length, name = procedure
            return CodeLocation(name, start, rva - start, length, PROCEDURE, file, line)
        found = self._data(rva, modules) or self._public(rva)
        if found is None:
            return None
        return CodeLocation(found.name, found.start, found.offset, found.size, found.kind, file, line)

    def data(self, rva: int) -> Optional[CodeLocation]:
        return self._data(rva, [self._module(number) for number in self._modules_at(rva)])

    def _data(self, rva: int, modules: List[_ModuleSymbols]) -> Optional[CodeLocation]:
        """The data symbol whose bytes (its type's size) hold ``rva``: of the symbol record stream's
        globals or of the module that made the address."""
        candidates = [module.nearest_data(rva) for module in modules]
        starts, records = self._global_data()
        at = bisect_right(starts, rva) - 1
        if at >= 0:
            start, type_index, name = self._data_record(self.symbols.data, records[at], starts[at])
            candidates.append((start, type_index, name))
        for start, type_index, name in sorted((found for found in candidates if found), reverse=True):
            size = self.types.size_of(type_index) if self.types is not None else 0
            if rva == start or size and rva < start + size:
                return CodeLocation(name, start, rva - start, size or None, DATA)
        return None

    def _public(self, rva: int) -> Optional[CodeLocation]:
        """The nearest public at or before ``rva`` in the same section of the image."""
        starts, records = self._public_index()
        at = bisect_right(starts, rva) - 1
        if at < 0:
            return None
        at = bisect_left(starts, starts[at])  # of several names for one address, the first recorded
        start = starts[at]
        section = self._section_of(rva)
        if self.debug.sections and (section is None or not section[0] <= start < section[1]):
            return None  # the address is in no section, or in another than the public
        data = self.symbols.data
        length = data[records[at]] | data[records[at] + 1] << 8
        name = _c_string(data, records[at] + SYMBOL_NAME_OFFSET, records[at] + 2 + length, self.name)[0]
        return CodeLocation(undecorate(name, self.x86), start, rva - start, None, PUBLIC)

    def _line(self, rva: int, modules: List[_ModuleSymbols]) -> Tuple[str, Optional[int]]:
        for module in modules:
            found = module.line(rva)
            if found is not None:
                line, checksum = found
                return self._file_name(module, checksum), line
        return "", None

    def _section_of(self, rva: int) -> Optional[Tuple[int, int]]:
        for _, start, size in self.debug.sections:
            if start <= rva < start + size:
                return start, start + size
        return None

    # ---- the symbol record stream ----

    def _public_index(self) -> Tuple[List[int], List[int]]:
        if self._publics is None:
            self._publics = self._sorted_records((S_PUB32,))
        return self._publics

    def _global_data(self) -> Tuple[List[int], List[int]]:
        if self._globals is None:
            self._globals = self._sorted_records(DATA_SYMBOLS)
        return self._globals

    def _sorted_records(self, kinds: Tuple[int, ...]) -> Tuple[List[int], List[int]]:
        """(RVAs, record offsets) of the records of ``kinds``, sorted by RVA; those without an RVA
        (a section the image does not have) are left out."""
        if self.symbols is None:
            return [], []
        data, rva_of = self.symbols.data, self.debug.addresses.rva
        found = []
        for start in self.symbols.records:
            length, kind = struct.unpack_from("<HH", data, start)
            if kind not in kinds:
                continue
            if length + 2 < SYMBOL_NAME_OFFSET + 1:
                raise self.error(f"the symbol record at {start:#x} is too short for its kind {kind:#x}")
            offset, segment = struct.unpack_from("<IH", data, start + 8)
            rva = rva_of(segment, offset)
            if rva is not None:
                found.append((rva, start))
        found.sort()
        return [rva for rva, _ in found], [start for _, start in found]

    def _data_record(self, data: bytearray, start: int, rva: int) -> Tuple[int, int, str]:
        length = data[start] | data[start + 1] << 8
        (type_index,) = struct.unpack_from("<I", data, start + 4)
        return rva, type_index, _c_string(data, start + SYMBOL_NAME_OFFSET, start + 2 + length, self.name)[0]

    # ---- modules ----

    def _modules_at(self, rva: int) -> List[int]:
        """The modules whose streams may describe ``rva``: the one whose contribution holds it (all
        of them for a rearranged image)."""
        if self.debug.addresses.omap is not None:
            return [number for number, info in enumerate(self._infos()) if info.stream != NO_STREAM]
        starts, ends, owners = self._contribution_index()
        at = bisect_right(starts, rva) - 1
        if at >= 0 and rva < ends[at] and owners[at] < len(self._infos()) and \
                self._infos()[owners[at]].stream != NO_STREAM:
            return [owners[at]]
        return []

    def _contribution_index(self) -> Tuple[List[int], List[int], List[int]]:
        if self._contributions is None:
            data = self.debug.contributions
            found = []
            if len(data) >= 4:
                (version,) = struct.unpack_from("<I", data, 0)
                entry_size = SECTION_CONTRIBUTION_SIZES.get(version)
                if entry_size is None:
                    raise self.error(f"unknown section contribution version {version:#x}")
                for at in range(4, len(data) - entry_size + 1, entry_size):
                    section, offset, size = struct.unpack_from("<HxxiI", data, at)
                    (module,) = struct.unpack_from("<H", data, at + 16)
                    rva = self.debug.addresses.rva(section, offset)
                    if rva is not None and size:
                        found.append((rva, rva + size, module))
            found.sort()
            self._contributions = ([start for start, _, _ in found], [end for _, end, _ in found],
                                   [module for _, _, module in found])
        return self._contributions

    def _infos(self) -> List[_ModuleInfo]:
        if self._module_infos is None:
            data = self.debug.module_info
            infos = []
            position = 0
            while position + MODULE_INFO_SIZE <= len(data):
                stream, symbol_bytes, c11_bytes, c13_bytes = struct.unpack_from("<HIII", data, position + 34)
                name, position = _c_string(data, position + MODULE_INFO_SIZE, len(data), self.name)
                _, position = _c_string(data, position, len(data), self.name)  # the object or library file
                position = (position + 3) & ~3
                infos.append(_ModuleInfo(name, stream, symbol_bytes, c11_bytes, c13_bytes))
            self._module_infos = infos
        return self._module_infos

    def _module(self, number: int) -> _ModuleSymbols:
        if number not in self._modules:
            self._modules[number] = self._read_module(self._infos()[number])
        return self._modules[number]

    def _read_module(self, info: _ModuleInfo) -> _ModuleSymbols:
        data = self.debug.stream(info.stream)
        what = f"the module stream of {info.name!r}"
        symbols_end = info.symbol_bytes
        if symbols_end + info.c11_bytes + info.c13_bytes > len(data) or 0 < symbols_end < 4:
            raise self.error(f"{what} is {len(data)} bytes, shorter than its parts")
        module = _ModuleSymbols()
        if symbols_end:
            (signature,) = struct.unpack_from("<I", data, 0)
            if signature != CV_SIGNATURE_C13:
                raise self.error(f"{what} has signature {signature}, not C13 ({CV_SIGNATURE_C13})")
            self._read_module_symbols(data, symbols_end, module, what)
        lines_at = symbols_end + info.c11_bytes
        self._read_subsections(data, lines_at, lines_at + info.c13_bytes, module, what)
        module.sort()
        return module

    def _read_module_symbols(self, data: bytearray, end: int, module: _ModuleSymbols, what: str) -> None:
        rva_of = self.debug.addresses.rva
        for start in _index_records(data, 4, end, what, self.name):
            length, kind = struct.unpack_from("<HH", data, start)
            record_end = start + 2 + length
            if kind in PROCEDURE_SYMBOLS:
                if record_end < start + PROCEDURE_NAME_OFFSET + 1:
                    raise self.error(f"{what} holds a procedure record of {length} bytes")
                (code_length,) = struct.unpack_from("<I", data, start + 16)
                offset, segment = struct.unpack_from("<IH", data, start + 32)
                rva = rva_of(segment, offset)
                if rva is not None:
                    name = _c_string(data, start + PROCEDURE_NAME_OFFSET, record_end, self.name)[0]
                    module.procedures.append((rva, code_length, name))
            elif kind in DATA_SYMBOLS:
                if record_end < start + SYMBOL_NAME_OFFSET + 1:
                    raise self.error(f"{what} holds a data record of {length} bytes")
                offset, segment = struct.unpack_from("<IH", data, start + 8)
                rva = rva_of(segment, offset)
                if rva is not None:
                    module.data.append(self._data_record(data, start, rva))

    def _read_subsections(self, data: bytearray, position: int, end: int, module: _ModuleSymbols,
                          what: str) -> None:
        """The C13 subsections: (kind, length, body) each, 4-byte aligned; the line and checksum ones."""
        while position + 8 <= end:
            kind, length = struct.unpack_from("<II", data, position)
            body = position + 8
            if body + length > end:
                raise self.error(f"{what} holds a debug subsection that runs past its end")
            if kind == DEBUG_S_LINES:
                self._read_lines(data, body, body + length, module, what)
            elif kind == DEBUG_S_FILECHKSMS:
                self._read_checksums(data, body, body + length, module, what)
            position = (body + length + 3) & ~3

    def _read_lines(self, data: bytearray, position: int, end: int, module: _ModuleSymbols, what: str) -> None:
        """DEBUG_S_LINES: code offset u32, segment u16, flags u16, code size u32; then blocks of (file
        checksum offset, line count, block size) and the lines (offset u32, line in bits 0-23), then
        the columns when the flags say so. Each line runs to the next line's offset or the code's end."""
        if position + 12 > end:
            raise self.error(f"{what} holds a line subsection shorter than its header")
        code_offset, segment, flags, code_size = struct.unpack_from("<IHHI", data, position)
        entry_size = 12 if flags & CV_LINES_HAVE_COLUMNS else 8
        entries = []
        position += 12
        while position + 12 <= end:
            checksum, count, block_size = struct.unpack_from("<III", data, position)
            if block_size < 12 + count * entry_size or position + block_size > end:
                raise self.error(f"{what} holds a line block of {count} lines in {block_size} bytes")
            for number in range(count):
                offset, packed = struct.unpack_from("<II", data, position + 12 + 8 * number)
                entries.append((offset, packed & 0xFFFFFF, checksum))
            position += block_size
        entries.sort(key=lambda entry: entry[0])  # stable: lines at one offset stay in their order
        rva_of = self.debug.addresses.rva
        offsets = sorted({offset for offset, _, _ in entries}) + [code_size]
        following = {offset: offsets[number + 1] for number, offset in enumerate(offsets[:-1])}
        lines = []
        for offset, line, checksum in entries:  # each line runs to the next line's offset or the code's end
            rva = rva_of(segment, code_offset + offset)
            if rva is not None and following[offset] > offset:
                lines.append((rva, rva + following[offset] - offset, line, checksum))
        start = rva_of(segment, code_offset)
        if start is not None and lines:
            lines.sort(key=lambda entry: entry[0])
            module.line_tables.append((start, start + code_size, len(module.line_tables), lines,
                                       [line[0] for line in lines]))

    def _read_checksums(self, data: bytearray, position: int, end: int, module: _ModuleSymbols,
                        what: str) -> None:
        """DEBUG_S_FILECHKSMS: entries of (file name offset in /names u32, checksum size u8, kind u8,
        the checksum), 4-byte aligned; a line block names its file by its entry's offset here."""
        start = position
        while position + 6 <= end:
            name_offset, size = struct.unpack_from("<IB", data, position)
            if position + 6 + size > end:
                raise self.error(f"{what} holds a file checksum entry that runs past its subsection")
            module.files[position - start] = name_offset
            position = (position + 6 + size + 3) & ~3

    def _file_name(self, module: _ModuleSymbols, checksum: int) -> str:
        name_offset = module.files.get(checksum)
        names = self._name_table()
        if name_offset is None or names is None or name_offset >= len(names):
            return ""
        return _c_string(names, name_offset, len(names), self.name)[0]

    def _name_table(self) -> Optional[bytearray]:
        """The /names string table's strings (the buffer after its signature, version and size)."""
        if self._names is None and self.debug.names_stream is not None:
            data = self.debug.stream(self.debug.names_stream)
            if len(data) < 12:
                raise self.error("the /names stream is shorter than its header")
            signature, _, size = struct.unpack_from("<III", data, 0)
            if signature != STRING_TABLE_SIGNATURE or 12 + size > len(data):
                raise self.error("the /names stream is not a string table")
            self._names = data[12:12 + size]
        return self._names


class _Udt:
    """A structure, class, union or enum record: its kind, property bits, field list, size and names."""

    __slots__ = ("index", "kind", "properties", "field_list", "size", "name", "unique_name", "underlying")

    def __init__(self, index, kind, properties, field_list, size, name, unique_name, underlying=0):
        self.index = index
        self.kind = kind
        self.properties = properties
        self.field_list = field_list
        self.size = size
        self.name = name
        self.unique_name = unique_name
        self.underlying = underlying  # an enum's integer type

    @property
    def forward(self) -> bool:
        return bool(self.properties & PROP_FORWARD_REF)

    @property
    def family(self) -> str:
        return "enum" if self.kind == LF_ENUM else "union" if self.kind in (LF_UNION, LF_UNION2) else "class"


class _TypeStream:
    """The TPI stream: record offsets indexed once, records decoded on demand and cached."""

    def __init__(self, data: bytearray, name: str):
        self.data = data
        self.name = name
        if len(data) < 56:
            raise self.error(f"the type stream is {len(data)} bytes, shorter than its header")
        version, header_size, self.first, self.end, record_bytes = TPI_HEADER.unpack_from(data, 0)
        if version not in TPI_VERSIONS:
            raise self.error(f"unknown type stream version {version}")
        if header_size < 56 or header_size + record_bytes > len(data):
            raise self.error("the type records run past the type stream")
        if self.first != FIRST_TYPE_INDEX or self.end < self.first:
            raise self.error(f"type indices {self.first:#x}..{self.end:#x}")
        self.offsets = _index_records(data, header_size, header_size + record_bytes, "the type stream", name)
        if len(self.offsets) != self.end - self.first:
            raise self.error(f"the type stream holds {len(self.offsets)} records, its header says "
                             f"{self.end - self.first}")
        self._udts: Dict[int, Optional[_Udt]] = {}
        self._definitions: Dict[Tuple[str, str], Optional[_Udt]] = {}
        self._members: Dict[int, Dict[str, Tuple[int, int]]] = {}
        self._anonymous: Dict[int, List[Tuple[int, int]]] = {}
        self._sizes: Dict[int, int] = {}

    def error(self, what: str) -> SymbolFileError:
        return SymbolFileError(f"{self.name}: {what}")

    # ---- records ----

    def _record(self, index: int) -> Tuple[int, int, int]:
        """(leaf kind, start of its data, end of the record) of type ``index``."""
        if not self.first <= index < self.end:
            raise self.error(f"type index {index:#x} is outside {self.first:#x}..{self.end:#x}")
        start = self.offsets[index - self.first]
        length, kind = struct.unpack_from("<HH", self.data, start)
        return kind, start + 4, start + 2 + length

    def _need(self, position: int, size: int, end: int, index: int) -> None:
        if position + size > end:
            raise self.error(f"type {index:#x} is cut short")

    def _numeric(self, position: int, end: int, index: int) -> Tuple[int, int]:
        """A numeric leaf (an integer below 0x8000 stored as is, or a leaf kind and its value)."""
        self._need(position, 2, end, index)
        (leaf,) = struct.unpack_from("<H", self.data, position)
        if leaf < 0x8000:
            return leaf, position + 2
        if leaf not in NUMERIC_INTEGERS:
            raise self.error(f"type {index:#x} has a numeric leaf of kind {leaf:#x} where an integer belongs")
        fmt, width = NUMERIC_INTEGERS[leaf]
        self._need(position + 2, width, end, index)
        return struct.unpack_from(fmt, self.data, position + 2)[0], position + 2 + width

    def udt(self, index: int) -> Optional[_Udt]:
        """The structure/union/enum record ``index``, or None when the record is of another kind."""
        if index in self._udts:
            return self._udts[index]
        kind, position, end = self._record(index)
        udt = None
        if kind in UDT_KINDS:
            udt = self._decode_udt(index, kind, position, end)
        self._udts[index] = udt
        return udt

    def _decode_udt(self, index: int, kind: int, position: int, end: int) -> _Udt:
        data = self.data
        underlying = 0
        if kind in CLASS_KINDS or kind == LF_UNION:
            fixed = 8 if kind == LF_UNION else 16  # count, property, field list[, derived, vshape]
            self._need(position, fixed, end, index)
            _, properties, field_list = struct.unpack_from("<HHI", data, position)
            size, position = self._numeric(position + fixed, end, index)
        elif kind == LF_ENUM:
            self._need(position, 12, end, index)
            _, properties, underlying, field_list = struct.unpack_from("<HHII", data, position)
            size, position = -1, position + 12
        else:
            fixed = 8 if kind == LF_UNION2 else 16  # property u32, field list[, derived, vshape]
            self._need(position, fixed, end, index)
            properties, field_list = struct.unpack_from("<II", data, position)
            _, position = self._numeric(position + fixed, end, index)  # member count
            size, position = self._numeric(position, end, index)
        name, position = _c_string(data, position, end, self.name)
        unique_name = ""
        if properties & PROP_HAS_UNIQUE_NAME and position < end:
            unique_name, position = _c_string(data, position, end, self.name)
        return _Udt(index, kind, properties, field_list, size, name, unique_name, underlying)

    # ---- finding definitions ----

    def find_definition(self, name: str, families: Tuple[str, ...], unique_name: str = "") -> Optional[_Udt]:
        """The first defining (not forward) record of one of ``families`` ("class", "union", "enum")
        called ``name``, or with that unique name."""
        key = (unique_name or name, families)
        if key not in self._definitions:
            self._definitions[key] = self._search(unique_name or name, families, bool(unique_name))
        return self._definitions[key]

    def _search(self, wanted: str, families: Tuple[str, ...], by_unique: bool) -> Optional[_Udt]:
        """Look for the name's bytes (without the terminating zero, as in ``_SymbolStream._find``);
        keep a hit that is the name of a defining record."""
        needle = wanted.encode("utf-8")
        if not needle:
            return None
        data, offsets = self.data, self.offsets
        position = data.find(needle, offsets[0] if offsets else len(data))
        hits = 0
        while position >= 0:
            hits += 1
            if hits > MAX_NAME_HITS:
                raise self.error(f"{wanted!r} occurs in more than {MAX_NAME_HITS} type records")
            index = self.first + bisect_right(offsets, position) - 1
            kind, start, end = self._record(index)
            if kind in UDT_KINDS and start <= position:
                udt = self.udt(index)
                matches = (udt.unique_name if by_unique else udt.name) == wanted
                if matches and not udt.forward and udt.family in families:
                    return udt
            position = data.find(needle, max(end, position + 1))  # the next record holding the name
        return None

    def definition_of(self, udt: _Udt) -> Optional[_Udt]:
        """A forward reference's definition: by unique name when it has one, else by name."""
        if not udt.forward:
            return udt
        if udt.unique_name:
            found = self.find_definition(udt.name, (udt.family,), udt.unique_name)
            if found is not None:
                return found
        return self.find_definition(udt.name, (udt.family,))

    # ---- sizes ----

    def size_of(self, index: int) -> int:
        """Byte size of a type: primitive table, pointer attributes, array length, UDT definition."""
        if index < FIRST_TYPE_INDEX:
            mode = (index >> 8) & 0xF
            if mode:
                return PRIMITIVE_POINTER_SIZES.get(mode, 0)
            return PRIMITIVE_SIZES.get(index & 0xFF, 0)
        if index in self._sizes:
            return self._sizes[index]
        size = self._size_of_record(index)
        self._sizes[index] = size
        return size

    def _size_of_record(self, index: int) -> int:
        for _ in range(MAX_TYPE_CHAIN):
            if index < FIRST_TYPE_INDEX:
                return self.size_of(index)
            kind, position, end = self._record(index)
            if kind in (LF_MODIFIER, LF_BITFIELD):  # the modified type; a bit field's storage unit
                self._need(position, 4, end, index)
                (index,) = struct.unpack_from("<I", self.data, position)
                continue
            if kind == LF_POINTER:
                self._need(position, 8, end, index)
                attributes = struct.unpack_from("<I", self.data, position + 4)[0]
                size = (attributes >> 13) & 0x3F
                return size or {0x0A: 4, 0x0C: 8}.get(attributes & 0x1F, 0)
            if kind == LF_ARRAY:
                self._need(position, 8, end, index)
                return self._numeric(position + 8, end, index)[0]
            udt = self.udt(index)
            if udt is None:
                return 0  # procedures and other records that have no storage size
            if udt.kind == LF_ENUM:  # its integer type; a forward reference's is its definition's
                definition = self.definition_of(udt)
                index = (definition or udt).underlying
                continue
            definition = self.definition_of(udt)
            return definition.size if definition is not None else 0
        raise self.error(f"type {index:#x} starts a chain of more than {MAX_TYPE_CHAIN} records")

    def _aggregate(self, index: int) -> Optional[_Udt]:
        """The structure or union a member's type is (through modifiers and forward references)."""
        for _ in range(MAX_TYPE_CHAIN):
            if index < FIRST_TYPE_INDEX:
                return None
            kind, position, end = self._record(index)
            if kind == LF_MODIFIER:
                self._need(position, 4, end, index)
                (index,) = struct.unpack_from("<I", self.data, position)
                continue
            udt = self.udt(index)
            if udt is None or udt.kind == LF_ENUM:
                return None
            return self.definition_of(udt)
        raise self.error(f"type {index:#x} starts a chain of more than {MAX_TYPE_CHAIN} modifiers")

    # ---- members ----

    def members(self, udt: _Udt) -> Dict[str, Tuple[int, int]]:
        """name -> (offset, type) of the data members of a defined structure or union (first of a name)."""
        if udt.index not in self._members:
            self._members[udt.index], self._anonymous[udt.index] = self._read_field_lists(udt)
        return self._members[udt.index]

    def _read_field_lists(self, udt: _Udt) -> Tuple[Dict[str, Tuple[int, int]], List[Tuple[int, int]]]:
        named: Dict[str, Tuple[int, int]] = {}
        anonymous: List[Tuple[int, int]] = []
        seen = set()
        index = udt.field_list
        while index:
            if index in seen:
                raise self.error(f"the field list of {udt.name!r} continues into itself ({index:#x})")
            if len(seen) >= MAX_FIELD_LISTS:
                raise self.error(f"the field list of {udt.name!r} continues more than {MAX_FIELD_LISTS} times")
            seen.add(index)
            kind, position, end = self._record(index)
            if kind != LF_FIELDLIST:
                raise self.error(f"the field list of {udt.name!r} ({index:#x}) is a record of kind {kind:#x}")
            index = self._read_field_list(index, position, end, named, anonymous)
        return named, anonymous

    def _read_field_list(self, index: int, position: int, end: int, named: Dict[str, Tuple[int, int]],
                         anonymous: List[Tuple[int, int]]) -> int:
        """Add the LF_MEMBERs of one LF_FIELDLIST; skip the other leaves; return its LF_INDEX continuation."""
        data = self.data
        continuation = 0
        while position < end:
            if data[position] >= 0xF0:  # LF_PAD0..LF_PAD15: the low nibble says how many bytes to skip
                position += max(data[position] & 0x0F, 1)
                continue
            self._need(position, 2, end, index)
            (leaf,) = struct.unpack_from("<H", data, position)
            position += 2
            if leaf == LF_MEMBER:
                self._need(position, 6, end, index)
                member_type = struct.unpack_from("<I", data, position + 2)[0]
                offset, position = self._numeric(position + 6, end, index)
                member, position = _c_string(data, position, end, self.name)
                if member:
                    named.setdefault(member, (offset, member_type))
                else:  # an unnamed member of a structure or union type: its members are reachable
                    anonymous.append((offset, member_type))
            elif leaf == LF_INDEX:
                self._need(position, 6, end, index)
                continuation = struct.unpack_from("<I", data, position + 2)[0]
                position += 6
            else:
                position = self._skip_field(leaf, position, end, index)
        return continuation

    def _skip_field(self, leaf: int, position: int, end: int, index: int) -> int:
        """Step over a field-list leaf leakhunt does not use, by its real length."""
        data = self.data
        if leaf in (LF_NESTTYPE, LF_NESTTYPEEX, LF_STMEMBER, LF_FRIENDFCN, LF_MEMBERMODIFY, LF_METHOD):
            self._need(position, 6, end, index)  # attribute/pad/count u16, type u32, name
            return _c_string(data, position + 6, end, self.name)[1]
        if leaf == LF_ONEMETHOD:
            self._need(position, 6, end, index)
            (attributes,) = struct.unpack_from("<H", data, position)
            introducing = ((attributes >> 2) & 7) in (4, 6)  # intro virtual: a vtable offset follows
            position += 10 if introducing else 6
            self._need(position, 0, end, index)
            return _c_string(data, position, end, self.name)[1]
        if leaf == LF_ENUMERATE:
            self._need(position, 2, end, index)
            _, position = self._numeric(position + 2, end, index)
            return _c_string(data, position, end, self.name)[1]
        if leaf == LF_BCLASS:
            self._need(position, 6, end, index)
            return self._numeric(position + 6, end, index)[1]
        if leaf in (LF_VBCLASS, LF_IVBCLASS):
            self._need(position, 10, end, index)
            _, position = self._numeric(position + 10, end, index)
            return self._numeric(position, end, index)[1]
        if leaf in (LF_VFUNCTAB, LF_FRIENDCLS):
            self._need(position, 6, end, index)
            return position + 6
        if leaf == LF_VFUNCOFF:
            self._need(position, 10, end, index)
            return position + 10
        raise self.error(f"type {index:#x} holds a field-list leaf of unknown kind {leaf:#x}")

    def find_member(self, udt: _Udt, member: str) -> Optional[Tuple[int, int]]:
        """(offset, type) of ``member`` in ``udt``: a direct member, else one of an unnamed member's
        structure or union (depth first, in declaration order)."""
        stack = [(0, udt, 0)]
        visits = 0
        while stack:
            base, current, depth = stack.pop()
            found = self.members(current).get(member)
            if found is not None:
                return base + found[0], found[1]
            visits += 1
            if visits > MAX_ANONYMOUS_VISITS or depth > MAX_TYPE_CHAIN:
                raise self.error(f"the unnamed members of {udt.name!r} nest too deep to search")
            for offset, member_type in reversed(self._anonymous[current.index]):
                inner = self._aggregate(member_type)
                if inner is not None:
                    stack.append((base + offset, inner, depth + 1))
        return None

    # ---- layouts ----

    def type_info(self, name: str, field_paths: Sequence[str]) -> Optional[TypeInfo]:
        udt = self.find_definition(name, ("class", "union"))
        if udt is None:
            return None
        fields: Dict[str, FieldInfo] = {}
        for path in field_paths:
            found = self._resolve(udt, path)
            if found is not None:
                fields[path] = found
        return TypeInfo(name, udt.size, fields)

    def _resolve(self, udt: _Udt, path: str) -> Optional[FieldInfo]:
        """Follow a dotted path through nested structures and unions, adding up the offsets."""
        parts = path.split(".")
        if len(parts) > MAX_TYPE_CHAIN:
            return None
        offset = 0
        current = udt
        for number, part in enumerate(parts):
            found = self.find_member(current, part)
            if found is None:
                return None
            offset += found[0]
            if number == len(parts) - 1:
                return FieldInfo(offset, self.size_of(found[1]))
            current = self._aggregate(found[1])
            if current is None:
                return None
        return None
