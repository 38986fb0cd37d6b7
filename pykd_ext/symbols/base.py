"""What every symbol file gives leakhunt: who it is for, symbol RVAs, names of addresses, layouts.

A symbol file is an image's PDB (the kernel's ``ntkrnlmp.pdb``, a driver's ``leakyflt.pdb``) or a
volatility3 ISF file made from one. Both name the image they describe by the CodeView identity the
linker wrote into the image's debug directory (PDB name, GUID, age) and give addresses as RVAs from the
image base; the kernel session (``pykd_ext.session``) adds the base of nt in the dump and checks that
the file fits the dump, ``pykd_ext.symbols.modulesyms`` does the same for every other module.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Optional, Sequence, Tuple, Union

from ..targets.base import TargetError
from ..typeinfo import TypeInfo


class SymbolFileError(TargetError):
    """A symbol file that is missing, unreadable, truncated, corrupt or of the wrong kind (exit 3)."""


@dataclass(frozen=True)
class PdbIdentity:
    """The CodeView (RSDS) identity of a PDB: what a symbol store files it under.

    ``guid`` is the 32 upper-case hex digits as symbol stores and volatility3 write them (the GUID's
    first three fields byte-swapped from their little-endian storage, as WinDbg shows it).
    """

    name: str  # e.g. "ntkrnlmp.pdb"
    guid: str  # e.g. "5278AFF86C341677D7D7835C85B7B844"
    age: int

    @property
    def store_key(self) -> str:
        """The symbol store folder: GUID then the age in hex without leading zeros (``...B8441``)."""
        return f"{self.guid}{self.age:X}"

    @property
    def label(self) -> str:
        """``ntkrnlmp.pdb 5278AFF86C341677D7D7835C85B7B844-1``, as the report names a symbol file."""
        return f"{self.name} {self.guid}-{self.age}"


# Where a CodeLocation's name comes from.
PROCEDURE = "procedure"  # a function of the PDB's module streams: its start and length are known
PUBLIC = "public"  # the nearest public symbol at or before the address: no length
DATA = "data"  # a global or static variable, with its type's size when the PDB has types
NEAREST_SYMBOL = "symbol"  # an ISF file's nearest symbol at or before the address: no length, no kind


# How many of its addresses' names a symbol file remembers.
MAX_REMEMBERED_LOCATIONS = 1 << 16


@dataclass(frozen=True)
class CodeLocation:
    """What a symbol file says of one RVA of its image: the symbol that holds it and, where the line
    tables have it, the source line.

    ``name`` is as WinDbg shows it (undecorated); ``start`` the RVA of the symbol, ``offset`` the
    distance from it; ``size`` the symbol's length when known (None: a public or an ISF symbol, whose
    extent the file does not give); ``kind`` one of PROCEDURE, PUBLIC, DATA, NEAREST_SYMBOL; ``file``
    and ``line`` the source position of the address ("" / None when the file has no line for it).
    """

    name: str
    start: int
    offset: int
    size: Optional[int]
    kind: str
    file: str = ""
    line: Optional[int] = None


class SymbolFile:
    """A symbol file, opened and checked. Subclasses: PdbFile (pdb.py), IsfFile (isf.py)."""

    kind: str = ""  # "pdb" or "isf"
    path: str = ""
    identity: Optional[PdbIdentity] = None
    pointer_size: Optional[int] = None  # 8 or 4 when the file says (machine type)
    machine: Optional[int] = None  # IMAGE_FILE_MACHINE_* of the image it describes, when the file says

    @property
    def label(self) -> str:
        """Where a layout came from, for the report: ``pdb ntkrnlmp.pdb 5278AFF8...-1``."""
        return f"{self.kind} {self.identity.label}" if self.identity else f"{self.kind} {self.path}"

    def rva(self, name: str) -> Optional[int]:
        """RVA of a public or global symbol of the image (``KiBugCheckDriver``, no ``nt!``), or None."""
        raise NotImplementedError

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]:
        """Layout of a structure (``_MDL``, no ``nt!``) with the asked field paths, or None if unknown.

        Field paths may go through nested structures and unions, named or anonymous
        (``Tail.Overlay.Thread``, ``Cid.UniqueProcess``); a path the type lacks is left out.
        """
        raise NotImplementedError

    def locate(self, rva: int) -> Optional[CodeLocation]:
        """The symbol that holds ``rva`` (a procedure, a data symbol, else the nearest public at or
        before it in the same section), with its source line where known; None when nothing names it.
        Remembered: a file kept for the process names the same addresses for every dump of a fleet."""
        located = self.__dict__.setdefault("_located", {})
        if rva in located:
            return located[rva]
        found = self._locate(rva)
        if len(located) < MAX_REMEMBERED_LOCATIONS:
            located[rva] = found
        return found

    def _locate(self, rva: int) -> Optional[CodeLocation]:
        """``locate``, each time."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (and the names it gave: a closed file names nothing)."""
        self.__dict__.pop("_located", None)


def file_stamp(status: os.stat_result) -> Tuple[int, int]:
    """What says a file opened earlier has not changed since: its size and modification time."""
    return status.st_size, status.st_mtime_ns


def file_key(path: str) -> Tuple[int, Union[int, str], int, int]:
    """What identifies a file's contents for the process caches: the file itself, through any link (by
    path where the file system has no inode numbers: it says 0 for every file), and its stamp.
    OSError passes through."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino or os.path.realpath(path)) + file_stamp(info)


class ProcessCache:
    """What this process found (and did not find) by identity: a few bounded LRU tables behind a lock."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: "OrderedDict[Hashable, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
