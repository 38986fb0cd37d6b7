"""The kernel session: one crashed kernel as the analyses see it.

A Target gives bytes, search and the facts of its source. The session adds what belongs to the kernel
rather than to the source, each in one place:

* symbols, looked up in priority order: the source itself (the debugger's symbols, the globals a dump
  header records, a recording), then the kernel's own symbol files (PDB, then ISF) that fit this
  dump, then addresses the user gave;
* structure layouts (``Layouts``): the source's type information, then the symbol files, then the
  built-in tables, each structure labelled with the source that gave it;
* the module list: the source's own, or nt!PsLoadedModuleList walked through the target;
* names of addresses in every module (``module_symbols()``: ``amdppm!WriteIoMemRawEx+0x70``), from
  each module's own symbol file found by identity (``pykd_ext.symbols.modulesyms``), nt's being the
  kernel's symbol file the session already checked.

Every kernel view and analysis reads through a session (``analyses.common.Context`` holds one).
"""
from __future__ import annotations

import struct
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .arch import arch_of_machine
from .kernel.modules import ModuleMap, walk_loaded_modules
from .layouts import Layouts
from .symbols.base import SymbolFile, SymbolFileError
from .targets.base import (MemoryReadError, Module, RecordedImage, SymbolicAddress, SymbolNotFound, Target,
                           TargetError, image_reader)
from .unwind import ImageView
from .unwind.model import search_function_table
from .typeinfo import TypeInfo

USER_GIVEN = "given on the command line"


class KernelSession:
    """The target plus the kernel's symbols, layouts and modules. See the module docstring."""

    def __init__(self, target: Target, symbol_files: Sequence[SymbolFile] = (),
                 addresses: Optional[Dict[str, int]] = None, kernel_base: Optional[int] = None,
                 notes: Sequence[str] = (), symbol_path: Optional[str] = None,
                 module_symbol_files: Sequence[SymbolFile] = (), kernel_looked_for: bool = False):
        """``symbol_files`` are files already checked to fit this kernel, best first; ``kernel_base``
        is where nt is loaded (the RVAs of the files are relative to it); ``notes`` are what finding
        them said, for the report (with what a damaged file could not give, added as it happens);
        ``symbol_path`` and ``module_symbol_files`` (other modules' files given with ``--symbols``)
        are where the other modules' symbol files are found; ``kernel_looked_for``: the kernel's symbol
        file was looked for (what was not found is in ``notes``)."""
        self.target = target
        self.arch = target.arch
        self.pointer_size = target.pointer_size
        self.build = target.build
        self.symbol_files = list(symbol_files)
        self.addresses = dict(addresses or {})
        self.kernel_base = kernel_base
        self.notes = list(target.recorded_symbol_notes()) + list(notes)
        # Where every symbol looked up so far came from (name -> source label), for the report.
        self.symbol_sources: Dict[str, str] = {}
        self._symbols: Dict[str, Optional[int]] = {}
        # Layouts the symbol files gave (recorded with a session so that a replay uses them again).
        self.file_types: Dict[str, TypeInfo] = {}
        self.layouts = Layouts(self)
        self._modules: Optional[List[Module]] = None
        self.symbol_path = symbol_path
        self.module_symbol_files = list(module_symbol_files)
        self._module_symbols = None
        self.kernel_looked_for = kernel_looked_for
        # Every address named so far (describe_address), by address.
        self.described: Dict[int, SymbolicAddress] = {}
        # What the unwinder read of images that came from files, not from the target's memory (a
        # recording keeps it, so that a replay unwinds the same): (module name, base) -> RecordedImage.
        self.file_image_reads: Dict[Tuple[str, int], RecordedImage] = {}
        self._image_views: Dict[Tuple[str, int], ImageView] = {}

    # ---- what Layouts and the kernel views read through -----------------------------------------

    def read(self, address: int, size: int) -> bytes:
        return self.target.read(address, size)

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]:
        """The layout of ``nt!_NAME`` from the best type information there is, labelled with its source."""
        info = self.target.type_info(name, field_names)
        if info is not None:
            return info
        bare = name.split("!", 1)[-1]
        for symbol_file in self.symbol_files:
            try:
                info = symbol_file.type_info(bare, field_names)
            except SymbolFileError as error:
                self._damaged(symbol_file, f"the type {bare}", error)
                continue
            if info is not None:
                labelled = TypeInfo(name, info.size, dict(info.fields), symbol_file.label)
                self.file_types[name] = labelled
                return labelled
        return None

    # ---- symbols ----------------------------------------------------------------------------------

    def symbol(self, name: str) -> Optional[int]:
        """Address of ``nt!Name`` from the first source that knows it, or None."""
        if name not in self._symbols:
            self._symbols[name] = self._resolve_symbol(name)
        return self._symbols[name]

    def _resolve_symbol(self, name: str) -> Optional[int]:
        try:
            address = self.target.symbol(name)
        except SymbolNotFound:
            pass
        else:
            self.symbol_sources[name] = self.target.symbol_source(name)
            return address
        module, _, bare = name.rpartition("!")
        if module in ("", "nt") and self.kernel_base is not None:
            for symbol_file in self.symbol_files:
                try:
                    rva = symbol_file.rva(bare)
                except SymbolFileError as error:
                    self._damaged(symbol_file, f"the symbol {bare}", error)
                    continue
                if rva is not None:
                    self.symbol_sources[name] = symbol_file.label
                    return self.kernel_base + rva
        if name in self.addresses:
            self.symbol_sources[name] = USER_GIVEN
            return self.addresses[name]
        return None

    def _damaged(self, symbol_file: SymbolFile, what: str, error: SymbolFileError) -> None:
        note = f"{symbol_file.label} could not give {what} ({error}); the next source was used"
        if note not in self.notes:
            self.notes.append(note)

    def resolved_symbols(self) -> Dict[str, int]:
        """The symbols looked up so far that were found: name -> address."""
        return {name: address for name, address in self._symbols.items() if address is not None}

    # ---- modules ----------------------------------------------------------------------------------

    def modules(self) -> List[Module]:
        """The loaded kernel images: the source's own list, else nt!PsLoadedModuleList walked (a
        partial list if it breaks). Raises TargetError when there is no list at all."""
        if self._modules is None:
            listed = self.target.modules()
            if listed is None:
                listed = self._walk_modules()
            self._modules = list(listed)
        return list(self._modules)

    def _walk_modules(self) -> List[Module]:
        head = self.symbol("nt!PsLoadedModuleList")
        if head is None:
            raise TargetError("the source has no module list and nt!PsLoadedModuleList is unknown")
        found, problems = walk_loaded_modules(self.target, head, self.layouts)
        if not found and problems:
            raise TargetError(problems[0])
        return found

    def module_map(self) -> ModuleMap:
        return ModuleMap(self.modules(), self.describe_address)

    def describe_address(self, module: Optional[Module], address: int) -> SymbolicAddress:
        """``address`` (in ``module``, or in none) named as WinDbg names it: by the source itself (the
        debugger, a recording), else from the module's own symbol file when symbols were asked for
        (a symbol path, files given), else ``module+offset``. Remembered (a recording keeps them)."""
        named = self.described.get(address)
        if named is None:
            named = self.target.name_address(module, address)
            if named is None and module is not None and self._names_from_files():
                named = self.module_symbols().describe(module, address)
            if named is None:
                named = SymbolicAddress(address, module.name if module else "",
                                        offset=address - module.base if module else 0)
            self.described[address] = named
        return named

    def _names_from_files(self) -> bool:
        """Whether names come from symbol files: some were given, found or may be found on a path."""
        return bool(self.symbol_path or self.module_symbol_files or self.symbol_files)

    def note_missing_module_symbols(self) -> None:
        """Add to the session's notes (the report's warnings) one line per module whose addresses no
        symbol file named, saying where it was looked for."""
        if self._module_symbols is not None:
            for note in self._module_symbols.missing_notes():
                if note not in self.notes:
                    self.notes.append(note)

    def module_notes(self) -> List[str]:
        """What finding the modules' symbol files said, one line per module looked up."""
        recorded = self.target.recorded_module_notes()
        if recorded is not None:
            return recorded
        return self._module_symbols.notes() if self._module_symbols is not None else []

    def image_view(self, module: Module) -> ImageView:
        """The image of ``module`` as the unwinder reads it (by RVA, with its exception directory): the
        image a recording kept, else the image in the target's memory, else (where symbols were asked
        for) its image file on the symbol path; without bytes when none is at hand, saying why."""
        key = (module.name, module.base)
        if key not in self._image_views:
            self._image_views[key] = self._image_view(module)
        return self._image_views[key]

    def image_version(self, module: Module) -> Optional[str]:
        """The file version of ``module``'s image (its version resource), read as the unwinder reads the
        image (so a recording keeps it), or None. Raises TargetError for a damaged resource."""
        view = self.image_view(module)
        if view.read is None:
            return None
        from .symbols.pe import PeImage

        try:
            version = PeImage(view.read, f"of {module.image}").version()
        except MemoryReadError:
            return None
        return version.file_version if version is not None else None

    def _image_view(self, module: Module) -> ImageView:
        from .symbols.pe import PeImage

        base = module.base
        try:
            in_memory: Optional[PeImage] = PeImage(lambda rva, size: self.target.read(base + rva, size), f"at {base:#x}")
        except MemoryReadError:  # not in memory (a small dump)
            in_memory, why = None, "its image is not in memory"
        except TargetError as error:  # damaged there
            in_memory, why = None, f"its image in memory is damaged ({error})"
        from_file: Optional[Callable[[int, int], bytes]] = None
        find_entry: Optional[Callable[[int, int], Optional[int]]] = None
        recorded = self.target.recorded_image(module)
        if recorded is not None:  # a replay: what the image file gave, as the recording kept it
            from_file, directory = recorded.replay, recorded.exception_directory
        else:
            on_disk = self.module_symbols().image_file(module) if self._names_from_files() else None
            if in_memory is None and on_disk is None:  # said the same way by a replay, which has no symbol path
                return ImageView(module.name, base, module.size,
                                 unavailable=f"{why}, and no image file of {module.image} is at hand")
            directory = (in_memory or on_disk).exception_directory or (0, 0)
            if on_disk is not None:  # what memory lacks comes from the file, and a recording keeps it
                recording = self.file_image_reads.setdefault((module.name, base), RecordedImage(
                    module.name, base, module.size, directory))
                from_file = recording.recorder(on_disk.read)
                if in_memory is None:
                    find_entry = _function_table_search(on_disk, recording, base, directory)
        if in_memory is None:
            return ImageView(module.name, base, module.size, from_file, directory, find_entry=find_entry)
        from_memory = image_reader(in_memory.read, base)

        def read(rva: int, size: int) -> bytes:
            try:
                return from_memory(rva, size)
            except MemoryReadError as error:
                if from_file is None:  # said the same way by a replay, which has no symbol path
                    raise MemoryReadError(base + rva, size, reason=f"not in memory, and no image file of "
                                                                    f"{module.image} is at hand") from error
                return from_file(rva, size)
        return ImageView(module.name, base, module.size, read, directory)

    def module_symbols(self):
        """The names of addresses in this kernel's modules (a ``ModuleSymbols``, made once): nt's from
        the kernel's symbol file, the others' from their own symbol files (``--symbols`` and the
        symbol path), the images' identities read through the target."""
        if self._module_symbols is None:
            from .symbols.modulesyms import ModuleSymbols

            known: Dict[str, Optional[SymbolFile]] = {}
            if self.symbol_files and self.kernel_base is not None:
                known["nt"] = self.symbol_files[0]
            elif self.kernel_looked_for:  # its absence is one warning already
                known["nt"] = None
            self._module_symbols = ModuleSymbols(self.symbol_path, self.module_symbol_files, self.target.read, known)
        return self._module_symbols


def as_session(source) -> KernelSession:
    """A session for ``source``: itself when it is one, else a session over the bare target (no symbol
    files, no user-given addresses: the source's own symbols and the built-in tables)."""
    return source if isinstance(source, KernelSession) else KernelSession(source)


# ---- finding the kernel's own symbols -------------------------------------------------------------

# Kernel globals whose RVAs in a symbol file must agree with the addresses the dump records (minus the
# kernel base) before the file is used for a dump whose nt image header is not in memory.
CHECKED_GLOBALS = ("PsLoadedModuleList", "PsActiveProcessHead", "KdDebuggerDataBlock")
# The PDB names of the kernel images (ntkrnlmp for the multiprocessor kernel every current system runs).
KERNEL_PDB_NAMES = ("ntkrnlmp.pdb", "ntoskrnl.pdb", "ntkrnlpa.pdb", "ntkrpamp.pdb")


def load_symbol_files(paths: Sequence[str]) -> Tuple[List[SymbolFile], Dict[str, int]]:
    """Open the files of ``--symbols``: PDB and ISF files (the kernel's, other modules'), and address
    maps merged into one dict.
    Raises SymbolFileError (one line) for a file that cannot be read or has the wrong shape."""
    from .symbols.files import open_symbol_file

    files: List[SymbolFile] = []
    addresses: Dict[str, int] = {}
    for path in paths:
        opened = open_symbol_file(path)
        if isinstance(opened, dict):
            addresses.update(opened)
        else:
            files.append(opened)
    return files, addresses


def open_session(target: Target, symbol_path: Optional[str] = None, symbol_files: Sequence[SymbolFile] = (),
                 addresses: Optional[Dict[str, int]] = None) -> KernelSession:
    """A session whose symbols come from the target, the kernel's own symbol files that fit it, and
    ``addresses`` (``--symbol`` and address maps). ``symbol_files`` (``--symbols``) are used when they
    fit the dump; otherwise ``symbol_path`` (``--symbol-path`` / ``_NT_SYMBOL_PATH``) is searched for
    the PDB or ISF of the dump's kernel. A file that does not fit the dump is never used, and the
    report says so. Another module's PDB among ``symbol_files`` (``is_module_symbol_file``) is kept,
    with the symbol path, for naming that module's addresses (``KernelSession.module_symbols``)."""
    if not symbol_files and not symbol_path:
        return KernelSession(target, addresses=addresses)
    module_files = [f for f in symbol_files if is_module_symbol_file(f)]
    finder = _KernelSymbolFinder(target)
    files = [f for f in symbol_files if f not in module_files and finder.accept(f, "given with --symbols")]
    if not files and symbol_path:
        found = finder.search(symbol_path)
        files = [found] if found else []
    return KernelSession(target, files, addresses, finder.base, finder.notes, symbol_path, module_files,
                         kernel_looked_for=True)


def _function_table_search(image, recording: RecordedImage, base: int,
                           directory: Tuple[int, int]) -> Callable[[int, int], Optional[int]]:
    """An ImageView's ``find_entry`` for an image file (a ``PeImage`` kept for the process): the binary
    search of its ``.pdata`` table, read once in one piece, keeping in ``recording`` every entry the
    search looks at, as reading them one by one would have. MemoryReadError where the table cannot be
    read in one piece (the unwinder then searches it entry by entry)."""
    def find_entry(entry_size: int, rva: int) -> Optional[int]:
        entries = image.function_table(entry_size)
        if entries is None:
            raise MemoryReadError(base + directory[0], directory[1], reason="not readable in one piece")
        found, looked_at = search_function_table(
            lambda index: struct.unpack_from("<I", entries, index * entry_size)[0], len(entries) // entry_size, rva)
        for index in looked_at:
            start = index * entry_size
            recording.keep(directory[0] + start, entries[start:start + entry_size])
        return found
    return find_entry


def is_module_symbol_file(symbol_file: SymbolFile) -> bool:
    """Whether a file given with ``--symbols`` is another module's (a driver's PDB) rather than the
    kernel's: it names a PDB that is not a kernel's and has no PsLoadedModuleList. The kernel's
    files are checked against the dump; the others against each module's image, when it is named."""
    identity = symbol_file.identity
    if identity is None or identity.name.lower() in KERNEL_PDB_NAMES:
        return False
    try:
        return symbol_file.rva("PsLoadedModuleList") is None
    except SymbolFileError:
        return False


class _KernelSymbolFinder:
    """Finds and checks the symbol files of one dump's kernel, collecting what it has to say."""

    def __init__(self, target: Target):
        from .symbols.pe import read_image_identity

        self.target = target
        self.notes: List[str] = []
        self.base = kernel_base(target)
        self.identity = None
        self.why_no_identity = ""
        if self.base is None:
            self.why_no_identity = "the kernel's base address is unknown (nt!PsLoadedModuleList is unreadable)"
            return
        try:
            image = read_image_identity(target.read, self.base)
        except MemoryReadError:
            self.why_no_identity = "nt's image header is not in this dump"
        except TargetError as error:
            self.why_no_identity = f"nt's image header cannot be read ({error})"
        else:
            self.identity = image.pdb
            self.why_no_identity = image.no_pdb_reason
        self.recorded_globals: Dict[str, int] = {}
        for name in CHECKED_GLOBALS:
            try:
                self.recorded_globals[name] = target.symbol("nt!" + name)
            except SymbolNotFound:
                continue

    def misfit(self, symbol_file: SymbolFile) -> str:
        """Why ``symbol_file`` is not the symbols of this dump's kernel, or "" when it is."""
        if self.base is None:
            return self.why_no_identity
        if symbol_file.pointer_size and symbol_file.pointer_size != self.target.pointer_size:
            return f"it is for a {8 * symbol_file.pointer_size}-bit kernel"
        arch = self.target.architecture
        if symbol_file.machine is not None and symbol_file.machine != arch.machine:
            theirs = arch_of_machine(symbol_file.machine)
            return (f"it is for {'an' if theirs is None or theirs.label[0] in 'AEIOUx' else 'a'} "
                    f"{theirs.label if theirs else f'machine {symbol_file.machine:#x}'} kernel, the dump's is "
                    f"{arch.label}")
        identified = self.identity is not None and symbol_file.identity is not None
        if identified and (symbol_file.identity.guid, symbol_file.identity.age) != (self.identity.guid,
                                                                                     self.identity.age):
            return f"it is for {symbol_file.identity.label}, the dump's kernel is {self.identity.label}"
        misplaced, checked = self.misplaced_global(symbol_file.rva)
        if misplaced:
            return misplaced
        if not identified and not checked:
            why = self.why_no_identity or "the file names no PDB identity"
            return f"{why}, and none of {', '.join(CHECKED_GLOBALS)} can be checked against it"
        return ""

    def misplaced_global(self, rva_of: Callable[[str], Optional[int]]) -> Tuple[str, int]:
        """(which checked global a symbol file places elsewhere than the dump does, or ""; how many of
        them it places where the dump does), given the file's RVA of a name (None where it has none)."""
        checked = 0
        for name, address in self.recorded_globals.items():
            rva = rva_of(name)
            if rva is None:
                continue
            if rva != address - self.base:
                return (f"{name} is at RVA {rva:#x} in it but at {address - self.base:#x} in the dump "
                        f"(kernel base {self.base:#x})"), checked
            checked += 1
        return "", checked

    def accept(self, symbol_file: SymbolFile, how: str, quietly: bool = False, shared: bool = False) -> bool:
        """Whether ``symbol_file`` fits; one that does not is closed (unless it is ``shared``: the process
        keeps it for other dumps) and, unless ``quietly``, named in a note (candidates tried one by one are
        summed up by the caller instead)."""
        misfit = self.misfit(symbol_file)
        if misfit:
            if not quietly:
                self.notes.append(f"the symbol file {symbol_file.path} ({how}) does not fit this dump: {misfit}; "
                                  f"it was not used")
            if not shared:
                symbol_file.close()
        return not misfit

    def search(self, symbol_path_text: str) -> Optional[SymbolFile]:
        """The first symbol file on the symbol path that fits this dump's kernel, or None (and a note)."""
        from .symbols.files import open_candidate_once, open_symbol_file_once
        from .symbols.path import SymbolPath

        symbol_path = SymbolPath.parse(symbol_path_text)
        if self.base is None:
            self.notes.append(f"the kernel's symbols were not looked up: {self.why_no_identity}")
            return None
        if self.identity is not None:
            lookup = symbol_path.find(self.identity)
            if lookup.path is None:
                self.notes.append(f"{lookup.warning()}; the built-in layouts were used")
                return None
            candidates: Iterable[str] = [lookup.path]
        else:  # listed as they are tried: the folders are not listed past the file that fits
            candidates = (path for name in KERNEL_PDB_NAMES for path in symbol_path.candidates(name))
        tried = 0
        for path in candidates:
            tried += 1
            try:
                if self.identity is None:  # any kernel's file may be here: one of another build is given up early
                    opened = open_candidate_once(path, CHECKED_GLOBALS,
                                                 lambda rvas: not self.misplaced_global(rvas.get)[0])
                else:
                    opened = open_symbol_file_once(path)
            except TargetError as error:
                self.notes.append(f"the symbol file {path} is unreadable ({error}); it was not used")
                continue
            if opened is None or isinstance(opened, dict):
                continue
            if self.accept(opened, "found on the symbol path", quietly=self.identity is None, shared=True):
                return opened
        if self.identity is None:
            checked = ", ".join(name for name in CHECKED_GLOBALS if name in self.recorded_globals) or "nothing"
            self.notes.append(f"{self.why_no_identity}, and none of the {tried} kernel symbol file(s) on "
                              f"the symbol path fits it (checked by the RVAs of {checked}); the built-in layouts "
                              f"were used")
        return None


def kernel_base(target: Target) -> Optional[int]:
    """Where nt is loaded: from the source's module list, else the first entry of nt!PsLoadedModuleList
    (the kernel is always loaded first; `_KLDR_DATA_TABLE_ENTRY.DllBase` from the built-in table, whose
    offsets have been stable for years)."""
    from .layouts import builtin_layout

    try:
        listed = target.modules()
    except TargetError:
        listed = None
    if listed:
        kernel = next((module for module in listed if module.name == "nt"), None)
        return kernel.base if kernel else None
    try:
        head = target.symbol("nt!PsLoadedModuleList")
        layout = builtin_layout("_KLDR_DATA_TABLE_ENTRY", target.pointer_size, arch_name=target.arch)
        first = target.read_pointer(head) - layout.offset("InLoadOrderLinks")
        base = target.read_pointer(first + layout.offset("DllBase"))
    except TargetError:
        return None
    return base if target.is_kernel_address(base) and base % 0x1000 == 0 else None
