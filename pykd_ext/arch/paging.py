"""How four-level page tables with a 4 KiB granule read, as data: one ``PagingFormat`` per architecture.

x64 (Intel SDM vol. 3 §4.5, 4-level paging) and ARM64 (ARMv8-A VMSAv8-64 with a 4 KiB granule and
48-bit virtual addresses, as Windows configures it) index the same structure: a table is one 4 KiB page
of 512 eight-byte entries, and virtual address bits 47:39, 38:30, 29:21 and 20:12 select the entry at
levels 0 to 3. What differs is how an entry says "the next table", "a block" (a 1 GiB or 2 MiB large
page at level 1 or 2) or "a page" (level 3): a ``PagingFormat`` says it with (mask, value) tests on the
entry, which the walks of ``pagetables.py`` apply, so a new format is a handful of numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

# Virtual address bits each level indexes (its shift; 9 bits each), level 0 first.
LEVEL_SHIFTS = (39, 30, 21, 12)
ENTRIES_PER_TABLE = 512
TABLE_BYTES = 0x1000

# (mask, value): an entry passes the test when entry & mask == value.
EntryTest = Tuple[int, int]


@dataclass(frozen=True)
class PagingFormat:
    """How the entries of one architecture's four-level tables read (see the module docstring).

    ``table[level]`` (levels 0-2): the entry points to the next level's table. ``block[level]``: the
    entry maps a large block at that level (None: no block exists there). ``page``: the tests by which
    a level-3 entry maps its 4 KiB page (more than one when a not-valid entry still names a frame that
    holds the page, as ARM64's transition entries do). ``address_mask``: where the frame's address is.
    """

    name: str
    address_mask: int
    table: Tuple[EntryTest, EntryTest, EntryTest]
    block: Tuple[Optional[EntryTest], Optional[EntryTest], Optional[EntryTest]]
    page: Tuple[EntryTest, ...]
    # The first top-level entry of the kernel half of the address space (0xFFFF8000`00000000 and up).
    kernel_first_index: int = 256
    virtual_address_bits: int = 48

    def canonical(self, address: int) -> int:
        """The 64-bit form of a virtual address of ``virtual_address_bits`` bits (sign-extended)."""
        top = 1 << (self.virtual_address_bits - 1)
        low = address & ((1 << self.virtual_address_bits) - 1)
        return low | (((1 << 64) - 1) ^ ((1 << self.virtual_address_bits) - 1)) if low & top else low

    def is_canonical(self, address: int) -> bool:
        return self.canonical(address) == address
