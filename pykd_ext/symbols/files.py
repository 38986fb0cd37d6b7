"""``--symbols FILE``: a kernel PDB, a volatility3 ISF file, or an address map, told apart by content.

- a PDB: the MSF 7.0 signature -> ``PdbFile`` (pdb.py);
- an ISF: xz or gzip data, or a JSON object with ``metadata`` and ``user_types`` -> ``IsfFile``;
- an address map: a JSON object ``{"nt!KiBugCheckDriver": "0xfffff803..."}`` -> a dict name -> address.

Anything else, and a missing or unreadable file, is one SymbolFileError line (exit 3).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from .base import ProcessCache, SymbolFile, SymbolFileError, file_key
from .isf import IsfFile, NotWanted, SymbolGlance, compression_of, load_json_document

MSF_7_MAGIC = b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\x00\x00\x00"
MSF_2_MAGIC = b"Microsoft C/C++ program database 2.00\r\n"
ACCEPTED = ('accepted are a PDB, a volatility3 ISF file (.json, .json.xz, .json.gz) or a JSON object '
            '{"nt!Name": "0x..."}')


def open_symbol_file(path: str, glance: Optional[SymbolGlance] = None) -> Union[SymbolFile, Dict[str, int]]:
    """The symbol file at ``path``: a SymbolFile (PDB, ISF) or an address map {name: address}. An ISF
    file is shown to ``glance`` while it is read (NotWanted where the glance gives it up)."""
    head = _head(path)
    if head.startswith(MSF_7_MAGIC):
        from .pdb import PdbFile  # the PDB reader is loaded only when a PDB is given

        return PdbFile.open(path)
    if head.startswith(MSF_2_MAGIC):
        raise SymbolFileError(f"symbol file {path} is a PDB 2.00 (before Visual C++ 7.0): not supported; {ACCEPTED}")
    if path.lower().endswith(".pdb"):  # named as a PDB, but without a PDB's first bytes
        raise SymbolFileError(f"symbol file {path} is named as a PDB but is not a PDB (MSF 7.0) file: its first bytes "
                              f"are not the MSF 7.0 signature (a damaged or unfinished download?); {ACCEPTED}")
    if compression_of(head):
        return IsfFile.open(path, glance)
    document = load_json_document(path, glance)
    if isinstance(document, dict) and "metadata" in document and "user_types" in document:
        return IsfFile(path, document)
    return address_map(document, path)


# Symbol files this process opened, by path, size and modification time: a triage worker checks the same
# kernel symbol files against every dump it analyzes, and parses each once.
MAX_OPENED_FILES = 16
_OPENED = ProcessCache(MAX_OPENED_FILES)


def open_symbol_file_once(path: str) -> Union[SymbolFile, Dict[str, int]]:
    """``open_symbol_file``, kept for the process (a file is parsed once while it is unchanged); what it
    gives is shared, so it is never closed."""
    key = _file_key(path)
    if key is None:
        return open_symbol_file(path)  # says why in one line
    opened = _OPENED.get(key)
    if opened is None:
        opened = open_symbol_file(path)
        _OPENED.put(key, opened)
    return opened


# What glances at kernel symbol files found (file key -> RVAs by name), for the files given up: a few
# numbers each, enough for every kernel of a large volatility3 symbol pack.
_GLANCED = ProcessCache(8192)


def open_candidate_once(path: str, names: Sequence[str],
                        fits: Callable[[Dict[str, int]], bool]) -> Optional[Union[SymbolFile, Dict[str, int]]]:
    """``open_symbol_file_once`` for a candidate that may be of any build: None, without parsing it, for
    an ISF file whose RVAs of ``names`` do not ``fit`` (seen while reading it; remembered for the
    process, so another dump of another build reads it no more). A symbol path may hold hundreds of
    kernels' ISF files: most are given up after a third of the work of opening them."""
    key = _file_key(path)
    if key is None:
        return open_symbol_file(path)  # says why in one line
    opened = _OPENED.get(key)
    if opened is not None:
        return opened
    glanced = _GLANCED.get(key)
    if glanced is not None and not fits(glanced):
        return None
    glance = SymbolGlance(names, fits)
    try:
        opened = open_symbol_file(path, glance)
    except NotWanted:
        _GLANCED.put(key, glance.found)
        return None
    _OPENED.put(key, opened)
    return opened


def _file_key(path: str) -> Optional[Tuple[int, Union[int, str], int, int]]:
    """``file_key``, or None when the file cannot be read."""
    try:
        return file_key(path)
    except OSError:
        return None


def address_map(document: Any, path: str) -> Dict[str, int]:
    """Check a parsed address map: names to addresses (``"0x..."`` text or a number) below 2**64."""
    if not isinstance(document, dict) or not document:
        raise SymbolFileError(f"symbol file {path} is not a symbol file leakhunt reads; {ACCEPTED}")
    symbols: Dict[str, int] = {}
    for index, (name, value) in enumerate(document.items(), 1):
        address = _address(value)
        if not name.strip() or address is None:
            what = "has no name" if not name.strip() else "is not an address below 2**64"
            raise SymbolFileError(f"symbol file {path} has a bad symbol (entry {index} {what}); {ACCEPTED}")
        symbols[name.strip()] = address
    return symbols


def _address(value: Any) -> Any:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        address = value
    elif isinstance(value, str):
        try:
            address = int(value.strip(), 0)
        except ValueError:
            return None
    else:
        return None
    return address if 0 <= address < 1 << 64 else None


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MSF_2_MAGIC))
    except OSError as error:
        raise SymbolFileError(f"cannot read symbol file {path}: {error.strerror or error}") from None
