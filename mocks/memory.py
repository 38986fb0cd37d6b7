"""Synthesized kernel memory: a page-granular builder that lays out kernel objects the way Windows
does, using leakhunt's own layout tables (``pykd_ext.layouts``) for every offset, and for an ARM64
kernel's structures that move between builds, which leakhunt has no tables for, the ARM64 headers'
(``mocks.arm64_layouts``).

The result is a ``SnapshotData`` with ``complete=True``: every page has a virtual and a physical
address, so the same memory can be replayed, served by the stand-in pykd, or written as a dump file.
"""
from __future__ import annotations

import functools
import random
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional

from pykd_ext.kernel.modules import module_name
from pykd_ext.layouts import IMAGE_FILE_NAME_LENGTH, builtin_layout
from pykd_ext.targets.base import PAGE_SIZE, BugCheck, Module
from pykd_ext.targets.snapshot import SnapshotData

from .arm64_layouts import arm64_layout

# Where the builder places things, per pointer size: (pool, images, user buffers, data globals).
# Where the builder puts the kernel globals leakhunt reads, as offsets (RVAs) into nt; a scene made to
# fit a symbol file takes that file's RVAs instead (``KernelMemory.kernel_globals``).
DEFAULT_KERNEL_GLOBALS = {"KiBugCheckDriver": 0x2000, "PsLoadedModuleList": 0x3000}

REGIONS = {
    8: {"pool": 0xFFFFA58A1C000000, "images": 0xFFFFF80312000000, "user": 0x000001D45A000000},
    4: {"pool": 0x85000000, "images": 0x82000000, "user": 0x00C40000},
}
FIRST_PFN = 0x1000


@dataclass(frozen=True)
class SymbolFit:
    """What a scene needs to be a kernel that a given symbol file describes: where that file puts the
    kernel globals (RVAs, by bare name) and the PDB identity nt's CodeView record must carry."""

    rvas: Dict[str, int]
    pdb_name: str
    guid: str
    age: int

    @classmethod
    def of(cls, symbol_file) -> "SymbolFit":
        """The fit for a ``pykd_ext.symbols`` SymbolFile (PDB or ISF) of the test kernel."""
        rvas = {name: symbol_file.rva(name) for name in
                ("KiBugCheckDriver", "PsLoadedModuleList", "PsActiveProcessHead", "KdDebuggerDataBlock")}
        identity = symbol_file.identity
        return cls({name: rva for name, rva in rvas.items() if rva is not None}, identity.name, identity.guid,
                   identity.age)


@functools.lru_cache(maxsize=None)
def fit_of_pdb(path: str) -> SymbolFit:
    """The fit for the test kernel whose PDB is at ``path`` (read once per process)."""
    from pykd_ext.symbols.pdb import PdbFile
    pdb = PdbFile.open(path)
    try:
        return SymbolFit.of(pdb)
    finally:
        pdb.close()


def add_pages(data: SnapshotData, address: int, content: bytes) -> None:
    """Put ``content`` (whole pages) at virtual ``address`` of a finished scene, each page in a page
    frame of its own past the scene's last one: an image or a stack the scene did not build."""
    next_frame = max(data.physical.values(), default=FIRST_PFN * PAGE_SIZE) // PAGE_SIZE + 1
    for offset in range(0, len(content), PAGE_SIZE):
        data.pages[address + offset] = bytes(content[offset:offset + PAGE_SIZE]).ljust(PAGE_SIZE, b"\0")
        data.physical[address + offset] = (next_frame + offset // PAGE_SIZE) * PAGE_SIZE
        data.partial.pop(address + offset, None)  # held whole now, where a small dump held part of it


class KernelMemory:
    """Sparse kernel memory with a bump allocator for pool and image regions."""

    def __init__(self, pointer_size: int, seed: int = 1, build: Optional[int] = None,
                 kernel_globals: Optional[Dict[str, int]] = None, arch: str = ""):
        self.pointer_size = pointer_size
        self.arch = arch or ("x64" if pointer_size == 8 else "x86")
        self.build = build
        # RVAs in nt of the globals the scene writes (KiBugCheckDriver, PsLoadedModuleList, and, when a
        # symbol file is to fit the scene, PsActiveProcessHead and KdDebuggerDataBlock too).
        self.kernel_globals = {**DEFAULT_KERNEL_GLOBALS, **(kernel_globals or {})}
        self.rng = random.Random(seed)
        self.pages: Dict[int, bytearray] = {}
        self.physical: Dict[int, int] = {}
        self.modules: List[Module] = []
        self.symbols: Dict[str, int] = {}
        regions = REGIONS[pointer_size]
        self._pool_next = regions["pool"]
        self._image_next = regions["images"]
        self._user_next = regions["user"]
        # Physical frames are handed out in shuffled order, as real allocations are.
        self.highest_pfn = FIRST_PFN + 0x4000 - 1  # the machine's last physical page
        self._free_pfns = list(range(FIRST_PFN, self.highest_pfn + 1))
        self.rng.shuffle(self._free_pfns)

    # ---- raw memory ----------------------------------------------------------------------------

    def _page(self, page: int) -> bytearray:
        if page not in self.pages:
            self.pages[page] = bytearray(PAGE_SIZE)
            self.physical[page] = self._free_pfns.pop() * PAGE_SIZE
        return self.pages[page]

    def write(self, address: int, data: bytes) -> None:
        offset = 0
        while offset < len(data):
            page = (address + offset) & ~(PAGE_SIZE - 1)
            start = (address + offset) - page
            chunk = min(len(data) - offset, PAGE_SIZE - start)
            self._page(page)[start:start + chunk] = data[offset:offset + chunk]
            offset += chunk

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        for offset in range(size):
            page = (address + offset) & ~(PAGE_SIZE - 1)
            out.append(self.pages[page][(address + offset) - page])
        return bytes(out)

    def pack_pointer(self, value: int) -> bytes:
        return struct.pack("<Q" if self.pointer_size == 8 else "<I", value)

    def write_pointer(self, address: int, value: int) -> None:
        self.write(address, self.pack_pointer(value))

    def map_pages(self, address: int, size: int) -> None:
        """Make sure every page of a range exists (zero filled)."""
        page = address & ~(PAGE_SIZE - 1)
        while page < address + size:
            self._page(page)
            page += PAGE_SIZE

    # ---- allocation ----------------------------------------------------------------------------

    def alloc(self, size: int, align: int = 16) -> int:
        """Pool-like allocation: 16-byte aligned on x64 (8 on x86), never crossing into unmapped pages."""
        align = align if self.pointer_size == 8 else min(align, 8)
        address = (self._pool_next + align - 1) & ~(align - 1)
        self._pool_next = address + size
        self.map_pages(address, size)
        return address

    def skip_pool(self, size: int) -> None:
        self._pool_next += size

    def user_buffer(self, pages: int) -> int:
        address = self._user_next
        self._user_next += (pages + 3) * PAGE_SIZE
        return address

    def fresh_pfn(self) -> int:
        return self._free_pfns.pop()

    # ---- structures through the layout tables -------------------------------------------------

    def layout(self, name: str):
        layout = builtin_layout(name, self.pointer_size, self.build, self.arch)
        if layout is None and self.arch == "arm64":
            layout = arm64_layout(name)
        if layout is None or layout.guessed_from is not None:  # the scene's own build only: no guesses
            raise KeyError(f"no built-in layout for {name} on build {self.build}")
        return layout

    def write_fields(self, name: str, address: int, **values: int) -> None:
        layout = self.layout(name)
        for field_name, value in values.items():
            key = field_name.replace("__", ".")
            offset = layout.offset(key)
            kind = layout.kinds[key]
            if kind == "ptr":
                self.write_pointer(address + offset, value)
            else:
                fmt = {"u8": "<B", "u16": "<H", "i16": "<h", "u32": "<I", "u64": "<Q"}[kind]
                self.write(address + offset, struct.pack(fmt, value))

    def footprint(self, name: str) -> int:
        """sizeof the structure, or enough room for its known fields when leakhunt has no sizeof."""
        layout = self.layout(name)
        return layout.size or max(layout.offsets.values()) + 2 * self.pointer_size

    def new(self, name: str, extra: int = 0, **values: int) -> int:
        address = self.alloc(self.footprint(name) + extra)
        self.write_fields(name, address, **values)
        return address

    def unicode_string(self, address: int, text: str) -> None:
        """Fill the `_UNICODE_STRING` at ``address`` with a freshly allocated copy of ``text``."""
        encoded = text.encode("utf-16-le")
        buffer = self.alloc(len(encoded) + 2)
        self.write(buffer, encoded)
        self.write_fields("_UNICODE_STRING", address, Length=len(encoded), MaximumLength=len(encoded) + 2,
                          Buffer=buffer)

    # ---- images and the loaded module list -----------------------------------------------------

    def add_image(self, image: str, size: int = 0x20000) -> Module:
        base = self._image_next
        self._image_next += (size + 0xFFFFF) & ~0xFFFFF
        # The image header page, so that the image exists in memory.
        self.map_pages(base, PAGE_SIZE)
        self.write(base, b"MZ")
        module = Module(module_name(image), image, base, size)
        self.modules.append(module)
        return module

    def global_variable(self, module: Module, offset: int, size: int) -> int:
        address = module.base + offset
        self.map_pages(address, size)
        return address

    def build_loaded_module_list(self, kernel: Module) -> int:
        """Write PsLoadedModuleList (a LIST_ENTRY of _KLDR_DATA_TABLE_ENTRY) inside the kernel image."""
        head = self.global_variable(kernel, self.kernel_globals["PsLoadedModuleList"], 2 * self.pointer_size)
        entries = []
        for module in self.modules:
            entry = self.new("_KLDR_DATA_TABLE_ENTRY", DllBase=module.base, SizeOfImage=module.size)
            layout = self.layout("_KLDR_DATA_TABLE_ENTRY")
            self.unicode_string(entry + layout.offset("BaseDllName"), module.image)
            self.unicode_string(entry + layout.offset("FullDllName"), "\\SystemRoot\\system32\\drivers\\" + module.image)
            entries.append(entry + layout.offset("InLoadOrderLinks"))
        links = [head] + entries
        for index, link in enumerate(links):
            self.write_fields("_LIST_ENTRY", link, Flink=links[(index + 1) % len(links)],
                              Blink=links[index - 1])
        self.symbols["nt!PsLoadedModuleList"] = head
        return head

    def place_other_kernel_globals(self, kernel: Module) -> None:
        """Map the globals a dump header records besides PsLoadedModuleList (PsActiveProcessHead,
        KdDebuggerDataBlock) where ``kernel_globals`` puts them, so the header can name them."""
        for name in ("PsActiveProcessHead", "KdDebuggerDataBlock"):
            if name in self.kernel_globals:
                self.symbols["nt!" + name] = self.global_variable(kernel, self.kernel_globals[name], 2 * self.pointer_size)

    def write_codeview(self, module: Module, pdb_name: str, guid: str, age: int) -> None:
        """The image's CodeView record, as the linker writes it (Microsoft PE format: the debug data
        directory -> an IMAGE_DEBUG_DIRECTORY of type 2 -> an RSDS record: GUID, age, PDB path).

        Writes a DOS header, "PE\\0\\0", the FileHeader fields that locate the optional header, the
        optional header's Magic, SizeOfImage, NumberOfRvaAndSizes and debug directory entry, and the
        debug directory and RSDS record in the header page; other header fields are left as they are.
        ``guid`` is in symbol-store form (32 hex digits, Data1-Data3 as big-endian numbers)."""
        wide = self.pointer_size == 8
        nt, debug_directory, rsds = 0x80, 0x400, 0x440
        optional = nt + 0x18
        self.write(module.base, struct.pack("<H", 0x5A4D))  # e_magic "MZ"
        self.write(module.base + 0x3C, struct.pack("<I", nt))  # e_lfanew
        machine = {"x64": 0x8664, "arm64": 0xAA64, "x86": 0x14C}[self.arch]  # IMAGE_FILE_MACHINE_* (PE format)
        self.write(module.base + nt, b"PE\0\0" + struct.pack("<H", machine))
        self.write(module.base + nt + 0x14, struct.pack("<H", 0xF0 if wide else 0xE0))  # SizeOfOptionalHeader
        self.write(module.base + optional, struct.pack("<H", 0x20B if wide else 0x10B))  # Magic: PE32+ / PE32
        self.write(module.base + optional + 0x38, struct.pack("<I", module.size))  # SizeOfImage
        directories = optional + (0x70 if wide else 0x60)
        self.write(module.base + directories - 4, struct.pack("<I", 16))  # NumberOfRvaAndSizes
        record = (b"RSDS" + struct.pack("<IHH", int(guid[0:8], 16), int(guid[8:12], 16), int(guid[12:16], 16))
                  + bytes.fromhex(guid[16:32]) + struct.pack("<I", age) + pdb_name.encode("ascii") + b"\0")
        self.write(module.base + directories + 6 * 8, struct.pack("<II", debug_directory, 0x1C))  # Debug entry
        self.write(module.base + debug_directory, struct.pack("<IIHHIIII", 0, 0, 0, 0, 2, len(record), rsds, 0))
        self.write(module.base + rsds, record)

    # ---- the result ----------------------------------------------------------------------------

    def snapshot(self, arch: str, bugcheck: BugCheck, description: str) -> SnapshotData:
        return SnapshotData(
            arch=arch, pointer_size=self.pointer_size, bugcheck=bugcheck, build=self.build,
            description=description, max_pfn=self.highest_pfn, symbols=dict(self.symbols), modules=list(self.modules),
            pages={va: bytes(content) for va, content in self.pages.items()}, physical=dict(self.physical),
            complete=True, created_by="leakhunt scenario builder (mocks/)",
        )


def image_file_name(name: str) -> bytes:
    """EPROCESS.ImageFileName: 15 bytes, NUL padded, truncated like the kernel does."""
    return name.encode("ascii")[:IMAGE_FILE_NAME_LENGTH - 1].ljust(IMAGE_FILE_NAME_LENGTH, b"\0")
