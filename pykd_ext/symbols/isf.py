"""volatility3 ISF (Intermediate Symbol Format) files: the kernel's symbols and types as JSON.

An ISF file made from a kernel PDB holds ``metadata.windows.pdb`` (the PDB's GUID, age and name),
``base_types`` (``pointer`` gives the pointer size), ``user_types`` (structures and unions: ``size``
and ``fields`` of ``{offset, type}``), ``enums`` and ``symbols`` (``{name: {address: RVA}}``). A type
descriptor is ``{"kind": "base"|"struct"|"union"|"class"|"enum", "name": ...}``,
``{"kind": "pointer", "subtype": ...}``, ``{"kind": "array", "count": n, "subtype": ...}`` or
``{"kind": "bitfield", "bit_position": p, "bit_length": l, "type": ...}``. Members of anonymous unions
and structures appear in the PDB, and so in the ISF, directly among the fields of the enclosing type;
a nested member of an unnamed type is a named field whose type is called ``__anonymous_...`` or
``__unnamed_...``; a field marked ``"anonymous": true`` is looked through like a C anonymous member.

The file is plain JSON or xz/gzip compressed (told apart by its first bytes), read with a bound on
its decompressed size, and parsed once per file (a second open of the same unchanged file reuses the
parsed JSON).
"""
from __future__ import annotations

import json
import lzma
import re
import threading
import zlib
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..typeinfo import FieldInfo, TypeInfo
from .base import NEAREST_SYMBOL, CodeLocation, PdbIdentity, SymbolFile, SymbolFileError, file_key
from .names import undecorate

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
# The JSON text of a kernel ISF is 5-7 MB; this bound refuses a decompression bomb or a runaway file.
MAX_JSON_BYTES = 64 << 20
_READ_CHUNK = 1 << 20
_GUID = re.compile(r"^[0-9A-Fa-f]{32}$")
_STRUCT_KINDS = ("struct", "union", "class")
# How deep type descriptors (arrays of arrays...) and anonymous members may nest before the file is
# called corrupt: real kernel types nest a few levels.
_MAX_NESTING = 32
# Parsed files kept for a later open of the same file (path, size, mtime): a few kernels at most.
_CACHE_FILES = 4


def compression_of(head: bytes) -> str:
    """``"xz"``, ``"gzip"`` or ``""`` (plain) from the first bytes of a file."""
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return ""


def load_json_document(path: str, glance: Optional["SymbolGlance"] = None) -> Any:
    """The parsed JSON of a plain, xz or gzip file (by magic), read with a size bound and cached.

    With a ``glance``, the text is shown to it as it is read: NotWanted is raised, without parsing the
    file, as soon as the glance finds the file is not the one wanted.

    Raises SymbolFileError (one line) for a missing or unreadable file, a bad compressed stream, text
    that decompresses past MAX_JSON_BYTES, or text that is not JSON.
    """
    try:
        key = file_key(path)
    except OSError as error:
        raise SymbolFileError(f"cannot read symbol file {path}: {error.strerror or error}") from None
    with _cache_lock:
        if key in _documents:
            _documents.move_to_end(key)
            return _documents[key]
    text = bytearray()
    for piece, last in _text_pieces(path, _GLANCE_PIECE if glance else MAX_JSON_BYTES + 1):
        text += piece
        if glance is not None and not glance.done:
            glance.look(text, last)
            if glance.done and not glance.wanted(glance.found):
                raise NotWanted(path)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as error:
        detail = " (nested too deeply)" if isinstance(error, RecursionError) else ""
        raise SymbolFileError(f"symbol file {path} is not valid JSON{detail}") from None
    with _cache_lock:
        _documents[key] = document
        while len(_documents) > _CACHE_FILES:
            _documents.popitem(last=False)
    return document


_documents: "OrderedDict[Tuple[int, Union[int, str], int, int], Any]" = OrderedDict()
_cache_lock = threading.Lock()


def _text_pieces(path: str, piece_bytes: int) -> Iterator[Tuple[bytes, bool]]:
    """The (decompressed) text of ``path``, at most MAX_JSON_BYTES of it, in pieces of at most
    ``piece_bytes``, each with whether it is the last."""
    try:
        with open(path, "rb") as handle:
            kind = compression_of(handle.read(len(XZ_MAGIC)))
            handle.seek(0)
            if kind == "":
                data = handle.read(MAX_JSON_BYTES + 1)
                if len(data) > MAX_JSON_BYTES:
                    raise SymbolFileError(f"symbol file {path} is larger than {MAX_JSON_BYTES >> 20} MiB: refused")
                yield data, True
                return
            previous = None
            for piece in _decompressed_pieces(handle, kind, path, piece_bytes):
                if previous is not None:
                    yield previous, False
                previous = piece
            yield previous or b"", True
    except OSError as error:
        raise SymbolFileError(f"cannot read symbol file {path}: {error.strerror or error}") from None


def _decompressed_pieces(handle, kind: str, path: str, piece_bytes: int) -> Iterator[bytes]:
    """The decompressed text of an xz or gzip stream, in pieces of at most ``piece_bytes``;
    SymbolFileError for a truncated or bad stream and for text past MAX_JSON_BYTES."""
    total, pending = 0, b""
    xz = kind == "xz"
    decompressor = lzma.LZMADecompressor() if xz else zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        while not decompressor.eof:
            # xz keeps unread input inside the decompressor (needs_input is False while output is due);
            # zlib hands it back as unconsumed_tail.
            wants_input = decompressor.needs_input if xz else not pending
            if wants_input:
                pending = handle.read(_READ_CHUNK)
                if not pending:
                    raise SymbolFileError(f"symbol file {path} is truncated: its {kind} stream ends early")
            room = min(piece_bytes, MAX_JSON_BYTES + 1 - total)
            if xz:
                piece, pending = decompressor.decompress(pending, max_length=room), b""
            else:
                piece = decompressor.decompress(pending, room)
                pending = decompressor.unconsumed_tail
            total += len(piece)
            if total > MAX_JSON_BYTES:
                raise SymbolFileError(f"symbol file {path} decompresses to more than {MAX_JSON_BYTES >> 20} MiB: "
                                      f"refused")
            yield piece
    except (lzma.LZMAError, zlib.error, EOFError) as error:
        raise SymbolFileError(f"symbol file {path} is not a valid {kind} stream ({error})") from None


# How much decompressed text is read at a time under a glance, and the most one symbol's entry spans.
_GLANCE_PIECE = 256 << 10
_GLANCE_ENTRY = 4096


class NotWanted(Exception):
    """A glance found that the symbol file is not the one wanted; the file was not parsed."""


class SymbolGlance:
    """The RVAs of a few symbols, picked out of an ISF file's text while it is read, and whether that
    makes it the file wanted (``wanted(found)``, called once the glance is done).

    volatility3 writes the sections in key order, ``symbols`` before ``user_types``: a kernel's
    PsLoadedModuleList lies about 40% into the text, so a file of another build is given up after a
    third of the work of opening it. A name counts only where its entry is a JSON object with a
    whole-number ``address`` (only symbols have one) after the ``symbols`` key; the glance is done when
    it has every name, or at ``user_types`` after ``symbols``, or at the end of the text."""

    def __init__(self, names: Sequence[str], wanted: Callable[[Dict[str, int]], bool]):
        self.names = sorted(set(names))
        self.wanted = wanted
        self.found: Dict[str, int] = {}
        self.done = False
        self._entry = re.compile(rb'"(' + b"|".join(re.escape(name.encode()) for name in self.names)
                                 + rb')"\s*:\s*\{')
        self._symbols_at = -1
        self._searched = -1

    def look(self, text: bytearray, last: bool) -> None:
        """Look at the text read so far (``last``: all of it)."""
        if self._symbols_at < 0:
            self._symbols_at = self._searched = text.find(b'"symbols"', max(0, self._searched))
            if self._symbols_at < 0:
                self._searched = max(0, len(text) - len(b'"symbols"'))  # the next piece is looked at, not all again
                self.done = last
                return
        start = max(self._symbols_at, self._searched - _GLANCE_ENTRY)
        end = len(text) if last else max(self._searched, len(text) - _GLANCE_ENTRY)  # whole entries only
        for match in self._entry.finditer(text, start, end):
            address = _entry_address(bytes(text[match.end() - 1:match.end() - 1 + _GLANCE_ENTRY]))
            if address is not None:  # a name given twice: the last, as the parsed file has it
                self.found[match.group(1).decode()] = address
        types_at = text.find(b'"user_types"', start, end)
        self._searched = end
        self.done = last or len(self.found) == len(self.names) or types_at >= 0


def _entry_address(text: bytes) -> Optional[int]:
    """The ``address`` of the JSON object at the start of ``text`` (cut anywhere after it), or None."""
    try:
        entry, _ = json.JSONDecoder().raw_decode(text.decode("utf-8", "replace"))
    except ValueError:
        return None
    address = entry.get("address") if type(entry) is dict else None
    return address if type(address) is int and 0 <= address < 1 << 64 else None


@dataclass(frozen=True)
class Member:
    """One member of a structure as the ISF file gives it."""

    offset: int  # from the start of the outermost structure (of the storage unit for a bit field)
    size: int  # whole array; a bit field's storage unit; pointer size for a pointer
    kind: str  # "base", "pointer", "struct", "union", "array", "bitfield", "enum", ...
    bit_position: Optional[int] = None  # bit fields only
    bit_length: Optional[int] = None


class IsfFile(SymbolFile):
    """A volatility3 ISF file of a Windows kernel, opened and checked."""

    kind = "isf"

    def __init__(self, path: str, document: Mapping[str, Any]):
        self.path = path
        self._error = f"symbol file {path} is not a valid ISF file"
        if not isinstance(document, dict):
            raise SymbolFileError(f"{self._error}: it is not a JSON object")
        for section in ("metadata", "base_types", "user_types", "symbols"):
            if not isinstance(document.get(section), dict):
                raise SymbolFileError(f"{self._error}: no {section!r} object")
        enums = document.get("enums", {})
        if not isinstance(enums, dict):
            raise SymbolFileError(f"{self._error}: 'enums' is not an object")
        self._base_types: Dict[str, Any] = document["base_types"]
        self._user_types: Dict[str, Any] = document["user_types"]
        self._enums: Dict[str, Any] = enums
        self.identity = self._read_identity(document["metadata"])
        self.machine = self._read_machine(document["metadata"])
        self.pointer_size = self._read_pointer_size()
        self._symbols = self._read_symbols(document["symbols"])
        self._by_address: Optional[Tuple[List[int], List[str]]] = None

    @classmethod
    def open(cls, path: str, glance: Optional[SymbolGlance] = None) -> "IsfFile":
        """Open a plain, xz or gzip ISF file; SymbolFileError (one line) if it is not a valid one, NotWanted
        where the ``glance`` gives it up."""
        return cls(path, load_json_document(path, glance))

    # ---- the checks at open --------------------------------------------------------------------

    def _read_identity(self, metadata: Mapping[str, Any]) -> PdbIdentity:
        windows = metadata.get("windows")
        pdb = windows.get("pdb") if isinstance(windows, dict) else None
        if not isinstance(pdb, dict):
            raise SymbolFileError(f"{self._error}: no metadata.windows.pdb (not made from a Windows PDB)")
        guid, age, database = pdb.get("GUID"), pdb.get("age"), pdb.get("database")
        if not isinstance(guid, str) or not _GUID.match(guid):
            raise SymbolFileError(f"{self._error}: metadata.windows.pdb.GUID is not 32 hex digits")
        if not _is_count(age):
            raise SymbolFileError(f"{self._error}: metadata.windows.pdb.age is not a whole number")
        if not isinstance(database, str) or not database.strip() or len(database) > 260:
            raise SymbolFileError(f"{self._error}: metadata.windows.pdb.database is not a PDB name")
        return PdbIdentity(database.strip(), guid.upper(), age)

    @staticmethod
    def _read_machine(metadata: Mapping[str, Any]) -> Optional[int]:
        """metadata.windows.pdb.machine_type (the PDB's IMAGE_FILE_MACHINE_*), or None when absent."""
        machine = metadata["windows"]["pdb"].get("machine_type")
        return machine if _is_count(machine) and machine <= 0xFFFF else None

    def _read_pointer_size(self) -> int:
        pointer = self._base_types.get("pointer")
        size = pointer.get("size") if isinstance(pointer, dict) else None
        if size not in (4, 8) or isinstance(size, bool):
            raise SymbolFileError(f"{self._error}: base_types.pointer.size is not 4 or 8")
        return size

    def _read_symbols(self, symbols: Mapping[str, Any]) -> Dict[str, int]:
        addresses: Dict[str, int] = {}
        limit = 1 << 64
        for name, entry in symbols.items():  # tens of thousands: the test is inline (a bool is no address)
            address = entry.get("address") if type(entry) is dict else None
            if type(address) is not int or not 0 <= address < limit:
                raise SymbolFileError(f"{self._error}: symbol {name[:80]!r} has no valid address")
            addresses[name] = address
        return addresses

    # ---- SymbolFile ----------------------------------------------------------------------------

    def rva(self, name: str) -> Optional[int]:
        return self._symbols.get(name)

    def _locate(self, rva: int) -> Optional[CodeLocation]:
        """The nearest symbol at or before ``rva`` (kind NEAREST_SYMBOL): an ISF file gives symbols'
        addresses only, so the result has no size, no source line, and may be a data symbol."""
        if self._by_address is None:
            ordered = sorted((address, name) for name, address in self._symbols.items())
            self._by_address = ([address for address, _ in ordered], [name for _, name in ordered])
        starts, names = self._by_address
        at = bisect_right(starts, rva) - 1
        if at < 0:
            return None
        return CodeLocation(undecorate(names[at], self.pointer_size == 4), starts[at], rva - starts[at], None,
                            NEAREST_SYMBOL)

    def type_info(self, name: str, field_names: Sequence[str]) -> Optional[TypeInfo]:
        outer = self._user_type(name)
        if outer is None:
            return None
        fields: Dict[str, FieldInfo] = {}
        for path in field_names:
            member = self._resolve(outer, name, path.split("."))
            if member is not None:
                fields[path] = FieldInfo(member.offset, member.size)
        return TypeInfo(name, self._checked_size(outer, name), fields)

    def member(self, type_name: str, path: str) -> Optional[Member]:
        """What the file says of one member (``Tail.Overlay.Thread``): offset, size, kind, bit field."""
        outer = self._user_type(type_name)
        return self._resolve(outer, type_name, path.split(".")) if outer is not None else None

    # ---- type resolution -----------------------------------------------------------------------

    def _user_type(self, name: str) -> Optional[Mapping[str, Any]]:
        entry = self._user_types.get(name)
        if entry is None:
            return None
        if (not isinstance(entry, dict) or entry.get("kind") not in _STRUCT_KINDS
                or not isinstance(entry.get("fields"), dict)):
            raise SymbolFileError(f"{self._error}: user type {name[:80]!r} is malformed")
        return entry

    def _checked_size(self, entry: Mapping[str, Any], name: str) -> int:
        size = entry.get("size")
        if not _is_count(size):
            raise SymbolFileError(f"{self._error}: type {name[:80]!r} has no valid size")
        return size

    def _resolve(self, entry: Mapping[str, Any], type_name: str, parts: Sequence[str]) -> Optional[Member]:
        """Where the dotted member ``parts`` of the type ``entry`` lies, or None if it has no such member."""
        offset = 0
        descriptor: Optional[Mapping[str, Any]] = None
        for index, part in enumerate(parts):
            if index:
                entry = self._struct_of(descriptor, type_name)
                if entry is None:
                    return None  # a path through a pointer, an array or a scalar: not a member
            found = self._member(entry, type_name, part, 0)
            if found is None:
                return None
            member_offset, descriptor = found
            offset += member_offset
        kind = str(descriptor.get("kind"))
        bits = (descriptor.get("bit_position"), descriptor.get("bit_length")) if kind == "bitfield" else (None, None)
        if kind == "bitfield" and not (_is_count(bits[0]) and _is_count(bits[1])):
            raise SymbolFileError(f"{self._error}: bit field {'.'.join(parts)[:80]!r} of {type_name[:80]!r} "
                                  f"is malformed")
        return Member(offset, self._size_of(descriptor, type_name, 0), kind, bits[0], bits[1])

    def _member(self, entry: Mapping[str, Any], type_name: str, part: str,
                depth: int) -> Optional[Tuple[int, Mapping[str, Any]]]:
        """(offset within ``entry``, type descriptor) of member ``part``, looking through anonymous members."""
        if depth > _MAX_NESTING:
            raise SymbolFileError(f"{self._error}: anonymous members of {type_name[:80]!r} nest too deeply")
        fields = entry["fields"]
        field = fields.get(part)
        if field is not None:
            return self._checked_field(field, type_name, part)
        for name, candidate in fields.items():
            if isinstance(candidate, dict) and candidate.get("anonymous") is True:
                member_offset, descriptor = self._checked_field(candidate, type_name, name)
                inner = self._struct_of(descriptor, type_name)
                found = self._member(inner, type_name, part, depth + 1) if inner is not None else None
                if found is not None:
                    return member_offset + found[0], found[1]
        return None

    def _checked_field(self, field: Any, type_name: str, part: str) -> Tuple[int, Mapping[str, Any]]:
        offset = field.get("offset") if isinstance(field, dict) else None
        descriptor = field.get("type") if isinstance(field, dict) else None
        if not _is_count(offset) or not isinstance(descriptor, dict):
            raise SymbolFileError(f"{self._error}: field {part[:80]!r} of {type_name[:80]!r} is malformed")
        return offset, descriptor

    def _struct_of(self, descriptor: Mapping[str, Any], type_name: str) -> Optional[Mapping[str, Any]]:
        """The user type a descriptor names if it is a structure or union (members can be named in it)."""
        if descriptor.get("kind") not in _STRUCT_KINDS:
            return None
        return self._user_type(self._name_in(descriptor, type_name))

    def _name_in(self, descriptor: Mapping[str, Any], type_name: str) -> str:
        name = descriptor.get("name")
        if not isinstance(name, str):
            raise SymbolFileError(f"{self._error}: a {descriptor.get('kind')} type in {type_name[:80]!r} has no name")
        return name

    def _size_of(self, descriptor: Mapping[str, Any], type_name: str, depth: int) -> int:
        """Byte size of a type: a whole array, a bit field's storage unit, a pointer's pointer size."""
        if depth > _MAX_NESTING:
            raise SymbolFileError(f"{self._error}: types in {type_name[:80]!r} nest too deeply")
        kind = descriptor.get("kind")
        if not isinstance(kind, str):
            raise SymbolFileError(f"{self._error}: a type in {type_name[:80]!r} has no kind")
        if kind == "pointer":
            return self.pointer_size
        if kind == "array":
            count, subtype = descriptor.get("count"), descriptor.get("subtype")
            if not _is_count(count) or not isinstance(subtype, dict):
                raise SymbolFileError(f"{self._error}: an array in {type_name[:80]!r} is malformed")
            return count * self._size_of(subtype, type_name, depth + 1)
        if kind == "bitfield":
            storage = descriptor.get("type")
            if not isinstance(storage, dict):
                raise SymbolFileError(f"{self._error}: a bit field in {type_name[:80]!r} has no storage type")
            return self._size_of(storage, type_name, depth + 1)
        if kind == "function":
            return 0
        tables: Dict[str, Callable[[str], Any]] = {
            "base": self._base_types.get, "enum": self._enums.get,
            "struct": self._user_types.get, "union": self._user_types.get, "class": self._user_types.get}
        if kind not in tables:
            raise SymbolFileError(f"{self._error}: unknown type kind {str(kind)[:40]!r} in {type_name[:80]!r}")
        name = self._name_in(descriptor, type_name)
        target = tables[kind](name)
        if not isinstance(target, dict):
            raise SymbolFileError(f"{self._error}: {kind} type {name[:80]!r} (used in {type_name[:80]!r}) "
                                  f"is not defined")
        return self._checked_size(target, name)


def _is_count(value: Any) -> bool:
    """A JSON whole number >= 0 (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
