"""The dump format as leakhunt reads and the writer writes it, checked against kdmp-parser; the page-table
walk (large pages, the self-map entry); the search's PFN range, progress, threads and interrupts."""
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pykd_ext.targets.dumpheader as dumpheader
from mocks.dumpwriter import DATA_FLAGS, DumpImage
from mocks.scenarios import case_0x76
from pykd_ext import sources
from pykd_ext.session import KernelSession
from pykd_ext.targets.base import PAGE_SIZE, MemoryReadError, PfnRange, SymbolNotFound
from pykd_ext.targets.dumpheader import (DUMP_BITMAP, DUMP_COMPLETE, DUMP_FULL, DUMP_KERNEL_AND_USER,
                                         DUMP_KERNEL_MEMORY, DUMP_KERNEL_BITMAP, runs_of_set_bits)

kdmp_parser = pytest.importorskip("kdmp_parser")

ALL_TYPES = [DUMP_FULL, DUMP_BITMAP, DUMP_KERNEL_BITMAP, DUMP_KERNEL_MEMORY, DUMP_KERNEL_AND_USER, DUMP_COMPLETE]
LARGE_VA = 0xFFFFD00000000000  # a 2 MiB page
HUGE_VA = 0xFFFFD10000000000  # a 1 GiB page
LARGE_PFN = 0x100000  # 4 GiB, 2 MiB aligned
HUGE_PFN = 0x80000  # 2 GiB, 1 GiB aligned
MARKER = 0xFFFFD0CAFE0000F0


@pytest.fixture(scope="module")
def scenario():
    return case_0x76("x64", "irp")


@pytest.fixture
def open_dump(tmp_path):
    opened = []

    def _open(image_or_data, dump_type=DUMP_BITMAP, complete=False):
        image = image_or_data if isinstance(image_or_data, DumpImage) else DumpImage(image_or_data)
        path = str(tmp_path / f"dump{len(opened)}.dmp")
        image.write(path, dump_type, complete)
        target = sources.open_dump(path)
        opened.append(target)
        return target, path

    yield _open
    for target in opened:
        target.close()


# ---- the writer's files read the same through kdmp-parser and leakhunt -------------------------------

@pytest.mark.parametrize("dump_type", ALL_TYPES)
def test_kdmp_parser_reads_what_the_writer_wrote(open_dump, scenario, dump_type):
    target, path = open_dump(scenario.data, dump_type)
    parser = kdmp_parser.KernelDumpParser(path)
    assert int(parser.type) == dump_type == target.header.dump_type
    header = parser.header
    assert header.BugCheckCode == target.bugcheck().code == 0x76
    assert list(header.BugCheckCodeParameter) == list(target.bugcheck().parameters)
    assert header.PsLoadedModuleList == target.symbol("nt!PsLoadedModuleList")
    assert parser.directory_table_base == target.header.directory_table_base
    frames = sorted(pa >> 12 for pa in parser.pages.keys())
    mine = [pfn for first, count in zip(target.layout.first_pfn.tolist(), target.layout.count.tolist())
            for pfn in range(first, first + count)]
    assert frames == mine
    for va, pa in scenario.data.physical.items():
        assert parser.translate_virtual(va) == pa
        assert bytes(parser.read_virtual_page(va)) == target.read(va, PAGE_SIZE) == scenario.data.pages[va]
    for pfn in frames[::97]:
        assert bytes(parser.pages[pfn << 12]) == target.read_physical(pfn << 12, PAGE_SIZE)


def test_a_complete_bitmap_dump_holds_every_frame(open_dump, scenario):
    target, path = open_dump(scenario.data, DUMP_BITMAP, complete=True)
    with open(path, "rb") as handle:
        handle.seek(0x2000)
        assert handle.read(4) == b"FDMP"
    assert target.layout.pages == sum(count for _, count in target.header.physical_runs)
    assert target.max_pfn == scenario.data.max_pfn


def test_header_facts_and_symbols(open_dump, scenario):
    target, _ = open_dump(scenario.data)
    assert (target.arch, target.pointer_size, target.build) == ("x64", 8, 19045)
    assert target.max_pfn == scenario.data.max_pfn  # from the PhysicalMemoryBlock, not the frames present
    assert target.header.processors == 4
    assert target.modules() is None  # the dump has no list of its own: the session walks PsLoadedModuleList
    assert [m.image for m in KernelSession(target).modules()] == [m.image for m in scenario.data.modules]
    with pytest.raises(SymbolNotFound, match="--symbol-path"):
        target.symbol("nt!KiBugCheckDriver")
    with pytest.raises(MemoryReadError):
        target.read(0xFFFFF80000000000, 8)  # not mapped
    with pytest.raises(MemoryReadError):
        target.read(0x0000800000000000, 8)  # not canonical
    with pytest.raises(MemoryReadError):
        target.read_physical(0x7FFF000, 8)  # beyond the machine


def test_reads_cross_page_boundaries(open_dump, scenario):
    target, _ = open_dump(scenario.data)
    pages = sorted(scenario.data.pages)
    first, second = next((a, b) for a, b in zip(pages, pages[1:]) if b == a + PAGE_SIZE)
    assert target.read(second - 8, 16) == scenario.data.pages[first][-8:] + scenario.data.pages[second][:8]


# ---- the page-table walk ----------------------------------------------------------------------------

def marked_page(value):
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<Q", page, 0x238, value)
    return bytes(page)


def test_large_and_huge_pages_are_read_and_searched(open_dump, scenario):
    image = DumpImage(scenario.data)
    image.map_large(LARGE_VA, LARGE_PFN, 2 << 20)
    image.map_large(HUGE_VA, HUGE_PFN, 1 << 30)
    image.pages[LARGE_PFN + 5] = marked_page(MARKER)
    image.pages[HUGE_PFN + 0x12345] = marked_page(MARKER + 0x10)
    target, path = open_dump(image)
    assert target.read_u64(LARGE_VA + 5 * PAGE_SIZE + 0x238) == MARKER
    assert target.read_u64(HUGE_VA + 0x12345 * PAGE_SIZE + 0x238) == MARKER + 0x10
    parser = kdmp_parser.KernelDumpParser(path)
    assert parser.translate_virtual(HUGE_VA + 0x12345 * PAGE_SIZE) == (HUGE_PFN + 0x12345) * PAGE_SIZE
    hits = target.search_pointers([MARKER, MARKER + 0x10])
    assert [(h.virtual, h.physical) for h in hits[MARKER]] == [
        (LARGE_VA + 5 * PAGE_SIZE + 0x238, (LARGE_PFN + 5) * PAGE_SIZE + 0x238)]
    assert [h.virtual for h in hits[MARKER + 0x10]] == [HUGE_VA + 0x12345 * PAGE_SIZE + 0x238]


def test_page_tables_seen_only_through_the_self_map_have_no_kernel_address(open_dump, scenario):
    image = DumpImage(scenario.data)
    va, pa = sorted(scenario.data.physical.items())[0]
    pte = pa | DATA_FLAGS  # the PTE that maps the page: it lies in a page table
    target, _ = open_dump(image)
    hits = target.search_pointers([pte])[pte]
    assert hits and all(h.virtual is None for h in hits)
    assert all((h.physical >> 12) in image.tables for h in hits)


def test_a_page_mapped_twice_is_found_at_its_lowest_address(open_dump, scenario):
    process = scenario.expected["process"]
    target, _ = open_dump(scenario.data)
    before = target.search_pointers([process])[process]
    page = before[0].virtual & ~0xFFF
    alias = 0xFFFFE00000000000  # above the pool: the hit keeps its pool address
    image = DumpImage(scenario.data)
    image.map(alias, scenario.data.physical[page] >> 12)
    aliased, _ = open_dump(image)
    assert aliased.read(alias, PAGE_SIZE) == scenario.data.pages[page]
    assert aliased.search_pointers([process])[process] == before


# ---- the search -------------------------------------------------------------------------------------

def test_the_pfn_range_bounds_the_search(open_dump, scenario):
    target, _ = open_dump(scenario.data, DUMP_FULL)
    process = scenario.expected["process"]
    everywhere = target.search_pointers([process])[process]
    assert len(everywhere) > 2
    frames = sorted({h.physical >> 12 for h in everywhere})
    chosen = PfnRange(frames[1], frames[-2])
    inside = target.search_pointers([process], chosen)[process]
    assert inside == [h for h in everywhere if chosen.contains_address(h.physical)]
    assert target.search_pointers([process], PfnRange(0x7FFFFF0, 0x7FFFFFF)) == {process: []}


def test_progress_counts_up_to_the_bytes_searched(open_dump, scenario, monkeypatch):
    monkeypatch.setattr("pykd_ext.targets.dumpfile.WINDOW_BYTES", 16 * PAGE_SIZE)
    target, _ = open_dump(scenario.data)
    calls = []
    target.search_pointers([1], progress=lambda done, total: calls.append((done, total)))
    total = target.layout.pages * PAGE_SIZE
    assert len(calls) > 2 and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_an_interrupt_stops_the_search_and_leaves_the_target_usable(open_dump, scenario, monkeypatch):
    monkeypatch.setattr("pykd_ext.targets.dumpfile.WINDOW_BYTES", 16 * PAGE_SIZE)
    target, _ = open_dump(scenario.data)
    calls = []

    def interrupt(done, total):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        target.search_pointers([scenario.expected["process"]], progress=interrupt)
    assert len(calls) == 1
    process = scenario.expected["process"]
    assert target.search_pointers([process])[process]


# ---- building blocks --------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=90), st.integers(0, 7), st.integers(1, 4))
def test_runs_of_set_bits(bits, cut, chunk_bytes):
    saved = dumpheader._BITMAP_CHUNK_BYTES
    dumpheader._BITMAP_CHUNK_BYTES = chunk_bytes
    try:
        raw = bytearray((len(bits) + 7) // 8)
        for index, bit in enumerate(bits):
            raw[index // 8] |= bit << (index % 8)
        count = max(0, len(bits) - cut)
        starts, lengths = runs_of_set_bits(bytes(raw), count)
        expected, index = [], 0
        while index < count:
            if bits[index]:
                end = index
                while end < count and bits[end]:
                    end += 1
                expected.append((index, end - index))
                index = end
            else:
                index += 1
        assert list(zip(starts.tolist(), lengths.tolist())) == expected
    finally:
        dumpheader._BITMAP_CHUNK_BYTES = saved


def test_noise_pages_are_streamed_and_mapped(tmp_path, scenario):
    image = DumpImage(scenario.data, noise_pages=1000, seed=5)
    path = str(tmp_path / "noise.dmp")
    image.write(path)
    assert image.noise.pages == 1024 and image.noise.first_pfn % 512 == 0
    assert os.path.getsize(path) > 1024 * PAGE_SIZE
    target = sources.open_dump(path)
    try:
        first = image.noise.first_pfn
        assert target.read_physical(first << 12, PAGE_SIZE) == image.noise.content(first, 1)
        assert target.read(0xFFFFC58000000000 + 1023 * PAGE_SIZE, PAGE_SIZE) == image.noise.content(first + 1023, 1)
    finally:
        target.close()
