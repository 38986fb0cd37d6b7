"""Loaded kernel images: the `PsLoadedModuleList` walk and address-to-module lookup."""
from __future__ import annotations

import bisect
from typing import Callable, Iterable, List, Optional, Tuple

from ..layouts import LayoutError, Layouts, StructView
from ..targets.base import MemoryReadError, Module, SymbolicAddress, Target, TargetError

# A kernel has a few hundred images; a list longer than this is corrupt or cyclic.
MAX_LOADED_MODULES = 4096
# The largest kernel images (display drivers) are a few hundred MiB; an entry claiming more is corrupt.
MAX_IMAGE_SIZE = 1 << 30
# Characters no file name can hold, so no image name either.
_NOT_IN_FILE_NAMES = frozenset('\\/:*?"<>|')
KERNEL_IMAGES = ("ntoskrnl.exe", "ntkrnlmp.exe", "ntkrnlpa.exe", "ntkrpamp.exe")
HAL_IMAGES = ("hal.dll", "halmacpi.dll", "halacpi.dll")


def module_name(image: str) -> str:
    """The name WinDbg gives a module: ``nt`` for the kernel, else the image name without extension."""
    lowered = image.lower()
    if lowered in KERNEL_IMAGES:
        return "nt"
    if lowered in HAL_IMAGES:
        return "hal"
    return image.rsplit(".", 1)[0] if "." in image else image


def plausible_image_name(name: Optional[str]) -> bool:
    """True for a name that can be an image file name such as ``leakyflt.sys``: 1-255 printable
    characters that a file name may hold, ending in a short alphanumeric extension. BaseDllName and
    nt!KiBugCheckDriver hold such names; memory that is not a name, decoded as UTF-16, almost never does."""
    if not name or len(name) > 255 or not name.isprintable() or "\ufffd" in name:
        return False
    if any(character in _NOT_IN_FILE_NAMES for character in name):
        return False
    stem, _, extension = name.rpartition(".")
    return bool(stem) and 1 <= len(extension) <= 4 and extension.isascii() and extension.isalnum()


def walk_loaded_modules(target: Target, list_head: int, layouts: Layouts) -> Tuple[List[Module], List[str]]:
    """Walk PsLoadedModuleList (a LIST_ENTRY of `_KLDR_DATA_TABLE_ENTRY`s), bounded and cycle-safe.

    Returns the modules read and the problems met on the way (a partial list beats none): an entry
    whose name or range is impossible is skipped, an entry that cannot be read cuts the list.
    """
    layout = layouts.get("_KLDR_DATA_TABLE_ENTRY")
    link_offset = layout.offset("InLoadOrderLinks")
    modules: List[Module] = []
    problems: List[str] = []
    seen = {list_head}
    try:
        entry_link = target.read_pointer(list_head)
    except MemoryReadError as error:
        return modules, [f"PsLoadedModuleList is unreadable: {error}"]
    while entry_link != list_head:
        if entry_link in seen:
            problems.append(f"PsLoadedModuleList loops back to {entry_link:#x}; stopped there")
            break
        if len(seen) > MAX_LOADED_MODULES:
            problems.append(f"PsLoadedModuleList has more than {MAX_LOADED_MODULES} entries; stopped")
            break
        seen.add(entry_link)
        entry = entry_link - link_offset
        try:
            view = layouts.view("_KLDR_DATA_TABLE_ENTRY", entry)
            following = target.read_pointer(entry_link)
        except (MemoryReadError, LayoutError) as error:
            problems.append(f"loaded module entry at {entry:#x} is unreadable ({error}); the list is cut there")
            break
        module, why = _module_at(target, view)
        if module is None:
            problems.append(f"loaded module entry at {entry:#x} {why}; skipped")
        else:
            modules.append(module)
        entry_link = following
    return modules, problems


def _module_at(target: Target, view: StructView) -> Tuple[Optional[Module], str]:
    """The module a `_KLDR_DATA_TABLE_ENTRY` describes, or None and why it cannot be one."""
    try:
        image = target.read_unicode_string(view["BaseDllName"])
        base, size = view["DllBase"], view["SizeOfImage"]
    except (TargetError, LayoutError) as error:
        return None, f"has an unreadable name ({error})"
    if not plausible_image_name(image):
        return None, f"has no plausible image name ({image[:40]!r})"
    if not target.is_kernel_address(base) or not 0 < size <= MAX_IMAGE_SIZE:
        return None, f"describes an impossible image range (DllBase {base:#x}, SizeOfImage {size:#x})"
    return Module(module_name(image), image, base, size), ""


class ModuleMap:
    """Address -> module lookups over a list of loaded modules, and the names of addresses.

    ``namer(module, address)`` names an address as WinDbg does (``amdppm!WriteIoMemRawEx+0x70``); the
    kernel session gives its ``describe_address``. Without one an address is ``module+offset``.
    """

    def __init__(self, modules: Iterable[Module],
                 namer: Optional[Callable[[Optional[Module], int], SymbolicAddress]] = None):
        self.modules = sorted(modules, key=lambda m: m.base)
        self._bases = [m.base for m in self.modules]
        self._namer = namer

    def find(self, address: int) -> Optional[Module]:
        index = bisect.bisect_right(self._bases, address) - 1
        if index >= 0 and self.modules[index].contains(address):
            return self.modules[index]
        return None

    def by_image(self, image: str) -> Optional[Module]:
        lowered = image.lower()
        for module in self.modules:
            if module.image.lower() == lowered or module.name.lower() == lowered:
                return module
        return None

    def describe(self, address: int) -> SymbolicAddress:
        """``address`` named: module, function, offset, source line where known."""
        module = self.find(address)
        if self._namer is not None:
            return self._namer(module, address)
        return SymbolicAddress(address, module.name if module else "", offset=address - module.base if module else 0)

    def symbolize(self, address: int) -> str:
        """The address as WinDbg names it: ``leakyflt!LfLockUserBuffer+0x55 [c:\\src\\lock.c @ 118]``
        where a symbol file named it, ``leakyflt+0x1a30`` inside an image otherwise, else the bare hex
        address."""
        return self.describe(address).text

    @staticmethod
    def is_kernel_or_hal(module: Optional[Module]) -> bool:
        return module is not None and module.name in ("nt", "hal")
