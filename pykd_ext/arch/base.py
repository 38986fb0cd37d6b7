"""What an architecture is to leakhunt: its address ranges, page tables, context record and layout key.

One ``Arch`` per architecture (x64.py, arm64.py, x86.py), made of data only: everything that used to be
inferred from "pointer_size == 8" reads it from here, so a new architecture is one module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from .paging import PagingFormat


@dataclass(frozen=True)
class ContextLayout:
    """A CONTEXT record (the registers of the crashing processor a dump header and a small dump keep):
    every register by name at (offset, byte size), and the ones a report shows, in order."""

    name: str
    size: int
    registers: Mapping[str, Tuple[int, int]]
    shown: Tuple[str, ...]
    program_counter: str
    stack_pointer: str
    frame_pointer: str
    return_address: Optional[str] = None  # the link register, where the architecture has one

    def read(self, raw: bytes, names: Optional[Tuple[str, ...]] = None) -> List[Tuple[str, int]]:
        """(name, value) of ``names`` (default: the shown registers) decoded from the record's bytes."""
        values = []
        for name in names if names is not None else self.shown:
            offset, size = self.registers[name]
            values.append((name, int.from_bytes(raw[offset:offset + size], "little")))
        return values

    def write(self, record: bytearray, values: Mapping[str, int]) -> None:
        """Put register values into a record (``record`` holds at least ``size`` bytes)."""
        for name, value in values.items():
            offset, size = self.registers[name]
            record[offset:offset + size] = value.to_bytes(size, "little")


def registers_at(first: int, names: Tuple[str, ...], size: int = 8) -> Dict[str, Tuple[int, int]]:
    """Consecutive registers of ``size`` bytes from offset ``first``."""
    return {name: (first + index * size, size) for index, name in enumerate(names)}


@dataclass(frozen=True)
class Arch:
    """One processor architecture as Windows runs on it."""

    name: str  # "x64", "arm64", "x86": the report's and the snapshot's name
    label: str  # "x64", "ARM64", "x86": in sentences
    machine: int  # IMAGE_FILE_MACHINE_* of its images and of a dump header's MachineImageType
    pointer_size: int
    kernel_start: int  # the lowest kernel address
    user_end: int  # the first address above the user range (MmHighestUserAddress + 1)
    max_pfn: int  # the highest page frame number its physical addresses can reach
    high_level_irql: int  # HIGH_LEVEL
    layout_column: str  # which column of the built-in layout tables describes its structures
    context: Optional[ContextLayout]  # None where leakhunt decodes no context record
    paging: Optional[PagingFormat]  # None where leakhunt reads no page tables offline

    def is_kernel_address(self, address: int) -> bool:
        return address >= self.kernel_start

    def is_user_address(self, address: int) -> bool:
        return 0 < address < self.user_end
