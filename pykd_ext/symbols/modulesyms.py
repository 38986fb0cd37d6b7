"""Names of addresses in loaded modules, as WinDbg prints them, from each module's own symbol file.

``ModuleSymbols.describe(module, address)`` gives ``amdppm!WriteIoMemRawEx+0x70``,
``leakyflt!LfLockUserBuffer+0x55 [c:\\src\\lock.c @ 118]``, ``lockdrv!g_StateLock`` or, where no symbol
file of that very build was found, ``Wdf01000+0x1234``. A module's symbol file is found by identity,
never by name alone:

1. the module's PDB identity (name, GUID, age) comes from the CodeView record of its image: read
   in the target's memory at the module's base (kernel dumps, the debugger), else, when the headers
   are not there (small dumps hold no image), from the image file on the symbol path, found by the
   symbol store key of its name, TimeDateStamp and SizeOfImage and checked to have both;
2. the symbol file is a file given with ``--symbols`` of that identity, else one found on the symbol
   path (stores, ``srv*`` downloads, ``cache*``, plain folders) whose own identity is checked: a PDB of
   another build at the right place is refused and named in the module's note.

A module is looked up the first time one of its addresses is described; what is found (and what is
not) is kept for the process by identity (``_SYMBOL_FILES``, ``_IMAGE_FILES``), so that a fleet worker analyzing many
dumps that share drivers opens each PDB once. Each module gets one note saying which file named its
addresses, or why none did and where it was looked for: for the report's warnings and ``-v``.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..targets.base import MemoryReadError, Module, SymbolicAddress, TargetError
from .base import PdbIdentity, ProcessCache, SymbolFile, SymbolFileError
from .path import ImageKey, Lookup, SymbolPath
from .pe import PeImage

Reader = Callable[[int, int], bytes]

# Symbol files and image lookups kept per process (a fleet worker meets a few hundred drivers).
MAX_CACHED_SYMBOL_FILES = 64
MAX_CACHED_IMAGE_LOOKUPS = 1024


class _Found:
    """What one module's lookup gave: the symbol file (or None) and the note that says so."""

    def __init__(self, symbol_file: Optional[SymbolFile], note: str, said: bool = False):
        self.symbol_file = symbol_file
        self.note = note
        self.said = said  # a missing file the caller has already reported


class ModuleSymbols:
    """Names the addresses of one target's modules. See the module docstring.

    ``symbol_path``: ``_NT_SYMBOL_PATH`` syntax (None: images and PDBs are not looked for on disk);
    ``symbol_files``: files given directly (``--symbols``), used for the module whose identity they
    have; ``read_memory(address, size)``: the target's memory (raises MemoryReadError where it has
    none), for the images' headers; ``known``: module name -> a symbol file the caller already checked
    fits it (the kernel session's for ``nt``; None: the caller looked for it in vain and said so);
    ``offline``: no downloads.
    """

    def __init__(self, symbol_path: Optional[str] = None, symbol_files: Sequence[SymbolFile] = (),
                 read_memory: Optional[Reader] = None, known: Optional[Dict[str, Optional[SymbolFile]]] = None,
                 offline: bool = False):
        self.symbol_path_text = symbol_path or ""
        self._path = SymbolPath.parse(symbol_path) if symbol_path else None
        self._given = list(symbol_files)
        self._read = read_memory
        self._known = dict(known or {})
        self._offline = offline
        self._modules: Dict[Tuple[str, int], _Found] = {}
        self._images: Dict[Tuple[str, int], Optional[PeImage]] = {}

    # ---- the service ----

    def describe(self, module: Optional[Module], address: int) -> SymbolicAddress:
        """``address`` named as WinDbg names it; ``module`` is the module that holds it (None: none)."""
        if module is None:
            return SymbolicAddress(address)
        rva = address - module.base
        found = self._found(module)
        location = None
        if found.symbol_file is not None:
            try:
                location = found.symbol_file.locate(rva)
            except SymbolFileError as error:
                found.note += f"; it could not name {module.name}+{rva:#x} ({error})"
                found.symbol_file = None
        if location is None:
            return SymbolicAddress(address, module.name, offset=rva)
        return SymbolicAddress(address, module.name, location.name, location.offset, location.file, location.line,
                               location.kind)

    def symbol_file(self, module: Module) -> Optional[SymbolFile]:
        """The symbol file that fits ``module``, found (once) as the module docstring says, or None."""
        return self._found(module).symbol_file

    def image(self, module: Module) -> Optional[PeImage]:
        """The module's image headers (and, through them, its sections, exception directory, debug
        directory and version resource): in the target's memory, else the image file found on the
        symbol path by its TimeDateStamp and SizeOfImage; None when neither is at hand."""
        key = (module.image.lower(), module.base)
        if key not in self._images:
            self._images[key] = self._image_in_memory(module)[0] or self._image_file(module)[0]
        return self._images[key]

    def notes(self) -> List[str]:
        """One line per module looked up: which symbol file named its addresses, or why none did."""
        return [found.note for found in self._modules.values()]

    def missing_notes(self) -> List[str]:
        """The notes of the modules that no symbol file named (or could no longer name), but for those
        the caller had already said so of."""
        return [found.note for found in self._modules.values() if found.symbol_file is None and not found.said]

    # ---- one module ----

    def _found(self, module: Module) -> _Found:
        key = (module.name, module.base)
        if key not in self._modules:
            self._modules[key] = self._look_up(module)
        return self._modules[key]

    def _look_up(self, module: Module) -> _Found:
        if module.name in self._known:
            symbol_file = self._known[module.name]
            if symbol_file is None:  # the caller looked for it and said so already
                return _Found(None, f"{module.name}: no symbols (its symbol file was looked for and not found, as "
                                    f"the warnings say); its addresses are shown as {module.name}+offset", said=True)
            return _Found(symbol_file, f"{module.name}: symbols from {symbol_file.label} ({symbol_file.path})")
        identity, whence, why_not = self._identity(module)
        if identity is None:
            return _Found(None, f"{module.name}: no symbols: {why_not}; its addresses are shown as "
                                f"{module.name}+offset")
        for given in self._given:
            if given.identity is not None and _same_build(given.identity, identity):
                return _Found(given, f"{module.name}: symbols from {given.label} ({given.path}, given with "
                                     f"--symbols; the identity {whence})")
        if self._path is None:
            return _Found(None, f"{module.name}: no symbols: {identity.label} ({whence}) was not given and no "
                                f"symbol path is set; its addresses are shown as {module.name}+offset")
        symbol_file, lookup = self._symbol_file_on_path(identity)
        if symbol_file is None:
            return _Found(None, f"{module.name}: {lookup.warning()}; its addresses are shown as "
                                f"{module.name}+offset")
        source = f"downloaded from {lookup.downloaded_from}" if lookup.downloaded_from else symbol_file.path
        return _Found(symbol_file, f"{module.name}: symbols from {symbol_file.label} ({source}; the identity "
                                   f"{whence})")

    def _identity(self, module: Module) -> Tuple[Optional[PdbIdentity], str, str]:
        """(the module's PDB identity, where it was read, "") or (None, "", why it is unknown)."""
        image, why_not_in_memory = self._image_in_memory(module)
        if image is not None:
            try:
                identity, _, why = image.codeview()
            except MemoryReadError:
                why_not_in_memory = "its debug directory is not in memory"
            except TargetError as error:
                return None, "", f"its image header in memory is damaged ({error})"
            else:
                return identity, "of the image in memory", why
        image, why_no_file = self._image_file(module)
        if image is None:
            return None, "", f"{why_not_in_memory}, and {why_no_file}"
        try:
            identity, _, why = image.codeview()
        except (TargetError, OSError) as error:
            return None, "", f"{why_not_in_memory}, and its image file cannot be read ({error})"
        return identity, f"of the image file {image.path}", why

    def _image_in_memory(self, module: Module) -> Tuple[Optional[PeImage], str]:
        if self._read is None:
            return None, "the source gives no memory"
        read, base = self._read, module.base
        try:
            return PeImage(lambda rva, size: read(base + rva, size), f"at {base:#x}"), ""
        except MemoryReadError:
            return None, "its image header is not in memory"
        except TargetError as error:
            return None, f"its image header in memory is not a PE image ({error})"

    def image_file(self, module: Module) -> Optional[PeImage]:
        """The module's image file on the symbol path (checked to have its TimeDateStamp and
        SizeOfImage), or None."""
        return self._image_file(module)[0]

    def _image_file(self, module: Module) -> Tuple[Optional[PeImage], str]:
        """The module's image file on the symbol path, checked to have its TimeDateStamp and
        SizeOfImage; (None, why not) when there is none."""
        if module.timestamp is None:
            return None, "the source does not record its TimeDateStamp (the key of its image file)"
        if self._path is None:
            return None, "no symbol path is set to look for its image file"
        key = ImageKey(module.image, module.timestamp, module.size)
        cache_key = ("image", self.symbol_path_text, self._offline, key)
        cached = _IMAGE_FILES.get(cache_key)
        if cached is not None:
            return cached
        opened: Dict[str, PeImage] = {}

        def accept(path: str) -> str:
            try:
                image = PeImage.from_file(path)
            except (TargetError, OSError) as error:
                return f"not a readable PE image ({error})"
            if (image.time_date_stamp, image.size_of_image) != (key.time_date_stamp, key.size_of_image):
                return (f"of another build: TimeDateStamp {image.time_date_stamp:08X}, SizeOfImage "
                        f"{image.size_of_image:#x}")
            opened[path] = image
            return ""

        lookup = self._path.find(key, self._offline, accept)
        found = (opened[lookup.path], "") if lookup.path else (None, lookup.warning())
        _IMAGE_FILES.put(cache_key, found)
        return found

    def _symbol_file_on_path(self, identity: PdbIdentity) -> Tuple[Optional[SymbolFile], Lookup]:
        """The symbol file of ``identity`` on the symbol path, opened once per process."""
        cache_key = ("pdb", self.symbol_path_text, self._offline, identity)
        cached = _SYMBOL_FILES.get(cache_key)
        if cached is not None:
            return cached
        from .files import open_symbol_file

        opened: Dict[str, SymbolFile] = {}

        def accept(path: str) -> str:
            try:
                candidate = open_symbol_file(path)
            except SymbolFileError as error:
                return f"unreadable ({error})"
            if not isinstance(candidate, SymbolFile) or candidate.identity is None:
                return "not a PDB or ISF file"
            if not _same_build(candidate.identity, identity):
                return f"of another build: GUID {candidate.identity.guid}, age {candidate.identity.age}"
            opened[path] = candidate
            return ""

        lookup = self._path.find(identity, self._offline, accept)
        found = (opened[lookup.path] if lookup.path else None, lookup)
        _SYMBOL_FILES.put(cache_key, found)
        return found


def _same_build(one: PdbIdentity, other: PdbIdentity) -> bool:
    return (one.guid.upper(), one.age) == (other.guid.upper(), other.age)


# Symbol path lookups of this process: (kind, symbol path, offline, identity) -> what they found.
_SYMBOL_FILES = ProcessCache(MAX_CACHED_SYMBOL_FILES)
_IMAGE_FILES = ProcessCache(MAX_CACHED_IMAGE_LOOKUPS)
