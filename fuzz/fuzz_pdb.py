"""Fuzz target: the PDB reader (``PdbFile.open``, then ``rva``, ``type_info``, ``locate`` and ``locate_data``).

    python fuzz/fuzz_pdb.py --runs 2000             # the CI run
    python fuzz/fuzz_pdb.py --runs 50000 --seed 7   # longer, on demand
    python fuzz/fuzz_pdb.py --replay fuzz/crashes/type-words-seed1-42.pdb

The bases are the generated test kernel's PDB (clang and lld-link, tests/data/testkernel/), the test
driver's PDB (clang and lld-link, tests/data/testdriver/: module streams with procedures, data
symbols and C13 line tables, section contributions, publics, /names), the LF_STRUCTURE2 sample of
mocks/pdbwriter.py, and a pdbwriter PDB of the same kernel's structures as LF_STRUCTURE2 records for a
rearranged image (OMAP). Each input damages one: truncation anywhere, flipped bytes anywhere,
superblock fields and stream directory entries (stream sizes, block numbers) set to hostile values,
bytes flipped inside one stream (PDB info, TPI, DBI, section headers, symbol records, OMAP, module
streams, /names), 16- and 32-bit words inside the type records set to record kinds, leaf kinds, type
indices and lengths (cycles, runaway chains, absurd counts), 16- and 32-bit words inside a module
stream (record lengths and kinds, procedure lengths and addresses, subsection kinds and lengths, line
counts, block sizes, file checksum offsets) and inside the DBI's module info and section
contributions set to hostile values, trailing garbage. An input passes when:

- ``PdbFile.open`` returns a PdbFile or raises SymbolFileError with one clear line;
- ``rva`` of the kernel's and the driver's globals, ``type_info`` of every structure leakhunt knows
  (with every field path it knows) and of the test shapes, ``locate`` and ``locate_data`` of RVAs all
  over the test images answer None, an int, a TypeInfo of ints or a CodeLocation of the right types,
  or raise SymbolFileError with one clear line;
- the file is byte-identical afterwards; all within the time limit.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import sys
from typing import List, Tuple

from runner import ContractBroken, main, one_line

from fuzz.mutators import flip_bytes, truncate
from mocks import pdbwriter, test_kernel
from pykd_ext import layouts
from pykd_ext.symbols import pdb as fmt
from pykd_ext.symbols.base import CodeLocation, SymbolFileError
from pykd_ext.symbols.pdb import PdbFile
from pykd_ext.typeinfo import TypeInfo

DAMAGE = ("truncate", "flip", "superblock", "directory", "stream-bytes", "type-words", "module-words", "dbi-words",
          "trailing-garbage")
WORDS = [0, 1, 2, 3, 0x7FFF, 0x8000, 0x8001, 0x8004, 0x8005, 0x800A, 0xFFFF, 0x1000, 0x1001, 0x1002, 0x1203,
         0x1205, 0x1404, 0x1503, 0x1505, 0x1506, 0x1609, 0x160A, 0x150D, 0x1510, 0x1511, 0xF1, 0xF3]
DWORDS = [0, 1, 0xFFF, 0x1000, 0x1001, 0x1002, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x3FFFFFFF, 4096]
LOOKUPS = [(name, layouts.known_field_names(name)) for name in sorted(
    set(layouts.STABLE_LAYOUTS) | set(layouts.OTHER_STABLE_LAYOUTS) | set(layouts.BUILD_LAYOUTS_X64))]
LOOKUPS += [("_LEAKHUNT_SHAPES", ["Locked", "Grid", "State", "Chain"]), ("_HOLDER", ["Node.Far", "Node.Whole"]),
            ("_LEAKHUNT_WIDE", ["Field0000", "Field8999"]), ("_KPROCESS", [])]
SYMBOLS = [name for name, _ in test_kernel.GLOBALS] + [test_kernel.ENTRY, "KiLocal", "g_StateLock", "DriverEntry"]
DRIVER_PDB = os.path.join(test_kernel.ROOT, "tests", "data", "testdriver", "lockdrv.pdb")
# RVAs asked of ``locate`` and ``locate_data``: the headers, the driver's code, data and the gaps
# between, the kernel's sections, and far past every image.
RVAS = [0, 0x1000, 0x1001, 0x1089, 0x1090, 0x10E0, 0x1100, 0x11C0, 0x2000, 0x2040, 0x3000, 0x3004, 0x3010,
        0x3020, 0x3030, 0x3070, 0x3074, 0x4000, 0x5000, 0x400000, 0x400100, 0x7FFFFFFF, 0xFFFFFFFF]


class Base:
    """A PDB and where its streams are in the file (block size, each stream's file offsets)."""

    def __init__(self, name: str, raw: bytes):
        self.name = name
        self.raw = raw
        msf = fmt._Msf(io.BytesIO(raw), name)
        self.block_size = msf.block_size
        self.block_count = msf.block_count
        self.streams = [(size, blocks) for size, blocks in zip(msf.sizes, msf._block_lists)]
        self.directory_offsets = self._directory_offsets()
        self.module_streams = self._module_streams(msf)

    def _module_streams(self, msf) -> List[int]:
        """The module streams the DBI's module info names (ModuleSymStream, 34 bytes into each entry)."""
        if not msf.stream_size(fmt.STREAM_DBI):
            return []
        dbi = msf.stream(fmt.STREAM_DBI)
        end = fmt.DBI_HEADER.size + struct.unpack_from("<i", dbi, 24)[0]  # ModInfoSize
        streams, position = [], fmt.DBI_HEADER.size
        while position + fmt.MODULE_INFO_SIZE <= end:
            stream = struct.unpack_from("<H", dbi, position + 34)[0]
            if stream != fmt.NO_STREAM and msf.stream_size(stream):
                streams.append(stream)
            position = dbi.index(b"\x00", dbi.index(b"\x00", position + fmt.MODULE_INFO_SIZE) + 1) + 1
            position = (position + 3) & ~3
        return streams

    def stream_offset(self, stream: int, position: int) -> int:
        """The file offset of byte ``position`` of a stream."""
        _, blocks = self.streams[stream]
        return blocks[position // self.block_size] * self.block_size + position % self.block_size

    def _directory_offsets(self) -> List[int]:
        """File offsets of the stream directory's words (stream count, sizes, block numbers)."""
        (directory_bytes,) = struct.unpack_from("<I", self.raw, 44)
        (block_map_block,) = struct.unpack_from("<I", self.raw, 52)
        blocks = struct.unpack_from(f"<{-(-directory_bytes // self.block_size)}I", self.raw,
                                    block_map_block * self.block_size)
        return [blocks[at // self.block_size] * self.block_size + at % self.block_size
                for at in range(0, directory_bytes, 4)]


def _bases() -> List[Base]:
    with open(os.path.join(test_kernel.OUTPUT_DIR, test_kernel.PDB), "rb") as handle:
        kernel = handle.read()
    symbols = [pdbwriter.symbol_record(fmt.S_PUB32, name, 1 + n % 2, 0x40 * n) for n, name in enumerate(SYMBOLS)]
    types = pdbwriter.TypeRecords()
    pdbwriter.kernel_types(types, test_kernel.structures())  # the kernel's structures as LF_STRUCTURE2
    rearranged = pdbwriter.write_pdb(types, symbols, omap=[(0x1000, 0x1000), (0x3000, 0x2400)],
                                     original_sections=[0x1000, 0x3000])
    with open(DRIVER_PDB, "rb") as handle:
        driver = handle.read()
    return [Base("testkernel", kernel), Base("testdriver", driver), Base("class2", pdbwriter.class2_sample()),
            Base("omap", rearranged)]


BASES = _bases()


def _set(raw: bytearray, offset: int, width: int, value: int) -> None:
    if 0 <= offset and offset + width <= len(raw):
        raw[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def make_input(rng: random.Random) -> Tuple[str, bytes]:
    kind = rng.choice(DAMAGE)
    base = rng.choice([base for base in BASES if base.module_streams] if kind == "module-words" else BASES)
    raw = bytearray(base.raw)
    if kind == "truncate":
        return kind, truncate(base.raw, rng.randrange(len(raw)))
    if kind == "flip":
        return kind, flip_bytes(base.raw, [(rng.randrange(len(raw)), rng.randrange(1, 256))
                                           for _ in range(rng.randint(1, 16))])
    if kind == "superblock":
        for _ in range(rng.randint(1, 2)):
            value = rng.choice(DWORDS + [base.block_count, base.block_count + 1, 512, 2048, 8192])
            _set(raw, rng.choice((32, 36, 40, 44, 48, 52)), 4, value if rng.random() < 0.8 else rng.getrandbits(32))
        return kind, bytes(raw)
    if kind == "directory":
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(DWORDS + [base.block_count - 1, base.block_count, 0xFFFFFFFF])
            _set(raw, rng.choice(base.directory_offsets), 4, value if rng.random() < 0.8 else rng.getrandbits(32))
        return kind, bytes(raw)
    if kind == "stream-bytes":
        candidates = [index for index, (size, _) in enumerate(base.streams) if size]
        stream = rng.choice(candidates)
        size = base.streams[stream][0]
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(min(size, 256)) if rng.random() < 0.5 else rng.randrange(size)
            raw[base.stream_offset(stream, position)] ^= rng.randrange(1, 256)
        return kind, bytes(raw)
    if kind == "type-words":
        size = base.streams[fmt.STREAM_TPI][0]
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(56, size - 4) & ~1
            if rng.random() < 0.5:
                _set(raw, base.stream_offset(fmt.STREAM_TPI, position), 2, rng.choice(WORDS))
            else:
                value = rng.choice(DWORDS + [rng.randrange(0x1000, 0x1000 + 400)])
                for byte in range(4):  # a dword may straddle a block boundary
                    offset = base.stream_offset(fmt.STREAM_TPI, min(position + byte, size - 1))
                    _set(raw, offset, 1, value >> (8 * byte))
        return kind, bytes(raw)
    if kind == "module-words":
        _set_words(raw, base, rng.choice(base.module_streams), rng, 4)
        return kind, bytes(raw)
    if kind == "dbi-words" and base.streams[fmt.STREAM_DBI][0] > fmt.DBI_HEADER.size:
        _set_words(raw, base, fmt.STREAM_DBI, rng, fmt.DBI_HEADER.size)
        return kind, bytes(raw)
    return kind, base.raw + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 0x2000)))


def _set_words(raw: bytearray, base: Base, stream: int, rng: random.Random, start: int) -> None:
    """Set a few 16- or 32-bit words of ``stream`` (from byte ``start``) to hostile values."""
    size = base.streams[stream][0]
    if size <= start + 4:
        return
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(start, size - 4) & ~1
        if rng.random() < 0.4:
            value, width = rng.choice(WORDS + [0x1110, 0x110F, 0x1147, 0x110C, 0x110D, 0x110E, 0x00F2, 0x00F4]), 2
        else:
            value, width = rng.choice(DWORDS + [0xF2, 0xF4, 0xF3, 0x80000000 | 0xF2, rng.randrange(0, 0x200)]), 4
        for byte in range(width):  # a word may straddle a block boundary
            _set(raw, base.stream_offset(stream, min(position + byte, size - 1)), 1, value >> (8 * byte))


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _lookups(pdb: PdbFile) -> Tuple[int, int]:
    """Every lookup; (answered, refused) counts. A wrong type of answer breaks the contract."""
    answered = refused = 0
    for name in SYMBOLS:
        try:
            rva = pdb.rva(name)
        except SymbolFileError as error:
            one_line(str(error))
            refused += 1
            continue
        if rva is not None and not isinstance(rva, int):
            raise ContractBroken(f"rva({name}) answered {rva!r}")
        answered += 1
    for rva in RVAS:
        for locate in (pdb.locate, pdb.locate_data):
            try:
                found = locate(rva)
            except SymbolFileError as error:
                one_line(str(error))
                refused += 1
                continue
            if found is not None and not _is_location(found):
                raise ContractBroken(f"{locate.__name__}({rva:#x}) answered {found!r}")
            answered += 1
    for name, fields in LOOKUPS:
        try:
            info = pdb.type_info(name, fields)
        except SymbolFileError as error:
            one_line(str(error))
            refused += 1
            continue
        if info is not None:
            if not isinstance(info, TypeInfo) or not isinstance(info.size, int) or \
                    not all(isinstance(f.offset, int) and isinstance(f.size, int) for f in info.fields.values()) or \
                    not set(info.fields) <= set(fields):
                raise ContractBroken(f"type_info({name}) answered {info!r}")
        answered += 1
    return answered, refused


def _is_location(found) -> bool:
    return (isinstance(found, CodeLocation) and isinstance(found.name, str) and isinstance(found.start, int)
            and isinstance(found.offset, int) and found.offset >= 0 and isinstance(found.file, str)
            and (found.size is None or isinstance(found.size, int)) and (found.line is None or isinstance(found.line, int)))


def check(path: str) -> str:
    before = _digest(path)
    try:
        pdb = PdbFile.open(path)
    except SymbolFileError as error:
        one_line(str(error))
        outcome = "refused at open"
    else:
        try:
            _, refused = _lookups(pdb)
        finally:
            pdb.close()
        outcome = "some lookups refused" if refused else "opened, every lookup answered"
    if _digest(path) != before:
        raise ContractBroken("the PDB file changed")
    return outcome


if __name__ == "__main__":
    sys.exit(main("fuzz_pdb", __doc__.splitlines()[0], make_input, check, ".pdb"))
