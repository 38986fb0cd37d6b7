"""`_MDL`: memory descriptor lists, and how to tell a real one from a pointer that happens to match.

An MDL has no Type field. A candidate is accepted when its header is self-consistent: the Size
field is ``sizeof(MDL) + n * sizeof(PFN_NUMBER)`` with room for the pages that StartVa, ByteOffset
and ByteCount span, the flags do not contradict each other, StartVa is a user address (the only case
in which MmProbeAndLockPages sets MDL.Process and charges the process's locked-page count), and the
PFN array that follows the header holds page frame numbers that exist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import List, Tuple

from ..layouts import Layouts
from ..targets.base import PAGE_SIZE, MemoryReadError, Target
from . import FLAG_NAMES_CACHED

# MDL flags (wdm.h).
MDL_MAPPED_TO_SYSTEM_VA = 0x0001
MDL_PAGES_LOCKED = 0x0002
MDL_SOURCE_IS_NONPAGED_POOL = 0x0004
MDL_ALLOCATED_FIXED_SIZE = 0x0008
MDL_PARTIAL = 0x0010
MDL_PARTIAL_HAS_BEEN_MAPPED = 0x0020
MDL_IO_PAGE_READ = 0x0040
MDL_WRITE_OPERATION = 0x0080
MDL_LOCKED_PAGE_TABLES = 0x0100
MDL_FREE_EXTRA_PTES = 0x0200
MDL_DESCRIBES_AWE = 0x0400
MDL_IO_SPACE = 0x0800
MDL_NETWORK_HEADER = 0x1000
MDL_MAPPING_CAN_FAIL = 0x2000
MDL_PAGE_CONTENTS_INVARIANT = 0x4000
MDL_INTERNAL = 0x8000

MDL_FLAG_NAMES = {
    MDL_MAPPED_TO_SYSTEM_VA: "MAPPED_TO_SYSTEM_VA",
    MDL_PAGES_LOCKED: "PAGES_LOCKED",
    MDL_SOURCE_IS_NONPAGED_POOL: "SOURCE_IS_NONPAGED_POOL",
    MDL_ALLOCATED_FIXED_SIZE: "ALLOCATED_FIXED_SIZE",
    MDL_PARTIAL: "PARTIAL",
    MDL_PARTIAL_HAS_BEEN_MAPPED: "PARTIAL_HAS_BEEN_MAPPED",
    MDL_IO_PAGE_READ: "IO_PAGE_READ",
    MDL_WRITE_OPERATION: "WRITE_OPERATION",
    MDL_LOCKED_PAGE_TABLES: "LOCKED_PAGE_TABLES",
    MDL_FREE_EXTRA_PTES: "FREE_EXTRA_PTES",
    MDL_DESCRIBES_AWE: "DESCRIBES_AWE",
    MDL_IO_SPACE: "IO_SPACE",
    MDL_NETWORK_HEADER: "NETWORK_HEADER",
    MDL_MAPPING_CAN_FAIL: "MAPPING_CAN_FAIL",
    MDL_PAGE_CONTENTS_INVARIANT: "PAGE_CONTENTS_INVARIANT",
    MDL_INTERNAL: "INTERNAL",
}

# The Size field is 16 bits wide, which bounds the PFN array of any real MDL.
MAX_MDL_SIZE = 0xFFFF

LOCKED = "locked"
UNLOCKED = "unlocked"
NOT_AN_MDL = "not an MDL"


def flag_names(flags: int) -> List[str]:
    return list(_flag_names(flags))


@lru_cache(maxsize=FLAG_NAMES_CACHED)
def _flag_names(flags: int) -> Tuple[str, ...]:
    return tuple(name for bit, name in sorted(MDL_FLAG_NAMES.items()) if flags & bit)


def spanned_pages(byte_offset: int, byte_count: int) -> int:
    """ADDRESS_AND_SIZE_TO_SPAN_PAGES for a buffer that starts ``byte_offset`` into its first page."""
    return ((byte_offset & (PAGE_SIZE - 1)) + byte_count + PAGE_SIZE - 1) // PAGE_SIZE


@dataclass
class Mdl:
    address: int
    next: int
    size: int
    flags: int
    process: int
    mapped_system_va: int
    start_va: int
    byte_count: int
    byte_offset: int
    pfns: List[int] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    @property
    def pages(self) -> int:
        return spanned_pages(self.byte_offset, self.byte_count)

    @property
    def locked(self) -> bool:
        return bool(self.flags & MDL_PAGES_LOCKED)

    @property
    def partial(self) -> bool:
        return bool(self.flags & MDL_PARTIAL)

    @property
    def valid(self) -> bool:
        return not self.problems

    def classification(self) -> str:
        if self.problems:
            return NOT_AN_MDL
        return LOCKED if self.locked else UNLOCKED


def read_mdl(target: Target, layouts: Layouts, address: int, check_pfns: bool = True) -> Mdl:
    """Read and validate the MDL at ``address``. Raises MemoryReadError if the header is unreadable."""
    view = layouts.view("_MDL", address)
    header_size = view.layout.size
    mdl = Mdl(
        address=address,
        next=view["Next"],
        size=view["Size"] & 0xFFFF,
        flags=view["MdlFlags"],
        process=view["Process"],
        mapped_system_va=view["MappedSystemVa"],
        start_va=view["StartVa"],
        byte_count=view["ByteCount"],
        byte_offset=view["ByteOffset"],
    )
    problems = mdl.problems
    pointer_size = target.pointer_size
    if mdl.size < header_size or (mdl.size - header_size) % pointer_size:
        problems.append(f"Size {mdl.size:#x} is not sizeof(MDL) {header_size:#x} + n * {pointer_size}")
    if mdl.byte_offset >= PAGE_SIZE:
        problems.append(f"ByteOffset {mdl.byte_offset:#x} is not within a page")
    if mdl.start_va % PAGE_SIZE:
        problems.append(f"StartVa {mdl.start_va:#x} is not page aligned")
    if mdl.byte_count == 0:
        problems.append("ByteCount is 0")
    if not target.is_user_address(mdl.start_va):
        problems.append(f"StartVa {mdl.start_va:#x} is not a user address (MmProbeAndLockPages sets "
                        f"MDL.Process only for user buffers)")
    if mdl.next and (mdl.next == address or not target.is_kernel_address(mdl.next)):
        problems.append(f"Next {mdl.next:#x} is not another kernel address")
    if mdl.flags & MDL_SOURCE_IS_NONPAGED_POOL and mdl.flags & MDL_PAGES_LOCKED:
        problems.append("flags claim both SOURCE_IS_NONPAGED_POOL and PAGES_LOCKED")
    if mdl.flags & MDL_PARTIAL_HAS_BEEN_MAPPED and not mdl.flags & MDL_PARTIAL:
        problems.append("flags claim PARTIAL_HAS_BEEN_MAPPED without PARTIAL")
    if mdl.flags & MDL_MAPPED_TO_SYSTEM_VA and not target.is_kernel_address(mdl.mapped_system_va):
        problems.append(f"MAPPED_TO_SYSTEM_VA is set but MappedSystemVa {mdl.mapped_system_va:#x} is not a "
                        f"kernel address")
    if problems:
        return mdl
    capacity = (mdl.size - header_size) // pointer_size
    if capacity < mdl.pages:
        problems.append(f"Size {mdl.size:#x} has room for {capacity} PFNs but the buffer spans {mdl.pages} pages")
        return mdl
    if check_pfns:
        _check_pfns(target, mdl, address + header_size)
    return mdl


def _check_pfns(target: Target, mdl: Mdl, array_address: int) -> None:
    limit = target.max_pfn
    if limit is None:
        limit = target.architecture.max_pfn
    try:
        mdl.pfns = target.read_pointers(array_address, mdl.pages)
    except MemoryReadError:
        mdl.problems.append("the PFN array after the header is unreadable")
        return
    bad = [pfn for pfn in mdl.pfns if pfn == 0 or pfn > limit]
    if bad:
        mdl.problems.append(f"PFN array holds {len(bad)} impossible page frame number(s), e.g. {bad[0]:#x} "
                            f"(highest is {limit:#x})")
