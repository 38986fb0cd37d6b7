"""Every built-in x64 offset and size of pykd_ext/layouts.py against real kernel symbols.

The real data are volatility3 ISF files made from Microsoft's ntkrnlmp.pdb of builds 17763, 19041,
20348 and 22000 (tests/data/symbols/). The stable tables must hold on every one of them; the build
19045 tables are checked against the 19041 kernel: Windows 10 2004 (19041) and 20H2-22H2
(19042-19045) share one kernel (the later versions are 2004 plus a feature enablement package; their
ntoskrnl reports 10.0.19041.x). No ISF of 22621, 22631 or 26100 is available, so the 26100 tables and
every x86 column are not checked here (docs/symbols.md lists what is and is not).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import pytest

from pykd_ext.layouts import (BUILD_LAYOUTS_X64, KIND_SIZES, OTHER_STABLE_LAYOUTS, STABLE_LAYOUTS,
                              UNVERIFIED_BUILD_TABLES)
from pykd_ext.symbols.isf import IsfFile, Member

ISF_FOLDER = Path(__file__).parent / "data" / "symbols" / "windows" / "ntkrnlmp.pdb"
KERNELS = {  # GUID-AGE -> build of the ntoskrnl the PDB belongs to
    "8B11040A5928757B11390AC78F6B6925-1": 17763,
    "5278AFF86C341677D7D7835C85B7B844-1": 19041,
    "879AD95F3461091BB6318FA98072AD8E-1": 20348,
    "0CE4A95C0CD782A7596B034D8648E585-1": 22000,
}
# The built-in build tables and the real kernel that verifies each.
VERIFYING_BUILD = {19045: 19041}
# Where the kernel PDB spells a built-in name differently: the x64 NT headers are IMAGE_NT_HEADERS64.
PDB_TYPE_NAMES = {"_IMAGE_NT_HEADERS": "_IMAGE_NT_HEADERS64"}
PDB_FIELD_PATHS = {}
POINTER_SIZE = 8


def _kernel(build: int) -> IsfFile:
    key = next(key for key, value in KERNELS.items() if value == build)
    return IsfFile.open(str(ISF_FOLDER / f"{key}.json.xz"))


def _kind_size(kind: str) -> Optional[int]:
    """Bytes a scalar kind decodes (None for an embedded structure or array)."""
    return POINTER_SIZE if kind == "ptr" else KIND_SIZES.get(kind)


def _row_problems(symbols: IsfFile, name: str, field: str, offset: int, kind: str) -> List[str]:
    """Why a built-in row (field, x64 offset, kind) disagrees with the real type, or []."""
    member = symbols.member(PDB_TYPE_NAMES.get(name, name), PDB_FIELD_PATHS.get((name, field), field))
    if member is None:
        return [f"{name}.{field}: not in the PDB"]
    real_offset, decoded = _decoded_bytes(member)
    problems = []
    if real_offset != offset:
        problems.append(f"{name}.{field}: built-in {offset:#x}, PDB {real_offset:#x}")
    width = _kind_size(kind)
    if width is not None and decoded is not None and width != decoded:
        problems.append(f"{name}.{field}: built-in kind {kind} reads {width} bytes, the PDB's field has {decoded}")
    if width is not None and decoded is None and width > member.size:
        problems.append(f"{name}.{field}: built-in kind {kind} reads past the {member.size}-byte field")
    return problems


def _decoded_bytes(member: Member):
    """(byte offset, byte width) a scalar field is decoded at; width None for an aggregate (whose first
    bytes a scalar kind may read, e.g. LockState's first word). A byte-aligned bit field of whole bytes
    (POOL_HEADER.PoolType: bits 8-15 of a USHORT) is the byte it occupies."""
    if member.kind == "bitfield":
        if member.bit_position % 8 == 0 and member.bit_length % 8 == 0:
            return member.offset + member.bit_position // 8, member.bit_length // 8
        return member.offset, -1  # not byte-aligned: no byte kind decodes it
    if member.kind in ("base", "pointer", "enum"):
        return member.offset, member.size
    return member.offset, None


def _stable_cases():
    for table in (STABLE_LAYOUTS, OTHER_STABLE_LAYOUTS):
        for name in table:
            for key, build in KERNELS.items():
                yield pytest.param(name, build, id=f"{name}-{build}")


@pytest.mark.parametrize("name, build", list(_stable_cases()))
def test_stable_tables_match_every_real_kernel(name, build):
    rows, size64, _ = STABLE_LAYOUTS.get(name) or OTHER_STABLE_LAYOUTS[name]
    symbols = _kernel(build)
    real = symbols.type_info(PDB_TYPE_NAMES.get(name, name), [])
    assert real is not None, f"{name} is not in the {build} PDB"
    problems = [] if not size64 or size64 == real.size else [f"{name}: sizeof built-in {size64:#x}, PDB {real.size:#x}"]
    for field, offset64, _, kind in rows:
        if offset64 is not None:
            problems.extend(_row_problems(symbols, name, field, offset64, kind))
    assert problems == []


def _build_cases():
    for name, builds in BUILD_LAYOUTS_X64.items():
        for build in builds:
            if build in VERIFYING_BUILD:
                yield pytest.param(name, build, id=f"{name}-{build}")


@pytest.mark.parametrize("name, build", list(_build_cases()))
def test_build_19045_tables_match_the_19041_kernel(name, build):
    size, table = BUILD_LAYOUTS_X64[name][build]
    symbols = _kernel(VERIFYING_BUILD[build])
    real = symbols.type_info(name, [])
    assert real is not None
    problems = [] if size is None or size == real.size else [f"{name}: sizeof built-in {size:#x}, PDB {real.size:#x}"]
    for field, (offset, kind) in table.items():
        problems.extend(_row_problems(symbols, name, field, offset, kind))
    assert problems == []


def test_the_arrays_of_the_19045_tables_have_the_real_length():
    symbols = _kernel(19041)
    assert symbols.member("_ETHREAD", "LockEntries").size == 6 * symbols.type_info("_KLOCK_ENTRY", []).size
    assert symbols.member("_LOCK_TRACKER", "StackTrace").size == 8 * POINTER_SIZE


def test_the_19045_tables_do_not_fit_the_other_kernels():
    """The check has teeth: the 19045 EPROCESS table is wrong for 17763 (as the notes say: 0x3a0, 0x450),
    and the 19045 ETHREAD table wrong for 20348 and 22000."""
    _, eprocess = BUILD_LAYOUTS_X64["_EPROCESS"][19045]
    old = _kernel(17763)
    assert _row_problems(old, "_EPROCESS", "NumberOfLockedPages", *eprocess["NumberOfLockedPages"])
    assert old.member("_EPROCESS", "NumberOfLockedPages").offset == 0x3A0
    assert old.member("_EPROCESS", "ImageFileName").offset == 0x450
    _, ethread = BUILD_LAYOUTS_X64["_ETHREAD"][19045]
    for build in (20348, 22000):
        assert _row_problems(_kernel(build), "_ETHREAD", "Cid", *ethread["Cid"])


def test_the_verified_19045_tables_say_what_stays_unverified():
    for (name, pointer_size, build), why in UNVERIFIED_BUILD_TABLES.items():
        if pointer_size == 8 and build in VERIFYING_BUILD:
            assert "matches the 19041.804 kernel PDB" in why, name


@pytest.mark.parametrize("build", [19041, 20348, 22000])
def test_the_boost_bits_leakhunt_decodes_are_the_kernels(build):
    """kernel/lock_entries.BOOST_BITS, by the width of _KLOCK_ENTRY.BoostBitmap, against the real bit fields."""
    from pykd_ext.kernel.lock_entries import BOOST_BITS

    symbols = _kernel(build)
    width = symbols.member("_KLOCK_ENTRY", "BoostBitmap").size
    real = {name: symbols.member("_KLOCK_ENTRY_BOOST_BITMAP", name)
            for name in ("CpuBoostsBitmap", "IoBoost", "IoQoSBoost")}
    bit = {name: 8 * member.offset + member.bit_position for name, member in real.items()}  # in the whole union
    cpu_mask, io_bit, io_qos_bit = BOOST_BITS[width]
    assert (bit["CpuBoostsBitmap"], cpu_mask) == (0, (1 << real["CpuBoostsBitmap"].bit_length) - 1)
    assert (io_bit, io_qos_bit) == (1 << bit["IoBoost"], 1 << bit["IoQoSBoost"])


@pytest.mark.parametrize("build", sorted(KERNELS.values()))
def test_the_pool_header_bits_and_segment_heap_sizes_are_the_kernels(build):
    """POOL_HEADER_BITS (bits of Ulong1), the VS chunk header's size and the symbols-only big pool fields."""
    from pykd_ext.layouts import POOL_HEADER_BITS, SYMBOLS_ONLY_LAYOUTS, VS_CHUNK_HEADER_SIZE

    symbols = _kernel(build)
    for field, (first_bit, bits) in POOL_HEADER_BITS[POINTER_SIZE].items():
        member = symbols.member("_POOL_HEADER", field)
        assert member.kind == "bitfield" and (8 * member.offset + member.bit_position, member.bit_length) == (
            first_bit, bits), field
    assert symbols.type_info("_HEAP_VS_CHUNK_HEADER", []).size == VS_CHUNK_HEADER_SIZE[POINTER_SIZE]
    for field, kind in SYMBOLS_ONLY_LAYOUTS["_POOL_TRACKER_BIG_PAGES"]:
        member = symbols.member("_POOL_TRACKER_BIG_PAGES", field)
        assert member.kind == "base" and member.size == _kind_size(kind), field
    assert symbols.rva("PoolBigPageTable") and symbols.rva("PoolBigPageTableSize")
