"""The Target interface: everything the analyses may ask of a debugging target.

A Target is a source of kernel memory and facts about it: a pykd session inside WinDbg, a kernel
crash dump file, or a recorded snapshot. Analyses only ever talk to this interface, so the same
hunt runs on every source.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ..arch import Arch, arch_named
from ..typeinfo import TypeInfo

PAGE_SIZE = 0x1000
# readable_ranges by reading: a range that cannot be read whole is tried in parts this large, then pages.
READABLE_PART = 1 << 16

# Physical addresses have at most 52 bits (x64, ARM64), so page frame numbers at most 40.
MAX_PFN = (1 << 40) - 1

# Sanity caps for strings read out of target memory.
MAX_UNICODE_STRING_BYTES = 0x1000


class TargetError(Exception):
    """Base class of everything a Target raises on purpose."""


class MemoryReadError(TargetError):
    """The requested memory is not in the target (unmapped, paged out, not in the dump)."""

    def __init__(self, address: int, size: int = 0, physical: bool = False, reason: str = ""):
        self.address = address
        self.size = size
        self.physical = physical
        self.reason = reason
        kind = "physical" if physical else "virtual"
        text = f"cannot read {size:#x} bytes of {kind} memory at {address:#x}"
        if reason:
            text += f": {reason}"
        super().__init__(text)


class SymbolNotFound(TargetError):
    """The target has no address for a symbol such as ``nt!KiBugCheckDriver``."""

    def __init__(self, name: str, reason: str = ""):
        self.name = name
        super().__init__(f"symbol {name} not found" + (f": {reason}" if reason else ""))


class SearchUnavailable(TargetError):
    """The target cannot search memory (for example a small dump with no physical memory)."""


class CorruptString(TargetError):
    """A UNICODE_STRING whose header is impossible (Length past MaximumLength, odd, huge)."""


@dataclass(frozen=True)
class Module:
    """A loaded kernel image (one `_KLDR_DATA_TABLE_ENTRY` of PsLoadedModuleList)."""

    name: str  # module name as WinDbg shows it, e.g. "leakyflt" or "nt"
    image: str  # BaseDllName, e.g. "leakyflt.sys"
    base: int
    size: int
    timestamp: Optional[int] = None  # the image's PE TimeDateStamp, when the source recorded it

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size


@dataclass(frozen=True)
class SymbolicAddress:
    """An address as WinDbg names it. ``function`` is the name of the symbol that holds it (a function,
    a variable, or the nearest public symbol), "" when no symbol file of the module named it;
    ``offset`` is from that symbol's start, else from the module's base; ``kind`` says where the name
    comes from (``procedure``, ``public``, ``data``, ``symbol``: see ``base.CodeLocation``)."""

    address: int
    module: str = ""  # "amdppm"; "" when the address lies in no module
    function: str = ""
    offset: int = 0
    file: str = ""
    line: Optional[int] = None
    kind: str = ""

    @property
    def text(self) -> str:
        """``module!function+0xoffset [file @ line]``, ``module!function`` at the start,
        ``module+0xoffset`` without a name, the bare address outside every module."""
        if not self.module:
            return f"{self.address:#x}"
        if not self.function:
            return f"{self.module}+{self.offset:#x}"
        text = f"{self.module}!{self.function}" + (f"+{self.offset:#x}" if self.offset else "")
        return text + (f" [{self.file} @ {self.line}]" if self.file and self.line is not None else "")

    def as_json(self) -> Dict[str, Any]:
        """``symbol`` (the text) and the parts that are known: module, function, offset, file, line."""
        found: Dict[str, Any] = {"symbol": self.text}
        if self.module:
            found.update(module=self.module, offset=f"{self.offset:#x}")
        if self.function:
            found["function"] = self.function
        if self.file and self.line is not None:
            found.update(file=self.file, line=self.line)
        return found


def image_reader(read: Callable[[int, int], bytes], base: int) -> Callable[[int, int], bytes]:
    """An image's ``read(rva, size)`` (of the image at ``base``) whose failures are all MemoryReadError,
    as the unwinder expects of bytes a source does not have."""
    def checked(rva: int, size: int) -> bytes:
        try:
            return read(rva, size)
        except MemoryReadError:
            raise
        except TargetError as error:
            raise MemoryReadError(base + rva, size, reason=str(error)) from None
    return checked


@dataclass
class RecordedImage:
    """What the unwinder read of one image that came from a file, not from the target's memory: its
    exception directory and the bytes it read, by RVA. A recording keeps it so that a replay, which
    has no image files, reads the same bytes and unwinds the same stack."""

    name: str
    base: int
    size: int
    exception_directory: Tuple[int, int]
    reads: Dict[int, bytes] = field(default_factory=dict)  # RVA -> the bytes read there

    def recorder(self, read: Callable[[int, int], bytes]) -> Callable[[int, int], bytes]:
        """``read(rva, size)`` that keeps what it reads; its failures are MemoryReadError."""
        checked = image_reader(read, self.base)

        def recording(rva: int, size: int) -> bytes:
            data = bytes(checked(rva, size))
            self.keep(rva, data)
            return data
        return recording

    def keep(self, rva: int, data: bytes) -> None:
        """Keep ``data``, read at ``rva``, unless a longer read there is kept already."""
        if len(data) > len(self.reads.get(rva, b"")):
            self.reads[rva] = data

    def replay(self, rva: int, size: int) -> bytes:
        """The bytes at ``rva`` from what was recorded; MemoryReadError for bytes never read."""
        for start, data in self.reads.items():
            if start <= rva and rva + size <= start + len(data):
                return data[rva - start:rva - start + size]
        raise MemoryReadError(self.base + rva, size, reason="not read when this recording was made")


@dataclass(frozen=True)
class UnloadedModule:
    """An image the kernel had unloaded before the crash (its MmUnloadedDrivers list)."""

    image: str  # as recorded: a small dump keeps only the first 12 characters
    start: int
    end: int
    truncated: bool = False  # the source kept only the start of a longer name

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end


@dataclass(frozen=True)
class CrashFacts:
    """What a source recorded about the crash beyond memory: a small dump's triage section, or a kernel
    dump header's context record (``from_triage`` false: nothing else, and no broken-driver record).

    ``thread`` and ``process`` are the addresses of the crashing thread and its process, ``stack`` the
    (address, size) of the copy of that thread's kernel stack, ``registers`` the registers of the context
    record that the architecture's reports show (x64 rip, rsp, rbp; ARM64 pc, sp, fp, lr, x0-x28), by name.
    """

    unloaded: Tuple[UnloadedModule, ...] = ()
    broken_driver: Optional[str] = None  # the image the kernel blamed (KiBugCheckDriver), when recorded
    thread: Optional[int] = None
    process: Optional[int] = None
    stack: Optional[Tuple[int, int]] = None
    registers: Tuple[Tuple[str, int], ...] = ()
    from_triage: bool = True


@dataclass(frozen=True)
class BugCheck:
    code: int
    parameters: Tuple[int, int, int, int]


@dataclass(frozen=True)
class SearchHit:
    """One pointer-aligned occurrence of a searched value.

    ``virtual`` is the kernel virtual address of the occurrence when the source could resolve it
    (the analyses need it to find the containing object); ``physical`` is the physical address
    when the source searched physical memory.
    """

    value: int
    virtual: Optional[int]
    physical: Optional[int] = None


@dataclass(frozen=True)
class ObjectHeaders:
    """The headers of one kind of I/O manager object for a search to collect as it goes (``Type`` and
    ``Size``, a CSHORT and a USHORT, are the first 32 bits of an IRP, a device object, a file object):
    a pointer-sized word at an address aligned to two pointers (objects come from pool) whose low 16
    bits are ``type`` and next 16 bits one of ``sizes``."""

    type: int
    sizes: Tuple[int, ...]


@dataclass(frozen=True)
class HeaderHit:
    """One object header a search collected: where it is, and the pointer-sized word after it (an
    IRP's MdlAddress)."""

    virtual: Optional[int]
    physical: Optional[int]
    next_word: int


@dataclass(frozen=True)
class PfnRange:
    """Inclusive range of page frame numbers to search, like ``!search``'s StartPFN/EndPFN."""

    first: int
    last: int

    def contains_address(self, physical_address: int) -> bool:
        return self.first <= physical_address >> 12 <= self.last


# progress(done, total) where both are byte counts of the search pass.
ProgressCallback = Callable[[int, int], None]


class Target:
    """Abstract source of kernel memory and facts. Subclasses implement the primitives.

    Primitives (must be implemented): ``arch``, ``pointer_size``, ``build``, ``description``,
    ``bugcheck()``, ``read()``, ``symbol()``, ``modules()``, ``search_pointers()``.
    Optional: ``read_physical()``, ``type_info()``, ``max_pfn``, ``limitations()``, ``hunt_unavailable``.

    A target gives bytes, search and the facts of its source; symbols, layouts and the module list
    of the kernel are the kernel session's (``pykd_ext.session``), which reads through the target.
    """

    arch: str = "x64"  # "x64", "x86" or "arm64"
    pointer_size: int = 8
    build: Optional[int] = None  # Windows build number (19045, 26100...) when known
    description: str = ""  # what the target is, for the report header
    max_pfn: Optional[int] = None  # highest physical page frame number, when known
    # When the machine crashed, ISO 8601 UTC ("2021-02-21T01:38:22Z"), when the source recorded it (a dump
    # header's SystemTime).
    crash_time: Optional[str] = None
    has_type_info: bool = False  # True when type_info() can answer from debugger symbols
    # One sentence when no hunt of any kind is possible on this source (a small dump holds no memory
    # to search), else "". The report then says so and its hunt is incomplete.
    hunt_unavailable: str = ""
    # True when search_pointers_and_headers() works: the search can collect object headers as it goes.
    finds_object_headers: bool = False

    # ---- primitives -------------------------------------------------------------------------

    def bugcheck(self) -> BugCheck:
        raise NotImplementedError

    def read(self, address: int, size: int) -> bytes:
        """Read virtual memory; raise MemoryReadError if any byte is unavailable."""
        raise NotImplementedError

    def read_physical(self, address: int, size: int) -> bytes:
        raise MemoryReadError(address, size, physical=True, reason="this source has no physical memory")

    def symbol(self, name: str) -> int:
        """Address of a symbol like ``nt!KiBugCheckDriver`` that the source itself knows (the debugger's
        symbols, the globals a dump header records); raise SymbolNotFound."""
        raise NotImplementedError

    def symbol_source(self, name: str) -> str:
        """Where ``symbol(name)`` got its answer, for the report."""
        return "debugger symbols"

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]:
        """Layout of a type like ``nt!_MDL`` from the target's own symbols, or None if unknown.

        ``field_names`` are the fields the caller wants (dotted paths such as
        ``Tail.Overlay.Thread`` allowed); the answer holds those the symbols have.
        """
        return None

    def modules(self) -> Optional[List[Module]]:
        """The source's own list of loaded kernel images, or None when it has none: the kernel session
        then walks nt!PsLoadedModuleList. Raise TargetError when the source's list is broken."""
        raise NotImplementedError

    def limitations(self) -> List[str]:
        """What this source cannot do or has lost, one sentence each, for the report's warnings (may
        grow while the analysis reads, e.g. page tables found missing)."""
        return []

    def recorded_symbol_notes(self) -> List[str]:
        """What finding the kernel's symbols said when this source was recorded (snapshots only)."""
        return []

    def name_address(self, module: Optional[Module], address: int) -> Optional[SymbolicAddress]:
        """The source's own name for an address in ``module`` (the debugger's symbols, the names a
        recording kept), or None: the kernel session then names it from the modules' symbol files."""
        return None

    def recorded_module_notes(self) -> Optional[List[str]]:
        """What finding the modules' symbol files said when this source was recorded (snapshots that
        recorded names only), else None."""
        return None

    def recorded_image(self, module: Module) -> Optional[RecordedImage]:
        """What a recording kept of ``module``'s image file for the unwinder (snapshots only), or None."""
        return None

    def search_pointers(self, values: Iterable[int], pfn_range: Optional[PfnRange] = None,
                        progress: Optional[ProgressCallback] = None) -> Dict[int, List[SearchHit]]:
        """Find every pointer-aligned occurrence of each value in one pass over memory.

        Returns a dict with one entry per searched value (possibly an empty list), hits in
        ascending address order. Raises SearchUnavailable if the source cannot search.
        """
        raise NotImplementedError

    def search_pointers_and_headers(self, values: Iterable[int], headers: ObjectHeaders,
                                    pfn_range: Optional[PfnRange] = None, progress: Optional[ProgressCallback] = None
                                    ) -> Tuple[Dict[int, List[SearchHit]], List[HeaderHit]]:
        """search_pointers() that also collects, in the same pass, every object header that ``headers``
        describes (in ascending address order). Raises SearchUnavailable where ``finds_object_headers``
        is False (the debugger's !search finds values only)."""
        raise SearchUnavailable("this source cannot collect object headers while it searches")

    def readable_ranges(self, address: int, size: int) -> List[Tuple[int, int]]:
        """The parts (start, end) of ``[address, address + size)`` that ``read`` can give, in address
        order. Here by reading: the whole, else parts of READABLE_PART bytes, else pages (a page is read
        whole or not at all); a source that knows what it holds answers without reading (a dump file
        from its page tables, a small dump from its memory list, which holds pieces smaller than a page)."""
        return joined(_readable_parts(self, address, address + size, READABLE_PART))

    def crash_facts(self) -> Optional[CrashFacts]:
        """What the source recorded about the crash besides memory (a small dump's triage data), or None."""
        return None

    def searches_done(self) -> None:
        """The analysis will search no more: what the searches held may be let go (a later search takes
        it again)."""

    def close(self) -> None:
        """Release files or sessions held by the target."""

    # ---- helpers built on the primitives ----------------------------------------------------

    def read_pointer(self, address: int) -> int:
        return self.unpack_pointer(self.read(address, self.pointer_size))

    def read_u8(self, address: int) -> int:
        return self.read(address, 1)[0]

    def read_u16(self, address: int) -> int:
        return struct.unpack("<H", self.read(address, 2))[0]

    def read_u32(self, address: int) -> int:
        return struct.unpack("<I", self.read(address, 4))[0]

    def read_u64(self, address: int) -> int:
        return struct.unpack("<Q", self.read(address, 8))[0]

    def unpack_pointer(self, data: bytes) -> int:
        return struct.unpack("<Q" if self.pointer_size == 8 else "<I", data)[0]

    def read_pointers(self, address: int, count: int) -> List[int]:
        fmt = ("<%dQ" if self.pointer_size == 8 else "<%dI") % count
        return list(struct.unpack(fmt, self.read(address, count * self.pointer_size)))

    def read_unicode_string(self, address: int) -> str:
        """Decode the `_UNICODE_STRING` at ``address`` (Length, MaximumLength, Buffer)."""
        header = self.read(address, 2 * self.pointer_size)
        length, maximum = struct.unpack_from("<HH", header, 0)
        buffer = self.unpack_pointer(header[self.pointer_size:])
        return self.decode_unicode_string(length, maximum, buffer)

    def decode_unicode_string(self, length: int, maximum: int, buffer: int) -> str:
        if length == 0:
            return ""
        if length > maximum:
            raise CorruptString(f"UNICODE_STRING Length {length:#x} is past MaximumLength {maximum:#x}")
        if length % 2:
            raise CorruptString(f"UNICODE_STRING Length {length:#x} is odd")
        if length > MAX_UNICODE_STRING_BYTES:
            raise CorruptString(f"UNICODE_STRING Length {length:#x} is implausibly long")
        if buffer == 0:
            raise CorruptString("UNICODE_STRING Buffer is NULL with a non-zero Length")
        return self.read(buffer, length).decode("utf-16-le", errors="replace")

    @property
    def architecture(self) -> Arch:
        """The architecture object of ``arch``: address ranges, page tables, context record, layout column."""
        return arch_named(self.arch)

    def is_kernel_address(self, address: int) -> bool:
        return self.architecture.is_kernel_address(address)

    def is_user_address(self, address: int) -> bool:
        """True for addresses below MmHighestUserAddress (x86 allows the /3GB split)."""
        return self.architecture.is_user_address(address)

    def is_kernel_object_address(self, address: int) -> bool:
        """True where a kernel object (EPROCESS, MDL, IRP...) can be: a pointer-aligned kernel address
        that fits in a pointer. Pool allocations are at least pointer aligned."""
        return (address < 1 << (8 * self.pointer_size) and address % self.pointer_size == 0
                and self.is_kernel_address(address))


def joined(parts: Iterable[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """(start, end) parts in ascending order, each run of parts that touch joined into one."""
    ranges: List[Tuple[int, int]] = []
    for start, end in parts:
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def _readable_parts(target: Target, start: int, end: int, part: int) -> List[Tuple[int, int]]:
    try:
        target.read(start, end - start)
        return [(start, end)]
    except MemoryReadError:
        if end - start <= PAGE_SIZE:
            return []
    step = part if part < end - start else PAGE_SIZE
    first_step = min(end, (start // step + 1) * step)  # later parts aligned, as pages are
    bounds = [start] + list(range(first_step, end, step)) + [end]
    return [r for low, high in zip(bounds, bounds[1:]) for r in _readable_parts(target, low, high, PAGE_SIZE)]


def read_from_pages(address: int, size: int, page_at: Callable[[int], Optional[bytes]], missing: str,
                    physical: bool = False) -> bytes:
    """Assemble ``size`` bytes at ``address`` from whole pages, for sources that hold memory by the page.

    ``page_at(page address)`` gives the 4 KiB page or None when the source lacks it; a missing page
    makes the whole read fail (MemoryReadError with ``missing`` as the reason), like a debugger's read.
    """
    if size <= 0:
        return b""
    chunks = []
    page = address & ~(PAGE_SIZE - 1)
    end = address + size
    while page < end:
        content = page_at(page)
        if content is None:
            raise MemoryReadError(address, size, physical=physical, reason=missing)
        chunks.append(content[max(address, page) - page:min(end, page + PAGE_SIZE) - page])
        page += PAGE_SIZE
    return b"".join(chunks)


def hex_address(value: int) -> str:
    """Addresses in reports and JSON: ``0xffffa58a1c2d3040``."""
    return f"{value:#x}"


def windbg_address(value: int, pointer_size: int) -> str:
    """Addresses the way WinDbg prints them: ``ffffa58a`1c2d3040`` on x64, ``8a6434d8`` on x86."""
    if pointer_size == 8:
        text = f"{value & 0xFFFFFFFFFFFFFFFF:016x}"
        return f"{text[:8]}`{text[8:]}"
    return f"{value & 0xFFFFFFFF:08x}"


def pfn_range_from_text(text: str) -> PfnRange:
    """Parse ``START-END`` (hex page frame numbers, as ``!search`` takes them)."""
    try:
        first_text, last_text = text.split("-", 1)
        first, last = int(first_text, 16), int(last_text, 16)
    except ValueError:
        raise ValueError(f"PFN range {text!r} is not START-END in hex, e.g. 1000-7ffff") from None
    if first > last:
        raise ValueError(f"PFN range {text!r} starts after it ends")
    if last > MAX_PFN:
        raise ValueError(f"PFN range {text!r} goes past the highest page frame number there can be ({MAX_PFN:#x})")
    return PfnRange(first, last)


def sequence_to_bugcheck(values: Sequence[int]) -> BugCheck:
    code, p1, p2, p3, p4 = (int(v) for v in values)
    return BugCheck(code, (p1, p2, p3, p4))
