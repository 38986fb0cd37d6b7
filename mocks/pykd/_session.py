"""The debugging session behind the stand-in pykd: one kernel target made from a ``SnapshotData``.

Virtual memory is the snapshot's pages; physical memory is the frames those pages map to (a kernel
memory dump holds only those), or every frame up to ``max_pfn`` when ``physical="full"`` (a complete
dump or a live machine: frames no page maps read as zeros). ``!search`` and ``.bugcheck`` print the
debugger's documented output formats (windows-kernel.md §2.1, §2.5).
"""
from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from pykd_ext.targets.base import PAGE_SIZE
from pykd_ext.targets.snapshot import SnapshotData

from ._types import TypeNode, build_tree, flat_from_layouts

INTERRUPT_MESSAGE = "CTRL+BREAK"
# Frames compared at once by the stand-in's !search.
_SEARCH_BLOCK = 256


def sign_extend(value: int, pointer_size: int) -> int:
    """kdlib's addr64(): 32-bit kernel addresses come back sign-extended to 64 bits."""
    if pointer_size == 4 and value & 0x80000000:
        return (value & 0xFFFFFFFF) | 0xFFFFFFFF00000000
    return value


def spend(seconds: float) -> None:
    """Busy-wait: a simulated cost that sleep() would round to the scheduler's tick."""
    if seconds > 0:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


class Session:
    def __init__(self, data: SnapshotData, types: bool = True, call_cost: float = 0.0, page_cost: float = 0.0,
                 physical: str = "sparse", kernel: bool = True, dump: bool = True, bugcheck_data: bool = True,
                 bugcheck_command: bool = True, modules_list: bool = True, unreadable: Iterable[int] = (),
                 search_extension: bool = True, hide_va: Iterable[int] = (), x64_columns: str = "backtick"):
        if physical not in ("sparse", "full"):
            raise ValueError("physical is 'sparse' or 'full'")
        self.data = data
        self.pointer_size = data.pointer_size
        self.call_cost = call_cost
        self.page_cost = page_cost
        self.kernel = kernel
        self.dump = dump
        self.bugcheck_data = bugcheck_data
        self.bugcheck_command = bugcheck_command
        self.modules_list = modules_list
        self.search_extension = search_extension
        self.x64_columns = x64_columns
        self.calls: Dict[str, int] = {}
        self.interrupts: Dict[str, int] = {}
        self.mask = (1 << (8 * self.pointer_size)) - 1
        unreadable = {page & ~(PAGE_SIZE - 1) for page in unreadable}
        self.pages: Dict[int, bytes] = {va: content for va, content in data.pages.items() if va not in unreadable}
        self.symbols: Dict[str, int] = dict(data.symbols)
        self.va_of_pfn: Dict[int, int] = {}
        hidden = {page & ~(PAGE_SIZE - 1) for page in hide_va}
        for va, pa in sorted(data.physical.items()):
            if va not in hidden:
                self.va_of_pfn.setdefault(pa // PAGE_SIZE, va)
        self._build_physical(physical)
        self._add_highest_physical_page()
        self.types: Dict[str, TypeNode] = {}
        if types:
            recorded = {name: info for name, info in data.types.items() if info is not None}
            if recorded:
                flat = {name.split("!", 1)[-1]: (info.size, {f: (fi.offset, fi.size) for f, fi in info.fields.items()})
                        for name, info in recorded.items()}
            else:
                flat = flat_from_layouts(self.pointer_size, data.build, data.arch)
            self.types = {name: build_tree(name, description) for name, description in flat.items()}

    # ---- physical memory ------------------------------------------------------------------------

    def _build_physical(self, model: str) -> None:
        frames: Dict[int, bytes] = {}
        for va, pa in self.data.physical.items():
            if va in self.data.pages:
                frames[pa // PAGE_SIZE] = self.data.pages[va]
        if model == "full" and frames:
            last = self.data.max_pfn if self.data.max_pfn is not None else max(frames)
            numbers = list(range(min(frames), last + 1))
        else:
            numbers = sorted(frames)
        self.pfns = np.array(numbers, dtype=np.int64)
        dtype = np.dtype("<u8") if self.pointer_size == 8 else np.dtype("<u4")
        self.words = np.zeros((len(numbers), PAGE_SIZE // self.pointer_size), dtype=dtype)
        for row, pfn in enumerate(numbers):
            content = frames.get(pfn)
            if content is not None:
                self.words[row] = np.frombuffer(content, dtype=dtype)
        self.row_of_pfn = {pfn: row for row, pfn in enumerate(numbers)}

    def _add_highest_physical_page(self) -> None:
        """nt!MmHighestPhysicalPage (a PFN_NUMBER global), which the snapshot's builder does not write."""
        name = "nt!MmHighestPhysicalPage"
        if name in self.symbols or self.data.max_pfn is None:
            return
        kernel = next((m for m in self.data.modules if m.name == "nt"), None)
        if kernel is None:
            return
        page = kernel.base + PAGE_SIZE
        while page in self.pages and page < kernel.base + kernel.size:
            page += PAGE_SIZE
        self.pages[page] = self.data.max_pfn.to_bytes(self.pointer_size, "little").ljust(PAGE_SIZE, b"\0")
        self.symbols[name] = page

    # ---- accounting -----------------------------------------------------------------------------

    def enter(self, name: str) -> None:
        """Every pykd call: count it, pay the simulated cost, deliver a scheduled Ctrl+Break."""
        count = self.calls.get(name, 0) + 1
        self.calls[name] = count
        spend(self.call_cost)
        if self.interrupts.get(name) == count:
            raise SystemExit(INTERRUPT_MESSAGE)

    # ---- memory ---------------------------------------------------------------------------------

    def read_virtual(self, address: int, size: int) -> Optional[bytes]:
        """The bytes, or None if any page of the range is not present (pykd fails the whole read)."""
        address &= self.mask
        if size < 0 or address + size > self.mask + 1:
            return None
        chunks: List[bytes] = []
        page = address & ~(PAGE_SIZE - 1)
        end = address + size
        while page < end:
            content = self.pages.get(page)
            if content is None:
                return None
            chunks.append(content[max(address, page) - page:min(end, page + PAGE_SIZE) - page])
            page += PAGE_SIZE
        spend(self.page_cost * len(chunks))
        return b"".join(chunks)

    def read_physical(self, address: int, size: int) -> Optional[bytes]:
        if size < 0:
            return None
        chunks: List[bytes] = []
        page = address & ~(PAGE_SIZE - 1)
        end = address + size
        while page < end:
            row = self.row_of_pfn.get(page // PAGE_SIZE)
            if row is None:
                return None
            content = self.words[row].tobytes()
            chunks.append(content[max(address, page) - page:min(end, page + PAGE_SIZE) - page])
            page += PAGE_SIZE
        spend(self.page_cost * len(chunks))
        return b"".join(chunks)

    # ---- commands -------------------------------------------------------------------------------

    def search_command(self, data: int, delta: int, first: Optional[int], last: Optional[int]) -> str:
        """``!search Data Delta StartPFN EndPFN`` with Delta 0: exact hits and one-bit neighbours."""
        if delta != 0:
            raise ValueError("the stand-in's !search supports Delta 0 only")
        data &= self.mask
        if first is None:
            first = int(self.pfns[0]) if len(self.pfns) else 0
            last = self.data.max_pfn if self.data.max_pfn is not None else (int(self.pfns[-1]) if len(self.pfns) else 0)
        if last is None:
            last = first
        low = int(np.searchsorted(self.pfns, first, "left"))
        high = int(np.searchsorted(self.pfns, last, "right"))
        spend(self.page_cost * (high - low))
        rows: List[Tuple[int, int, int]] = []
        dtype = self.words.dtype.type
        for start in range(low, high, _SEARCH_BLOCK):  # blocks of frames, as an engine reads them
            words = self.words[start:min(start + _SEARCH_BLOCK, high)]
            difference = words ^ dtype(data)
            near = (difference & (difference - dtype(1))) == 0  # equal, or one bit away
            for row, column in zip(*np.nonzero(near)):
                rows.append((int(self.pfns[start + row]), int(column) * self.pointer_size, int(words[row, column])))
        shown = sign_extend(data, self.pointer_size)
        lines = [f"Searching PFNs in range {first:08X} - {last:08X} for [{shown:08X} - {shown:08X}]", ""]
        lines.append("Pfn      Offset   Hit      Va       Pte      ")
        lines.append("- - - - - - - - - - - - - - - - - - -")
        for pfn, offset, hit in rows:
            va = self.va_of_pfn.get(pfn)
            va = None if va is None else va + offset
            lines.append(self._search_row(pfn, offset, hit, va))
        lines.append("Search done.")
        return "\n".join(lines) + "\n"

    def _pointer_column(self, value: Optional[int]) -> str:
        if self.pointer_size == 4:
            return f"{value:08X} " if value is not None else " " * 9
        if value is None:
            return " " * (18 if self.x64_columns == "backtick" else 17)
        text = f"{value:016x}"
        return (f"{text[:8]}`{text[8:]} " if self.x64_columns == "backtick" else f"{text} ")

    def _search_row(self, pfn: int, offset: int, hit: int, va: Optional[int]) -> str:
        pte = None
        if va is not None:  # a PTE address like the self-map's, only so that the column is filled
            pte = (0xC0000000 + (va >> 12) * 4) if self.pointer_size == 4 else \
                (0xFFFFF68000000000 + ((va & 0xFFFFFFFFFFFF) >> 12) * 8)
        return (f"{pfn:08X} {offset:08X} " + self._pointer_column(hit) + self._pointer_column(va)
                + self._pointer_column(pte))

    def bugcheck_command_output(self) -> str:
        """``.bugcheck``: ``Bugcheck code 0000000a`` / ``Arguments 00000000 0000001c ...``."""
        check = self.data.bugcheck
        if self.pointer_size == 4:
            arguments = " ".join(f"{p & 0xFFFFFFFF:08x}" for p in check.parameters)
        else:
            arguments = " ".join(f"{p >> 32:08x}`{p & 0xFFFFFFFF:08x}" for p in check.parameters)
        return f"Bugcheck code {check.code:08x}\nArguments {arguments}\n"
