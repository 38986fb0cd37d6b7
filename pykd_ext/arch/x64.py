"""x64 (AMD64): 4-level paging with 2 MiB and 1 GiB pages, the AMD64 CONTEXT, 48-bit canonical halves.

Paging: Intel SDM vol. 3 §4.5 (4-level paging): bit 0 Present; bit 7 PS in a PDPTE (1 GiB page) or a PDE
(2 MiB page), reserved in a PML4E; the physical address in bits 51:12. The kernel half is PML4 entries
256-511 (0xFFFF8000`00000000 and up).

CONTEXT: winnt.h's AMD64 CONTEXT (0x4D0 bytes; the same offsets in every ntdiff/headers x64 _CONTEXT.h).
"""
from __future__ import annotations

from .base import Arch, ContextLayout, registers_at
from .paging import PagingFormat

PRESENT = 0x1
LARGE_PAGE = 0x80  # PS

PAGING = PagingFormat(
    name="x64 4-level paging",
    address_mask=0x000FFFFFFFFFF000,
    table=((PRESENT, PRESENT), (PRESENT | LARGE_PAGE, PRESENT), (PRESENT | LARGE_PAGE, PRESENT)),
    block=(None, (PRESENT | LARGE_PAGE, PRESENT | LARGE_PAGE), (PRESENT | LARGE_PAGE, PRESENT | LARGE_PAGE)),
    page=((PRESENT, PRESENT),),
)

CONTEXT = ContextLayout(
    name="AMD64 CONTEXT",
    size=0x4D0,
    registers={
        "context_flags": (0x30, 4), "mxcsr": (0x34, 4),
        **registers_at(0x38, ("cs", "ds", "es", "fs", "gs", "ss"), size=2),
        "eflags": (0x44, 4),
        **registers_at(0x48, ("dr0", "dr1", "dr2", "dr3", "dr6", "dr7")),
        **registers_at(0x78, ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11",
                              "r12", "r13", "r14", "r15", "rip")),
        **registers_at(0x1A0, tuple(f"xmm{n}" for n in range(16)), size=16),  # FltSave's XMM registers
    },
    # What .cxr shows: the general registers, rip first (the unwinder needs the non-volatile ones too).
    shown=("rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
           "r14", "r15", "eflags"),
    program_counter="rip",
    stack_pointer="rsp",
    frame_pointer="rbp",
)

X64 = Arch(
    name="x64",
    label="x64",
    machine=0x8664,
    pointer_size=8,
    kernel_start=0xFFFF800000000000,
    user_end=0x00007FFFFFFF0000,  # MmHighestUserAddress 0x7FFFFFFEFFFF + 1
    max_pfn=(1 << 40) - 1,  # physical addresses of at most 52 bits
    high_level_irql=15,
    layout_column="x64",
    context=CONTEXT,
    paging=PAGING,
)
