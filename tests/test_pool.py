"""The pool block finder (kernel/pool.py) on pages laid out with the real kernel's pool header (x64: the
build 19041 symbol table; x86: NTDIFF's header, mocks/real_layouts.py), never with leakhunt's tables."""
import struct

import pytest

from mocks import real_layouts
from mocks.scenarios_private import PrivateScene
from pykd_ext.kernel.pool import (FOUND_BY_BIG_POOL_TABLE, FOUND_BY_HEADER, FOUND_BY_VS_HEADER, MAX_HEADER_CANDIDATES,
                                  PoolFinder, tag_before, tag_text)
from pykd_ext.layouts import Layouts
from pykd_ext.session import KernelSession
from pykd_ext.targets.base import PAGE_SIZE, BugCheck
from pykd_ext.targets.snapshot import SnapshotTarget


def finish(scene):
    data = scene.finish_private(BugCheck(0x76, (0, 0, 0, 0)), "pool blocks")
    return SnapshotTarget(data)


def finder(target):
    session = KernelSession(target)
    return PoolFinder(target, session.layouts, session.symbol)


def page_of_headers(scene, rows):
    """A fresh page whose header-sized rows are given as {row: (block units, tag, pool type, previous units)}."""
    unit = real_layouts.pool_header(scene.pointer_size).size
    page = scene.alloc(PAGE_SIZE, align=PAGE_SIZE)
    for row, (units, tag, pool_type, previous) in rows.items():
        scene.write_pool_header(page + row * unit, units, tag, pool_type, previous)
    return page, unit


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_a_block_is_found_by_the_header_that_covers_the_address(arch):
    scene = PrivateScene(arch, 3)
    block = scene.tagged_block(0x60, "Abcd")
    after = scene.alloc(0x40)  # right after the block: its BlockSize does not cover it
    target = finish(scene)
    found = finder(target).block_of(block + 0x58)
    unit = real_layouts.pool_header(target.pointer_size).size
    assert (found.address, found.tag, found.allocated, found.finder) == (block, "Abcd", True, FOUND_BY_HEADER)
    assert found.header == block - unit and found.size >= 0x60
    assert finder(target).block_of(after + 0x8) is None
    assert tag_before(target, Layouts(target), block) == "Abcd"


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_a_free_block_is_found_and_said_free(arch):
    scene = PrivateScene(arch, 3)
    page, unit = page_of_headers(scene, {0: (4, "Free", 0, 0)})
    found = finder(finish(scene)).block_of(page + unit + 8)
    assert found.tag == "Free" and not found.allocated


def test_previous_size_that_leads_nowhere_marks_a_lying_header():
    """The nearest plausible header says its previous block is 2 units long, but no header of that size is
    there: it is data that looks like a header, and the real header before it is taken."""
    scene = PrivateScene("x64", 3)
    page, unit = page_of_headers(scene, {0: (8, "Real", 2, 0), 4: (3, "Fake", 2, 2)})
    found = finder(finish(scene)).block_of(page + 5 * unit)
    assert (found.tag, found.header) == ("Real", page)


def test_previous_size_that_leads_to_its_neighbour_is_believed():
    scene = PrivateScene("x86", 3)
    page, unit = page_of_headers(scene, {0: (2, "Prev", 2, 0), 2: (5, "This", 2, 2)})
    found = finder(finish(scene)).block_of(page + 3 * unit)
    assert (found.tag, found.header) == ("This", page + 2 * unit)


def test_a_header_whose_block_runs_past_its_page_is_not_believed():
    scene = PrivateScene("x64", 3)
    page, unit = page_of_headers(scene, {250: (0x20, "Long", 2, 0)})
    assert finder(finish(scene)).block_of(page + 251 * unit) is None


def test_a_page_full_of_lying_headers_costs_a_bounded_number_of_tries():
    """Every row looks like a header covering the address but points back at nothing: the finder gives up
    after MAX_HEADER_CANDIDATES of them (one read of the page, then one per candidate)."""
    scene = PrivateScene("x64", 3)
    unit = real_layouts.pool_header(8).size
    page, _ = page_of_headers(scene, {row: (255 - row, "Liar", 2, 1 + row % 3) for row in range(1, 255)})
    target = finish(scene)
    reads = []

    class Counting(SnapshotTarget):
        def read(self, address, size):
            reads.append(address)
            return super().read(address, size)

    counting = Counting(target.data)
    assert finder(counting).block_of(page + 200 * unit + 8) is None
    assert len(reads) <= 1 + MAX_HEADER_CANDIDATES


def test_segment_heap_vs_blocks_are_told_from_lfh_blocks_by_where_the_next_header_is():
    scene = PrivateScene("x64", 3)
    vs = scene.vs_blocks([(0x50, "VsOn"), (0x30, "VsTw"), (0x40, "VsTh")])
    lfh = [scene.tagged_block(0x30, "LfhB") for _ in range(3)]
    target = finish(scene)
    pool = finder(target)
    assert [(b.tag, b.finder) for b in (pool.block_of(vs[0] + 8), pool.block_of(vs[1] + 8))] == \
        [("VsOn", FOUND_BY_VS_HEADER), ("VsTw", FOUND_BY_VS_HEADER)]
    assert pool.block_of(lfh[0] + 8).finder == FOUND_BY_HEADER
    # Before the segment heap (build 18362) there are no VS chunk headers: the same bytes are only headers.
    target.data.build = 17763
    older = SnapshotTarget(target.data)
    assert finder(older).block_of(vs[0] + 8).finder == FOUND_BY_HEADER


def test_the_big_pool_table_places_allocations_of_a_page_or_more_when_symbols_give_it():
    scene = PrivateScene("x64", 3)
    big = scene.big_allocation(0x3000, "BigA")
    target = finish(scene)
    found = finder(target).block_of(big + 0x2100)
    assert (found.address, found.size, found.tag, found.finder) == (big, 0x3000, "BigA", FOUND_BY_BIG_POOL_TABLE)
    # Its free entries (Va bit 0) place nothing; without the symbols the table is not used at all.
    free_entry = 0xFFFFA58A30000000 + 0x3000
    assert finder(target).block_of(free_entry + 0x10) is None
    del target.data.symbols["nt!PoolBigPageTable"]
    assert finder(SnapshotTarget(target.data)).block_of(big + 0x2100) is None


def test_tags_are_four_printable_characters_with_a_letter_or_digit():
    assert tag_text(b"ShmC") == "ShmC" and tag_text(b"Irp ") == "Irp "
    assert tag_text(b"Ab" + bytes([0x63, 0x64 | 0x80])) == "Abcd"  # PROTECTED_POOL's top bit
    assert tag_text(b"    ") is None and tag_text(b"Ab\x00d") is None and tag_text(b"abc") is None


def test_the_bit_fields_the_finder_reads_are_the_real_kernels():
    """A header packed with the real kernel's bit positions decodes, through leakhunt's POOL_HEADER_BITS,
    to the same BlockSize, PreviousSize and PoolType (x64 from the ISF, x86 from NTDIFF)."""
    from pykd_ext.layouts import POOL_HEADER_BITS

    for pointer_size in (8, 4):
        facts = real_layouts.pool_header(pointer_size)
        ulong1 = struct.unpack("<I", facts.pack(0x1AB if pointer_size == 4 else 0xAB, 0x5, 0x17))[0]
        decoded = {name: (ulong1 >> first) & ((1 << bits) - 1)
                   for name, (first, bits) in POOL_HEADER_BITS[pointer_size].items()}
        assert (decoded["BlockSize"], decoded["PoolType"], decoded["PreviousSize"]) == \
            (0x1AB if pointer_size == 4 else 0xAB, 0x5, 0x17)


def test_a_big_pool_table_that_is_not_in_memory_is_said_and_not_used():
    scene = PrivateScene("x64", 3)
    big = scene.big_allocation(0x2000, "BigA")
    target = finish(scene)
    target.data.pages.pop(target.read_pointer(target.data.symbols["nt!PoolBigPageTable"]) & ~0xFFF)
    said = []
    session = KernelSession(target)
    pool = PoolFinder(target, session.layouts, session.symbol, said.append)
    assert pool.block_of(big + 0x100) is None
    assert len(said) == 1 and "entries of the big pool table are not in memory" in said[0]


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_pages_decoded_together_place_every_address_as_pages_decoded_one_by_one(arch):
    scene = PrivateScene(arch, 3)
    blocks = [scene.tagged_block(0x40 + 0x10 * (n % 5), f"Bk{n:02d}") for n in range(40)]
    vs = scene.vs_blocks([(0x50, "VsOn"), (0x30, "VsTw")])
    lying, unit = page_of_headers(scene, {0: (8, "Real", 2, 0), 4: (3, "Fake", 2, 2)})
    free, _ = page_of_headers(scene, {0: (4, "Free", 0, 0)})
    target = finish(scene)
    addresses = [address + offset for address in blocks + vs for offset in (0, 8, 0x38)] + \
        [lying + 5 * unit, free + unit + 8, 0xFFFF_F000_0000_0000]  # the last: on no page of the dump
    one_by_one = finder(target)
    together = finder(target)
    together.decode_pages_of(addresses)
    assert [together.block_of(a) for a in addresses] == [one_by_one.block_of(a) for a in addresses]
    assert {one_by_one.block_of(block).tag for block in blocks} == {f"Bk{n:02d}" for n in range(40)}
