"""The architectures leakhunt knows, as data (``base.Arch``): one module each.

``arch_named("arm64")`` and ``arch_of_machine(0xAA64)`` give the object; everything architecture-specific
(address ranges, page tables, context record, which built-in layout column applies) is read from it.
The walks of the page tables are ``pagetables.PageTables`` (imported where they are used: they need numpy).
"""
from __future__ import annotations

from typing import Dict, Optional

from .arm64 import ARM64
from .base import Arch, ContextLayout
from .paging import PagingFormat
from .x64 import X64
from .x86 import X86

ARCHITECTURES: Dict[str, Arch] = {arch.name: arch for arch in (X64, ARM64, X86)}
_BY_MACHINE: Dict[int, Arch] = {arch.machine: arch for arch in ARCHITECTURES.values()}

__all__ = ["ARCHITECTURES", "ARM64", "Arch", "ContextLayout", "PagingFormat", "X64", "X86",
           "arch_named", "arch_of_machine"]


def arch_named(name: str) -> Arch:
    """The architecture called ``name`` ("x64", "arm64", "x86"); KeyError for any other."""
    return ARCHITECTURES[name]


def arch_of_machine(machine: int) -> Optional[Arch]:
    """The architecture of an IMAGE_FILE_MACHINE_* value, or None when leakhunt does not know it."""
    return _BY_MACHINE.get(machine)
