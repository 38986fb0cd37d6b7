"""x86 (32-bit): its address ranges and layout column. leakhunt reads no x86 page tables and no x86
context record offline (a 32-bit kernel dump gives its header; WinDbg does the rest)."""
from __future__ import annotations

from .base import Arch

X86 = Arch(
    name="x86",
    label="x86",
    machine=0x014C,
    pointer_size=4,
    kernel_start=0x80000000,
    user_end=0xC0000000,  # the most a /3GB (IncreaseUserVa) boot gives user mode
    max_pfn=(1 << 26) - 1,  # PAE: physical addresses of at most 38 bits
    high_level_irql=31,
    layout_column="x86",
    context=None,
    paging=None,
)
