"""``--symbols FILE``: a JSON map of symbol addresses (PDB and ISF files are told apart by their magic)."""
from __future__ import annotations

import json
from typing import Dict, Union

from .base import SymbolFile, SymbolFileError


def open_symbol_file(path: str) -> Union[SymbolFile, Dict[str, int]]:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            loaded = json.load(handle)
    except OSError as error:
        raise SymbolFileError(f"cannot read symbol file {path}: {error.strerror or error}") from None
    except (ValueError, RecursionError):
        raise SymbolFileError(f"symbol file {path} is not valid JSON") from None
    if not isinstance(loaded, dict):
        raise SymbolFileError(f'symbol file {path} must hold one JSON object: {{"nt!Name": "0x..."}}')
    symbols = {}
    for name, value in loaded.items():
        try:
            address = int(str(value).strip(), 0)
        except ValueError:
            address = -1
        if not 0 <= address < 1 << 64:
            raise SymbolFileError(f'symbol file {path}: {name!r} is not an address; expected {{"nt!Name": "0x..."}}')
        symbols[name if "!" in name else "nt!" + name] = address
    return symbols
