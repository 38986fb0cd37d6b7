"""Type information as a symbol source describes a structure: its size and where its fields are.

Every source of types (the debugger's ``typeInfo``, a PDB, a volatility3 ISF file, a recording) answers
with a TypeInfo; ``layouts.Layouts`` turns it into the StructLayout the kernel views decode with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class FieldInfo:
    offset: int  # byte offset from the start of the outermost structure
    size: int  # byte size of the field (of the whole array for an array, of the storage unit for a bit field)


@dataclass(frozen=True)
class TypeInfo:
    """A structure layout as a source of type information describes it.

    ``fields`` maps the field paths asked for (``Tail.Overlay.Thread`` for a field of a nested
    structure or union) to where they are; a path the source does not have is left out. ``source``
    names where the layout came from ("pdb ntkrnlmp.pdb GUID-AGE", "isf FILE"); empty for the
    debugger's own type information.
    """

    name: str
    size: int
    fields: Dict[str, FieldInfo]
    source: str = ""
