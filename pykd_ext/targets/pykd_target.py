"""The pykd target: leakhunt inside WinDbg through pykd 0.3.4.15 (the only module that imports pykd).

Every pykd call leakhunt makes is in this file, so that ``check_pykd_names.py`` can hold them against
the real module's names. Conventions of the real API this file relies on (reference/pykd-api.md):

* memory loads return lists of ints and fail as a whole (``MemoryException``) if any page is missing;
* addresses of a 32-bit target come back sign-extended to 64 bits (kdlib's ``addr64``): they are
  cut back to 32 bits here, and passed to pykd sign-extended again;
* ``dbgCommand`` returns None when the command printed nothing;
* Ctrl+Break arrives as ``SystemExit("CTRL+BREAK")`` anywhere in the script: nothing here catches it.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pykd

from ..arch import ARM64, X64, X86
from ..search import ValueSet
from ..search_output import SearchOutputError, SearchRow, parse_search_output
from ..typeinfo import FieldInfo, TypeInfo
from .base import (PAGE_SIZE, BugCheck, CrashFacts, MemoryReadError, Module, PfnRange, ProgressCallback,
                   SearchHit, SearchUnavailable, SymbolicAddress, SymbolNotFound, Target, TargetError,
                   sequence_to_bugcheck)

# How search_pointers finds values (see docs/windbg.md "How the search works" and
# benchmarks/bench_pykd_search.py for the measurements behind the default).
SEARCH_NATIVE = "native"  # the debugger's own !search, once per value
SEARCH_SCAN = "scan"  # physical memory read into leakhunt in chunks, all values in one pass
SEARCH_METHODS = (SEARCH_NATIVE, SEARCH_SCAN)
DEFAULT_SEARCH = SEARCH_NATIVE
# Pages per physical read of the scan (1 MiB).
SCAN_CHUNK_PAGES = 256
# Registers WinDbg names otherwise than leakhunt's reports do.
DEBUGGER_REGISTER_NAMES = {"eflags": "efl"}

_BUGCHECK_CODE = re.compile(r"Bugcheck code\s+([0-9A-Fa-f`]+)")
_BUGCHECK_ARGUMENTS = re.compile(r"Arguments\s+([0-9A-Fa-f`]+(?:\s+[0-9A-Fa-f`]+){3})")


class NotKernelTarget(TargetError):
    """The debugger is not looking at a Windows kernel (a user-mode process or dump)."""


# ---- the debugger session, for the entry point ----------------------------------------------------

def in_windbg() -> bool:
    """True when the script runs under ``!py`` (sys.stdout can write DML)."""
    return bool(pykd.isWindbgExt())


def load_dump(path: str) -> None:
    """Open a crash dump outside WinDbg (``python leakhunt.py MEMORY.DMP``)."""
    try:
        pykd.loadDump(path)
    except pykd.DbgException as error:
        raise TargetError(f"cannot open {path} as a crash dump: {_message(error)}") from None


def write(text: str, dml: bool = False) -> None:
    """Write to the debugger's output window (DML markup interpreted when ``dml``)."""
    pykd.dprint(text, dml)


# ---- the target -----------------------------------------------------------------------------------

class PykdTarget(Target):
    """The kernel target WinDbg has open: a crash dump or a live kernel debugging session."""

    def __init__(self, search_method: str = DEFAULT_SEARCH):
        if search_method not in SEARCH_METHODS:
            raise ValueError(f"unknown search method {search_method!r}")
        self.search_method = search_method
        try:
            kernel = pykd.isKernelDebugging()
            cpu = pykd.getCPUType()
        except pykd.DbgException as error:
            raise TargetError(f"the debugger has no target ({_message(error)})") from None
        if not kernel:
            raise NotKernelTarget("the debugger is not looking at a Windows kernel (this is a user-mode target); "
                                  "open a kernel crash dump (MEMORY.DMP) or attach a kernel debugger")
        # The target's actual processor (getCPUType: an ARM64 dump opened in x64 WinDbg is ARM64), not the
        # debugger's effective machine (getCPUMode, which .effmach changes).
        arches = {pykd.CPUType.AMD64: X64, pykd.CPUType.I386: X86, pykd.CPUType.ARM64: ARM64}
        if cpu not in arches:
            raise TargetError(f"leakhunt does not support this processor type ({cpu})")
        self.arch, self.pointer_size = arches[cpu].name, arches[cpu].pointer_size
        self._mask = (1 << (8 * self.pointer_size)) - 1
        self._dtype = np.dtype("<u8") if self.pointer_size == 8 else np.dtype("<u4")
        try:
            self.build = int(pykd.getSystemVersion().buildNumber)
        except pykd.DbgException:
            self.build = None
        try:
            dump = pykd.isDumpAnalyzing()
        except pykd.DbgException:
            dump = True
        self.description = f"WinDbg via pykd {pykd.__version__}: {'kernel crash dump' if dump else 'live kernel'}"
        self.max_pfn = self._highest_physical_page()
        self.has_type_info = self.type_info("nt!_MDL", ["Next"]) is not None
        self._crash_facts: Optional[CrashFacts] = None

    # ---- addresses ------------------------------------------------------------------------------

    def _from_pykd(self, address: int) -> int:
        """pykd's sign-extended form of a 32-bit address, cut back to the target's width."""
        return int(address) & self._mask

    def _to_pykd(self, address: int) -> int:
        """A virtual address as kdlib writes it (sign-extended on 32-bit targets)."""
        if self.pointer_size == 4 and address & 0x80000000:
            return (address & 0xFFFFFFFF) | 0xFFFFFFFF00000000
        return address

    def _highest_physical_page(self) -> Optional[int]:
        """nt!MmHighestPhysicalPage (a PFN_NUMBER global): the last page frame of the machine."""
        try:
            return self.read_pointer(self.symbol("nt!MmHighestPhysicalPage"))
        except (SymbolNotFound, MemoryReadError):
            return None

    # ---- Target primitives ----------------------------------------------------------------------

    def bugcheck(self) -> BugCheck:
        try:
            values = pykd.bugCheckData()
        except pykd.DbgException as error:
            return self._bugcheck_from_command(_message(error))
        return self._bugcheck(values)

    def crash_facts(self) -> Optional[CrashFacts]:
        """The registers of the debugger's current context (in a crash dump, those of the processor that
        crashed, as ``r`` shows them unless the user changed the context): the report shows them and
        leakhunt unwinds the stack from them through pykd's memory and the images in memory, as it does
        from a kernel dump's header context. None without a register context (or an architecture
        leakhunt has no context layout for)."""
        if self._crash_facts is None:
            layout = self.architecture.context
            if layout is None:
                return None
            registers = []
            for name in layout.shown:
                try:
                    registers.append((name, int(pykd.reg(DEBUGGER_REGISTER_NAMES.get(name, name))) & self._mask))
                except pykd.DbgException:
                    continue
            if layout.program_counter not in dict(registers):
                return None
            self._crash_facts = CrashFacts(registers=tuple(registers), from_triage=False)
        return self._crash_facts

    def _bugcheck(self, values: Sequence[int]) -> BugCheck:
        check = sequence_to_bugcheck(values)
        return BugCheck(check.code & 0xFFFFFFFF, tuple(self._from_pykd(p) for p in check.parameters))

    def _bugcheck_from_command(self, why: str) -> BugCheck:
        """Fallback: parse ``.bugcheck`` (``Bugcheck code 0000000a`` / ``Arguments 00000000 ...``)."""
        try:
            text = pykd.dbgCommand(".bugcheck") or ""
        except pykd.DbgException:
            text = ""
        code = _BUGCHECK_CODE.search(text)
        arguments = _BUGCHECK_ARGUMENTS.search(text)
        if code is None or arguments is None:
            raise NotKernelTarget(f"the target has no bug check data: it is not a kernel crash ({why})")
        numbers = [code.group(1)] + arguments.group(1).split()
        return self._bugcheck([int(n.replace("`", ""), 16) for n in numbers])

    def read(self, address: int, size: int) -> bytes:
        if size <= 0:
            return b""
        try:
            return bytes(pykd.loadBytes(self._to_pykd(address), size))
        except pykd.MemoryException:
            raise MemoryReadError(address, size) from None
        except pykd.DbgException as error:
            raise MemoryReadError(address, size, reason=_message(error)) from None

    def read_physical(self, address: int, size: int) -> bytes:
        if size <= 0:
            return b""
        try:
            return bytes(pykd.loadBytes(address, size, True))
        except pykd.DbgException:
            raise MemoryReadError(address, size, physical=True) from None

    def symbol(self, name: str) -> int:
        try:
            return self._from_pykd(pykd.getOffset(name))
        except pykd.DbgException as error:  # SymbolException, or "Failed to find module"
            raise SymbolNotFound(name, _message(error)) from None

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]:
        try:
            info = pykd.typeInfo(name)
            size = int(info.size())
        except pykd.DbgException:  # TypeException / SymbolException: no symbols for the type
            return None
        fields: Dict[str, FieldInfo] = {}
        for path in field_names:
            located = self._field(info, path)
            if located is not None:
                fields[path] = located
        return TypeInfo(name, size, fields)

    @staticmethod
    def _field(info, path: str) -> Optional[FieldInfo]:
        """Offset and size of a (possibly nested, ``Tail.Overlay.Thread``) field, one member at a time."""
        offset = 0
        current = info
        try:
            for part in path.split("."):
                offset += int(current.fieldOffset(part))
                current = current.field(part)
            return FieldInfo(offset, int(current.size()))
        except (pykd.DbgException, AttributeError, KeyError, IndexError):
            return None

    def name_address(self, module: Optional[Module], address: int) -> Optional[SymbolicAddress]:
        """The debugger's own name for ``address`` (its symbols: ``ln``), or None when it has none."""
        try:
            module_name, symbol, displacement = pykd.findSymbolAndDisp(self._to_pykd(address))
        except pykd.DbgException:
            return None
        return SymbolicAddress(address, str(module_name), str(symbol), int(displacement), kind="debugger")

    def modules(self) -> Optional[List[Module]]:
        """The debugger's module list (``lm``); None when it cannot list them, so that the kernel
        session walks nt!PsLoadedModuleList itself."""
        try:
            listed = pykd.getModulesList()
        except pykd.DbgException:
            return None
        modules = []
        for item in listed:
            try:
                image = re.split(r"[\\/]", str(item.image()))[-1]
                modules.append(Module(str(item.name()), image or str(item.name()), self._from_pykd(item.begin()),
                                      int(item.size())))
            except pykd.DbgException:
                continue  # one unreadable entry does not hide the others
        return modules

    # ---- search ---------------------------------------------------------------------------------

    def search_pointers(self, values: Iterable[int], pfn_range: Optional[PfnRange] = None,
                        progress: Optional[ProgressCallback] = None) -> Dict[int, List[SearchHit]]:
        wanted = sorted({int(v) & self._mask for v in values})
        if self.search_method == SEARCH_SCAN:
            hits = self._search_scan(wanted, pfn_range, progress)
        else:
            hits = self._search_native(wanted, pfn_range, progress)
        for found in hits.values():
            found.sort(key=lambda h: (h.virtual or 0, h.physical or 0))
        return hits

    def _span(self, pfn_range: Optional[PfnRange]) -> int:
        """Bytes of physical memory one pass covers, for progress reports."""
        if pfn_range is not None:
            return (pfn_range.last - pfn_range.first + 1) * PAGE_SIZE
        return ((self.max_pfn or 0) + 1) * PAGE_SIZE

    def _search_native(self, values: List[int], pfn_range: Optional[PfnRange],
                       progress: Optional[ProgressCallback]) -> Dict[int, List[SearchHit]]:
        """``!search value 0 [StartPFN EndPFN]`` per value: exact hits kept, one-bit neighbours dropped."""
        span = self._span(pfn_range)
        hits: Dict[int, List[SearchHit]] = {}
        for index, value in enumerate(values):
            if progress is not None:
                progress(index * span, len(values) * span)
            rows = self._search_command(value, pfn_range)
            hits[value] = [SearchHit(value, None if row.va is None else row.va & self._mask, row.physical)
                           for row in rows if row.hit & self._mask == value]
        if progress is not None:
            progress(len(values) * span, len(values) * span)
        return hits

    def _search_command(self, value: int, pfn_range: Optional[PfnRange]) -> List[SearchRow]:
        command = f"!search {value:#x} 0"
        if pfn_range is not None:
            command += f" {pfn_range.first:#x} {pfn_range.last:#x}"
        mask = int(pykd.outputFlag.Normal) | int(pykd.outputFlag.Error) | int(pykd.outputFlag.Warning)
        try:
            text = pykd.dbgCommand(command, True, mask)
        except pykd.DbgException as error:
            raise SearchUnavailable(f"'{command}' failed: {_message(error)}") from None
        if not text:
            raise SearchUnavailable(f"'{command}' printed nothing (is kdexts loaded? try .load kdexts)")
        try:
            output = parse_search_output(text)
        except SearchOutputError:
            raise SearchUnavailable(f"'{command}' did not run: {_first_line(text)}") from None
        if not output.done:
            raise SearchUnavailable(f"'{command}' stopped before 'Search done.'"
                                    + (f": {output.other_lines[-1]}" if output.other_lines else ""))
        if output.data_range[0] & self._mask != value:  # the header shows Data as the debugger evaluated it
            raise SearchUnavailable(f"'{command}' searched for {output.data_range[0]:#x} instead")
        return output.rows

    def _search_scan(self, values: List[int], pfn_range: Optional[PfnRange],
                     progress: Optional[ProgressCallback]) -> Dict[int, List[SearchHit]]:
        """Read physical memory chunk by chunk and find every value in each chunk at once.

        Physical reads give physical addresses only; the virtual address of each hit comes from a
        one-page ``!search`` of the page that holds it.
        """
        if self.max_pfn is None and pfn_range is None:
            raise SearchUnavailable("the highest physical page is unknown (nt!MmHighestPhysicalPage): give "
                                    "--pfn-range or use --search native")
        first = pfn_range.first if pfn_range else 0
        last = pfn_range.last if pfn_range else self.max_pfn
        if self.max_pfn is not None:
            last = min(last, self.max_pfn)
        value_set = ValueSet(values, self.pointer_size)
        found: Dict[int, List[int]] = {v: [] for v in values}
        total = max(last - first + 1, 0) * PAGE_SIZE
        pfn = first
        while pfn <= last:
            count = min(SCAN_CHUNK_PAGES, last + 1 - pfn)
            for start, words in self._physical_words(pfn, count):
                matched = value_set.find(words)
                for index, value in zip(matched.indices.tolist(), matched.words.tolist()):
                    found[value].append(start + index * self.pointer_size)
            pfn += count
            if progress is not None:
                progress((pfn - first) * PAGE_SIZE, total)
        return {value: self._resolve(value, addresses) for value, addresses in found.items()}

    def _physical_words(self, pfn: int, count: int) -> List[Tuple[int, np.ndarray]]:
        """Pointer-sized words of ``count`` pages from ``pfn``; a chunk with a missing page is read
        page by page, skipping the missing ones (a kernel dump holds only some of the frames)."""
        load = pykd.loadQWords if self.pointer_size == 8 else pykd.loadDWords
        try:
            words = load(pfn * PAGE_SIZE, count * PAGE_SIZE // self.pointer_size, True)
            return [(pfn * PAGE_SIZE, np.array(words, dtype=self._dtype))]
        except pykd.DbgException:
            if count == 1:
                return []
        pieces: List[Tuple[int, np.ndarray]] = []
        for page in range(pfn, pfn + count):
            pieces.extend(self._physical_words(page, 1))
        return pieces

    def _resolve(self, value: int, addresses: List[int]) -> List[SearchHit]:
        hits = []
        for pfn in sorted({address // PAGE_SIZE for address in addresses}):
            rows = self._search_command(value, PfnRange(pfn, pfn))
            virtual = {row.physical: row.va for row in rows if row.hit & self._mask == value}
            for address in addresses:
                if address // PAGE_SIZE == pfn:
                    va = virtual.get(address)
                    hits.append(SearchHit(value, None if va is None else va & self._mask, address))
        return hits


def _message(error: BaseException) -> str:
    """pykd's messages can span lines (HRESULT on the next one): leakhunt reports one line."""
    return " ".join(str(error).split())


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")
