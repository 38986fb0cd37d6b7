"""ARM64 (AArch64) as Windows runs it: 4 KiB-granule, 4-level tables with 2 MiB and 1 GiB blocks, the
ARM64 CONTEXT, 47-bit user and kernel halves. The facts and their sources are in
reference/arm64-kernel.md; the numbers below are the ones the walk and the report use.

Paging (ARMv8-A VMSAv8-64 descriptors, 4 KiB granule, 48-bit output addresses): bit 0 valid; at levels
0-2 bit 1 set means "next table" and, at levels 1 and 2, bit 1 clear a 1 GiB or 2 MiB block (a level-0
block does not exist with this granule); at level 3 bit 1 must be set (a page). The output address is
bits 47:12. Windows indexes the top-level table with VA bits 47:39 for both halves (TTBR1_EL1 holds the
table + 0x800, T0SZ = T1SZ = 17), so kernel addresses 0xFFFF8000`00000000 and up are its entries
256-511, as on x64. A not-valid level-3 entry with bit 11 (Transition) set and bit 10 (Prototype) clear
still names the frame that holds its page (paged out but recoverable: the content is in memory), as
MemProcFS reads them ((pte & 0xC01) == 0x800, vmm/mm/mm_arm64.c); the walks read such pages too.

The self-map (a kernel-half top-level entry pointing at the table itself) is an ordinary table entry to
the forward walk and is skipped by the reverse walk, as on x64.

CONTEXT (ntdiff/headers ARM64 _CONTEXT, reactos sdk/include/xdk/arm64/ke.h): ContextFlags 0x0, Cpsr 0x4,
X0-X28 from 0x8, Fp (X29) 0xF0, Lr (X30) 0xF8, Sp 0x100, Pc 0x108, V0-V31 from 0x110 (16 bytes each),
Fpcr 0x310, Fpsr 0x314; 0x390 bytes. A dump header keeps it at 0x348, where the real ARM64 small dump's
triage section points its ContextOffset.

UNVERIFIED on ARM64 (taken from x64, no source found): MmHighestUserAddress (the user range's top) and
HIGH_LEVEL = 15.
"""
from __future__ import annotations

from .base import Arch, ContextLayout, registers_at
from .paging import PagingFormat

VALID = 0x1
TABLE_OR_PAGE = 0x2
# A not-valid level-3 entry in transition: Transition (bit 11) set, Prototype (bit 10) and Valid clear.
TRANSITION_TEST = (0xC01, 0x800)

PAGING = PagingFormat(
    name="ARM64 4 KiB-granule translation tables",
    address_mask=0x0000FFFFFFFFF000,
    table=((VALID | TABLE_OR_PAGE, VALID | TABLE_OR_PAGE),) * 3,
    block=(None, (VALID | TABLE_OR_PAGE, VALID), (VALID | TABLE_OR_PAGE, VALID)),
    page=((VALID | TABLE_OR_PAGE, VALID | TABLE_OR_PAGE), TRANSITION_TEST),
)

GENERAL_REGISTERS = tuple(f"x{n}" for n in range(29))

CONTEXT = ContextLayout(
    name="ARM64 CONTEXT",
    size=0x390,
    registers={
        "context_flags": (0x0, 4), "cpsr": (0x4, 4),
        **registers_at(0x8, GENERAL_REGISTERS),
        **registers_at(0xF0, ("fp", "lr", "sp", "pc")),
        **registers_at(0x110, tuple(f"v{n}" for n in range(32)), size=16),
        "fpcr": (0x310, 4), "fpsr": (0x314, 4),
    },
    shown=("pc", "sp", "fp", "lr") + GENERAL_REGISTERS,
    program_counter="pc",
    stack_pointer="sp",
    frame_pointer="fp",
    return_address="lr",
)

ARM64 = Arch(
    name="arm64",
    label="ARM64",
    machine=0xAA64,
    pointer_size=8,
    kernel_start=0xFFFF800000000000,
    user_end=0x00007FFFFFFF0000,
    max_pfn=(1 << 36) - 1,  # 48-bit output addresses
    high_level_irql=15,
    layout_column="x64",  # LLP64 like x64: the stable structures have the x64 offsets (layouts.py says which are checked)
    context=CONTEXT,
    paging=PAGING,
)
