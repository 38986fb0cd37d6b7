"""Fuzz target: ISF symbol files through ``open_symbol_file`` (with and without a glance at their
symbols), then ``rva``, ``type_info`` and ``member``.

    python fuzz/fuzz_isf.py --runs 2000             # the CI run
    python fuzz/fuzz_isf.py --runs 50000 --seed 7   # longer, on demand
    python fuzz/fuzz_isf.py --replay fuzz/crashes/value-seed1-42.json

The bases are a real kernel table (the structures leakhunt asks for, with every type they reach, cut
from the 19041 ISF in tests/data/symbols/) and the generated test kernel's ISF (tests/data/testkernel/,
without its 9000-member structure), each written plain, xz or gzip. Each input damages one: a value
anywhere in the JSON set to a hostile one or deleted, a member made to look through itself
(``"anonymous": true`` cycles), type descriptors nested thousands deep, the text truncated or its bytes
flipped (plain or compressed), trailing garbage, and an xz stream that decompresses past the size
bound. An input passes when:

- ``open_symbol_file`` returns an IsfFile or an address map of names to ints, or raises
  SymbolFileError with one clear line;
- a glance at the kernel's globals while the file is read finds names and addresses below 2**64 only,
  and, where the file opens, the addresses the opened file gives (else it could give up the right
  kernel's file);
- ``rva`` of the kernel's globals and ``type_info`` and ``member`` of every structure leakhunt knows
  (with every field path it knows) answer None, an int, a TypeInfo or a Member of ints, or raise
  SymbolFileError with one clear line;
- the file is byte-identical afterwards; all within the time limit.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import json
import lzma
import os
import random
import sys
from typing import Dict, List, Tuple

from runner import ContractBroken, main, one_line

from fuzz.mutators import DELETE, HOSTILE_VALUES, flip_bytes, manifest_json, manifest_paths, truncate
from mocks import test_kernel
from pykd_ext import layouts
from pykd_ext.symbols import isf
from pykd_ext.symbols.base import SymbolFileError
from pykd_ext.symbols.files import open_symbol_file
from pykd_ext.typeinfo import TypeInfo

# Damage kinds and how often each is drawn (a bomb costs a 64 MiB decompression: rarely).
DAMAGE = {"value": 8, "delete": 4, "anonymous-cycle": 3, "deep-nesting": 3, "truncate": 3, "flip": 3,
          "compressed-flip": 2, "trailing-garbage": 2, "bomb": 1}
REAL_ISF = os.path.join(test_kernel.ROOT, "tests", "data", "symbols", "windows", "ntkrnlmp.pdb",
                        "5278AFF86C341677D7D7835C85B7B844-1.json.xz")
LOOKUPS = [(name, layouts.known_field_names(name)) for name in sorted(
    set(layouts.STABLE_LAYOUTS) | set(layouts.OTHER_STABLE_LAYOUTS) | set(layouts.BUILD_LAYOUTS_X64))]
LOOKUPS += [("_LEAKHUNT_SHAPES", ["Locked", "Grid", "State", "Chain"]), ("_KPROCESS", [])]
SYMBOLS = ["PsLoadedModuleList", "PsActiveProcessHead", "KdDebuggerDataBlock", "KiBugCheckDriver", "NoSuchSymbol"]


def _reached_types(document: dict, roots: List[str]) -> Dict[str, dict]:
    """The user types ``roots`` name and every user type embedded in them (not behind a pointer: a
    pointer's size does not depend on what it points to), so every lookup of the cut table answers."""
    user_types = document["user_types"]
    kept: Dict[str, dict] = {}
    pending = [name for name in roots if name in user_types]
    while pending:
        name = pending.pop()
        if name in kept:
            continue
        kept[name] = user_types[name]
        for field in user_types[name]["fields"].values():
            descriptor = field["type"]
            while descriptor.get("kind") in ("array", "bitfield"):
                descriptor = descriptor.get("subtype") or descriptor.get("type") or {}
            if descriptor.get("kind") in ("struct", "union", "class") and descriptor.get("name") in user_types:
                pending.append(descriptor["name"])
    return kept


def _bases() -> List[Tuple[str, dict]]:
    real = json.loads(lzma.decompress(open(REAL_ISF, "rb").read()))
    cut = {"metadata": real["metadata"], "base_types": real["base_types"], "enums": {},
           "user_types": _reached_types(real, [name for name, _ in LOOKUPS]),
           "symbols": {name: real["symbols"][name] for name in SYMBOLS if name in real["symbols"]}}
    folder = os.path.join(test_kernel.OUTPUT_DIR, "isf", "windows", "ntkrnlmp.pdb")
    generated_path = os.path.join(folder, sorted(os.listdir(folder))[0])
    generated = json.loads(lzma.decompress(open(generated_path, "rb").read()))
    generated["user_types"].pop("_LEAKHUNT_WIDE", None)
    return [("real-19041", cut), ("testkernel", generated)]


BASES = _bases()
LOOKED_UP = {name for name, _ in LOOKUPS}
# Half the damage goes where the lookups go: the metadata, the symbols and the structures leakhunt asks for.
PATHS = {name: manifest_paths(document, per_list=2) for name, document in BASES}
ASKED_PATHS = {name: [path for path in paths if path[0] != "user_types" or (len(path) > 1 and path[1] in LOOKED_UP)]
               for name, paths in PATHS.items()}


def _edited(document: dict, path: Tuple[object, ...], value: object) -> dict:
    """``document`` with the entry at ``path`` replaced by ``value`` (or removed: DELETE), copying only
    the containers on the path (the bases are large, a deep copy per input slow)."""
    edited = copy.copy(document)
    parent = edited
    for key in path[:-1]:
        parent[key] = copy.copy(parent[key])
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = copy.deepcopy(value)
    return edited


def _encoded(rng: random.Random, text: bytes) -> bytes:
    form = rng.choice(("plain", "xz", "gzip"))
    if form == "xz":
        return lzma.compress(text, preset=1)
    if form == "gzip":
        return gzip.compress(text, compresslevel=1)
    return text


_PLACEHOLDER = "leakhunt-fuzz-deep-descriptor"


def _deep(depth: int) -> str:
    """The JSON text of an array type nested ``depth`` deep (too deep for json.dumps to write)."""
    return '{"kind": "array", "count": 2, "subtype": ' * depth + '{"kind": "base", "name": "unsigned char"}' \
        + "}" * depth


def _some_field(rng: random.Random, document: dict) -> Tuple[str, str]:
    asked = sorted(LOOKED_UP & set(document["user_types"]))
    name = rng.choice(asked if rng.random() < 0.5 else sorted(document["user_types"]))
    fields = sorted(document["user_types"][name]["fields"]) or ["Added"]
    return name, rng.choice(fields)


def make_input(rng: random.Random) -> Tuple[str, bytes]:
    base_name, base = rng.choice(BASES)
    kind = rng.choices(list(DAMAGE), weights=list(DAMAGE.values()))[0]
    if kind in ("value", "delete"):
        path = rng.choice(ASKED_PATHS[base_name] if rng.random() < 0.5 else PATHS[base_name])
        value = DELETE if kind == "delete" else rng.choice(HOSTILE_VALUES)
        return kind, _encoded(rng, manifest_json(_edited(base, path, value)))
    if kind == "anonymous-cycle":
        edited = json.loads(json.dumps(base))
        name, field = _some_field(rng, edited)
        target = rng.choice([name, rng.choice(sorted(edited["user_types"]))])
        edited["user_types"][name]["fields"][field] = {"offset": rng.choice([0, 8, 2 ** 40]), "anonymous": True,
                                                       "type": {"kind": "union", "name": target}}
        return kind, _encoded(rng, manifest_json(edited))
    if kind == "deep-nesting":
        edited = json.loads(json.dumps(base))
        name, field = _some_field(rng, edited)
        edited["user_types"][name]["fields"][field] = _PLACEHOLDER
        depth = rng.choice([isf._MAX_NESTING, isf._MAX_NESTING + 1, 900, 5000])
        text = json.dumps(edited).replace(json.dumps(_PLACEHOLDER), '{"offset": 0, "type": ' + _deep(depth) + "}")
        return kind, _encoded(rng, text.encode())
    text = manifest_json(base)
    if kind == "truncate":
        raw = _encoded(rng, text)
        return kind, truncate(raw, rng.randrange(len(raw)))
    if kind == "flip":
        return kind, flip_bytes(text, [(rng.randrange(len(text)), rng.randrange(1, 256))
                                       for _ in range(rng.randint(1, 8))])
    if kind == "compressed-flip":
        raw = lzma.compress(text, preset=1) if rng.random() < 0.5 else gzip.compress(text, compresslevel=1)
        return kind, flip_bytes(raw, [(rng.randrange(len(raw)), rng.randrange(1, 256))
                                      for _ in range(rng.randint(1, 4))])
    if kind == "trailing-garbage":
        return kind, _encoded(rng, text) + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512)))
    return kind, _bomb()


_BOMB: List[bytes] = []


def _bomb() -> bytes:
    """An xz stream of spaces one byte past the decompressed-size bound (made once)."""
    if not _BOMB:
        _BOMB.append(lzma.compress(b" " * (isf.MAX_JSON_BYTES + 1), preset=1))
    return _BOMB[0]


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _ints(*values) -> bool:
    return all(isinstance(value, int) and not isinstance(value, bool) for value in values)


def _lookups(symbols) -> int:
    """Every lookup; the count refused. A wrong type of answer breaks the contract."""
    refused = 0
    for name in SYMBOLS:
        try:
            rva = symbols.rva(name)
        except SymbolFileError as error:
            one_line(str(error))
            refused += 1
            continue
        if rva is not None and not _ints(rva):
            raise ContractBroken(f"rva({name}) answered {rva!r}")
    for name, fields in LOOKUPS:
        try:
            info = symbols.type_info(name, fields)
            members = [symbols.member(name, field) for field in fields[:4]]
        except SymbolFileError as error:
            one_line(str(error))
            refused += 1
            continue
        if info is not None and (not isinstance(info, TypeInfo) or not _ints(info.size)
                                 or not all(_ints(f.offset, f.size) for f in info.fields.values())
                                 or not set(info.fields) <= set(fields)):
            raise ContractBroken(f"type_info({name}) answered {info!r}")
        for member in members:
            if member is not None and not _ints(member.offset, member.size):
                raise ContractBroken(f"member of {name} answered {member!r}")
    return refused


def _glanced(path: str) -> Dict[str, int]:
    """What a glance finds of SYMBOLS while the file is read (the glance then gives the file up)."""
    glance = isf.SymbolGlance(SYMBOLS, lambda found: False)
    isf._documents.clear()
    try:
        open_symbol_file(path, glance)
    except isf.NotWanted:
        pass
    except SymbolFileError as error:
        one_line(str(error))
    if not all(name in SYMBOLS and _ints(address) and 0 <= address < 1 << 64 for name, address in glance.found.items()):
        raise ContractBroken(f"a glance found {glance.found!r}")
    return glance.found


def check(path: str) -> str:
    before = _digest(path)
    glanced = _glanced(path)
    isf._documents.clear()  # every input is read afresh
    try:
        opened = open_symbol_file(path)
    except SymbolFileError as error:
        one_line(str(error))
        outcome = "refused at open"
    else:
        if isinstance(opened, dict):
            if not all(isinstance(name, str) and _ints(address) for name, address in opened.items()):
                raise ContractBroken(f"an address map of {opened!r}")
            outcome = "an address map"
        else:
            wrong = {name: address for name, address in glanced.items() if opened.rva(name) != address}
            if wrong:  # a glance that disagrees with the file could give up the right kernel's file
                raise ContractBroken(f"a glance found {wrong!r}, the opened file says otherwise")
            outcome = "some lookups refused" if _lookups(opened) else "opened, every lookup answered"
            opened.close()
    if _digest(path) != before:
        raise ContractBroken("the ISF file changed")
    return outcome


if __name__ == "__main__":
    sys.exit(main("fuzz_isf", __doc__.splitlines()[0], make_input, check, ".json"))
