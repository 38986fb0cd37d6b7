"""The ISF reader against real volatility3 symbol tables of the x64 kernel, and against hostile files."""
from __future__ import annotations

import gzip
import json
import lzma
import os
from pathlib import Path

import pytest

from pykd_ext.symbols import isf
from pykd_ext.symbols.base import PdbIdentity, SymbolFileError
from pykd_ext.symbols.isf import IsfFile, load_json_document
from pykd_ext.targets.dumpheader import read_dump_header
from pykd_ext.typeinfo import FieldInfo

ISF_FOLDER = Path(__file__).parent / "data" / "symbols" / "windows" / "ntkrnlmp.pdb"
ISF_FILES = sorted(ISF_FOLDER.glob("*.json.xz"))
KERNEL_19041 = ISF_FOLDER / "5278AFF86C341677D7D7835C85B7B844-1.json.xz"
TRIAGE_X64 = Path("/work/shared/samples/triage_x64.dmp")
# The kernel base of triage_x64.dmp, as ../shared/symbols/README.md states it (not in the dump header).
TRIAGE_X64_KERNEL_BASE = 0xFFFFF8047BA00000


@pytest.fixture(scope="module")
def kernel_19041() -> IsfFile:
    return IsfFile.open(str(KERNEL_19041))


def test_the_shipped_tables_are_there():
    assert len(ISF_FILES) == 4 and (ISF_FOLDER / "LICENSE").is_file()


@pytest.mark.parametrize("path", ISF_FILES, ids=lambda path: path.name[:8])
def test_identity_and_pointer_size_of_every_real_table(path):
    symbols = IsfFile.open(str(path))
    guid, age = path.name.split(".")[0].split("-")
    assert symbols.identity == PdbIdentity("ntkrnlmp.pdb", guid, int(age))
    assert symbols.kind == "isf" and symbols.pointer_size == 8
    assert symbols.label == f"isf ntkrnlmp.pdb {guid}-{age}"
    assert symbols.rva("KiBugCheckDriver") is not None and symbols.rva("NoSuchSymbolAnywhere") is None


def _triage_header():
    if not TRIAGE_X64.is_file():
        pytest.skip(f"{TRIAGE_X64} is not here")
    with open(TRIAGE_X64, "rb") as handle:
        return read_dump_header(handle, str(TRIAGE_X64), TRIAGE_X64.stat().st_size)


def test_the_19041_rvas_agree_with_the_real_x64_dump_header(kernel_19041):
    header = _triage_header()
    assert header.build == 19041
    assert kernel_19041.rva("PsLoadedModuleList") == header.ps_loaded_module_list - TRIAGE_X64_KERNEL_BASE
    assert kernel_19041.rva("PsActiveProcessHead") == header.ps_active_process_head - TRIAGE_X64_KERNEL_BASE
    assert kernel_19041.rva("KdDebuggerDataBlock") == header.kd_debugger_data_block - TRIAGE_X64_KERNEL_BASE


@pytest.mark.parametrize("path", [path for path in ISF_FILES if path != KERNEL_19041], ids=lambda path: path.name[:8])
def test_the_other_kernels_do_not_fit_that_dump(path):
    """The RVA check that accepts a candidate for a small dump turns the other builds away."""
    header = _triage_header()
    other = IsfFile.open(str(path))
    base = header.ps_loaded_module_list - other.rva("PsLoadedModuleList")
    assert (other.rva("PsActiveProcessHead") != header.ps_active_process_head - base
            or other.rva("KdDebuggerDataBlock") != header.kd_debugger_data_block - base)


def test_nested_unnamed_members_arrays_bit_fields_pointers_and_enums(kernel_19041):
    irp = kernel_19041.type_info("_IRP", ["Tail.Overlay.Thread", "Tail.Overlay.CurrentStackLocation", "Tail",
                                          "MdlAddress", "Tail.Overlay.NoSuchField", "MdlAddress.Next", "NoSuch"])
    assert irp.size == 0xD0
    # Tail (0x78) is a union of type __anonymous_..., Overlay (+0) a struct of type __anonymous_...
    assert irp.fields == {"Tail.Overlay.Thread": FieldInfo(0x98, 8),
                          "Tail.Overlay.CurrentStackLocation": FieldInfo(0xB8, 8),
                          "Tail": FieldInfo(0x78, 0x58), "MdlAddress": FieldInfo(0x8, 8)}
    # a member of an anonymous union sits among the fields of _KTHREAD itself (the PDB flattens it)
    thread = kernel_19041.type_info("_KTHREAD", ["ApcState.Process", "Alertable", "Alerted", "LockEntries"])
    assert thread.fields["ApcState.Process"] == FieldInfo(0xB8, 8)
    assert thread.fields["Alertable"] == FieldInfo(0x74, 4)  # a bit field: its ULONG storage unit
    assert thread.fields["Alerted"] == FieldInfo(0x72, 2)  # UCHAR[2]: the whole array
    assert thread.fields["LockEntries"] == FieldInfo(0x320, 8)  # a pointer
    ethread = kernel_19041.type_info("_ETHREAD", ["LockEntries", "Cid.UniqueThread"])
    assert ethread.fields["LockEntries"] == FieldInfo(0x650, 6 * 0x60)  # _KLOCK_ENTRY[6]
    power = kernel_19041.type_info("SYSTEM_POWER_CAPABILITIES", ["AcOnLineWake"])
    assert power.fields["AcOnLineWake"] == FieldInfo(56, 4)  # an enum
    assert kernel_19041.type_info("_NO_SUCH_TYPE", ["X"]) is None


def test_a_bit_field_member_gives_its_bits(kernel_19041):
    pool_type = kernel_19041.member("_POOL_HEADER", "PoolType")
    assert (pool_type.offset, pool_type.size, pool_type.kind) == (2, 2, "bitfield")
    assert (pool_type.bit_position, pool_type.bit_length) == (8, 8)
    assert kernel_19041.member("_POOL_HEADER", "PoolTag").bit_position is None


def test_compression_is_told_by_content_not_by_name(tmp_path):
    text = lzma.decompress(KERNEL_19041.read_bytes())
    plain, gzipped, xz_named_gz = tmp_path / "k.json.xz", tmp_path / "k.json", tmp_path / "k.json.gz"
    plain.write_bytes(text)  # plain JSON under an .xz name
    gzipped.write_bytes(gzip.compress(text))  # gzip under a .json name
    xz_named_gz.write_bytes(KERNEL_19041.read_bytes())
    opened = [IsfFile.open(str(path)) for path in (plain, gzipped, xz_named_gz)]
    assert {symbols.identity for symbols in opened} == {PdbIdentity("ntkrnlmp.pdb",
                                                                    "5278AFF86C341677D7D7835C85B7B844", 1)}
    assert {symbols.type_info("_MDL", ["ByteCount"]).fields["ByteCount"] for symbols in opened} == {FieldInfo(0x28, 4)}


def test_a_file_is_parsed_once_until_it_changes(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps(_minimal()))
    first = load_json_document(str(path))
    assert load_json_document(str(path)) is first
    document = _minimal()
    document["symbols"]["Later"] = {"address": 1}
    path.write_text(json.dumps(document))
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert IsfFile.open(str(path)).rva("Later") == 1


# ---- a member marked anonymous, and hostile files ----------------------------------------------

def _minimal(**changes):
    document = {
        "metadata": {"format": "6.1.0", "windows": {"pdb": {"GUID": "00112233445566778899AABBCCDDEEFF", "age": 2,
                                                            "database": "ntkrnlmp.pdb", "machine_type": 34404}}},
        "base_types": {"pointer": {"kind": "int", "size": 8, "signed": False, "endian": "little"},
                       "unsigned long": {"kind": "int", "size": 4, "signed": False, "endian": "little"}},
        "user_types": {
            "_OUTER": {"kind": "struct", "size": 0x20, "fields": {
                "First": {"offset": 0, "type": {"kind": "base", "name": "unsigned long"}},
                "Hidden": {"offset": 8, "anonymous": True, "type": {"kind": "union", "name": "__unnamed_1"}}}},
            "__unnamed_1": {"kind": "union", "size": 0x10, "fields": {
                "Inner": {"offset": 4, "type": {"kind": "pointer", "subtype": {"kind": "base", "name": "void"}}}}},
        },
        "enums": {},
        "symbols": {"KiBugCheckDriver": {"address": 0x1234}},
    }
    document.update(changes)
    return document


def _write(tmp_path, document, name="k.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return str(path)


def test_a_member_marked_anonymous_is_looked_through(tmp_path):
    symbols = IsfFile.open(_write(tmp_path, _minimal()))
    assert symbols.identity == PdbIdentity("ntkrnlmp.pdb", "00112233445566778899AABBCCDDEEFF", 2)
    info = symbols.type_info("_OUTER", ["Inner", "Hidden.Inner", "First"])
    assert info.fields == {"Inner": FieldInfo(0xC, 8), "Hidden.Inner": FieldInfo(0xC, 8), "First": FieldInfo(0, 4)}


def _edited(edit):
    document = _minimal()
    edit(document)
    return document


HOSTILE_AT_OPEN = {
    "not-an-object": ("[1, 2]", "not a JSON object"),
    "no-user-types": (_edited(lambda d: d.pop("user_types")), "no 'user_types'"),
    "no-windows-pdb": (_edited(lambda d: d["metadata"].pop("windows")), "metadata.windows.pdb"),
    "guid-not-hex": (_edited(lambda d: d["metadata"]["windows"]["pdb"].update(GUID="xyz")), "GUID"),
    "age-negative": (_edited(lambda d: d["metadata"]["windows"]["pdb"].update(age=-1)), "age"),
    "age-bool": (_edited(lambda d: d["metadata"]["windows"]["pdb"].update(age=True)), "age"),
    "pointer-size-3": (_edited(lambda d: d["base_types"]["pointer"].update(size=3)), "pointer.size"),
    "symbol-address-text": (_edited(lambda d: d["symbols"].update(X={"address": "0x10"})), "symbol 'X'"),
    "symbol-past-64-bits": (_edited(lambda d: d["symbols"].update(X={"address": 1 << 64})), "symbol 'X'"),
    "nested-too-deeply": ("[" * 100000 + "]" * 100000, "not valid JSON"),
    "not-json": ("{nope", "not valid JSON"),
}


@pytest.mark.parametrize("key", HOSTILE_AT_OPEN)
def test_a_hostile_file_is_one_line_at_open(tmp_path, key):
    document, message = HOSTILE_AT_OPEN[key]
    with pytest.raises(SymbolFileError, match=message) as caught:
        IsfFile.open(_write(tmp_path, document))
    assert "\n" not in str(caught.value)


HOSTILE_TYPES = {
    "fields-not-object": (lambda d: d["user_types"]["_OUTER"].update(fields=[1]), "user type '_OUTER'"),
    "size-negative": (lambda d: d["user_types"]["_OUTER"].update(size=-8), "valid size"),
    "offset-text": (lambda d: d["user_types"]["_OUTER"]["fields"]["First"].update(offset="0"), "field 'First'"),
    "kind-not-text": (lambda d: d["user_types"]["_OUTER"]["fields"]["First"]["type"].update(kind={"a": 1}),
                      "has no kind"),
    "unknown-kind": (lambda d: d["user_types"]["_OUTER"]["fields"]["First"]["type"].update(kind="quux"),
                     "unknown type kind"),
    "undefined-base-type": (lambda d: d["user_types"]["_OUTER"]["fields"]["First"]["type"].update(name="nope"),
                            "not defined"),
    "array-count-negative": (lambda d: d["user_types"]["_OUTER"]["fields"]["First"].update(
        type={"kind": "array", "count": -1, "subtype": {"kind": "base", "name": "unsigned long"}}), "array"),
    "bit-field-without-bits": (lambda d: d["user_types"]["_OUTER"]["fields"]["First"].update(
        type={"kind": "bitfield", "type": {"kind": "base", "name": "unsigned long"}}), "bit field"),
    "arrays-nested-without-end": (lambda d: d["user_types"]["_OUTER"]["fields"]["First"].update(
        type=_nested_arrays(200)), "nest too deeply"),
    "anonymous-members-in-a-cycle": (lambda d: d["user_types"]["__unnamed_1"]["fields"].update(
        Loop={"offset": 0, "anonymous": True, "type": {"kind": "union", "name": "__unnamed_1"}}), "nest too deeply"),
}


def _nested_arrays(depth):
    descriptor = {"kind": "base", "name": "unsigned long"}
    for _ in range(depth):
        descriptor = {"kind": "array", "count": 1, "subtype": descriptor}
    return descriptor


@pytest.mark.parametrize("key", HOSTILE_TYPES)
def test_a_hostile_type_is_one_line_when_asked_for(tmp_path, key):
    edit, message = HOSTILE_TYPES[key]
    symbols = IsfFile.open(_write(tmp_path, _edited(edit)))
    with pytest.raises(SymbolFileError, match=message) as caught:
        symbols.type_info("_OUTER", ["First", "NotThere"])
    assert "\n" not in str(caught.value)


def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(isf, "MAX_JSON_BYTES", 1 << 20)
    bomb_xz, bomb_gz = tmp_path / "bomb.json.xz", tmp_path / "bomb.json.gz"
    body = b" " * (4 << 20)
    bomb_xz.write_bytes(lzma.compress(body))
    bomb_gz.write_bytes(gzip.compress(body))
    for path in (bomb_xz, bomb_gz):
        with pytest.raises(SymbolFileError, match="decompresses to more than 1 MiB: refused"):
            IsfFile.open(str(path))
    big_plain = tmp_path / "big.json"
    big_plain.write_bytes(body)
    with pytest.raises(SymbolFileError, match="larger than 1 MiB"):
        IsfFile.open(str(big_plain))


def test_a_truncated_or_corrupt_stream_is_one_line(tmp_path):
    whole = KERNEL_19041.read_bytes()
    cut = tmp_path / "cut.json.xz"
    cut.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(SymbolFileError, match="truncated"):
        IsfFile.open(str(cut))
    corrupt = tmp_path / "corrupt.json.gz"
    corrupt.write_bytes(gzip.compress(b'{"a": 1}')[:10] + b"\xff" * 40)
    with pytest.raises(SymbolFileError, match="not a valid gzip stream|truncated"):
        IsfFile.open(str(corrupt))
    with pytest.raises(SymbolFileError, match="cannot read symbol file"):
        IsfFile.open(str(tmp_path / "missing.json.xz"))


# ---- a glance at a kernel's file: the checked globals without parsing the whole -----------------

CHECKED = ("PsLoadedModuleList", "PsActiveProcessHead", "KdDebuggerDataBlock")


def _glance(path, names, wanted=lambda found: False):
    """(what the glance found when it was done, the most text it had seen, whether the file was parsed)."""
    seen, longest = [], [0]
    glance = isf.SymbolGlance(names, lambda found: seen.append(dict(found)) or wanted(found))
    look = glance.look

    def measured(text, last):
        longest[0] = max(longest[0], len(text))
        look(text, last)
    glance.look = measured
    try:
        load_json_document(str(path), glance)
    except isf.NotWanted:
        return seen, longest[0], False
    return seen, longest[0], True


@pytest.mark.parametrize("path", ISF_FILES, ids=lambda path: path.name[:8])
def test_a_glance_finds_the_checked_globals_as_the_whole_file_gives_them(path):
    text = lzma.decompress(path.read_bytes())
    symbols = json.loads(text)["symbols"]  # the json module's reading of the whole file
    seen, longest, parsed = _glance(path, CHECKED)
    assert seen == [{name: symbols[name]["address"] for name in CHECKED}]
    assert not parsed and longest < 0.6 * len(text)  # given up about 40% of the way in
    # a name the file lacks: the glance reads on to the end of the symbols, not further
    seen, longest, _ = _glance(path, CHECKED + ("NoSuchSymbolAnywhere",))
    assert seen == [{name: symbols[name]["address"] for name in CHECKED}]
    assert longest < text.index(b'"user_types"') + 2 * isf._GLANCE_PIECE


def test_a_wanted_file_is_parsed_as_without_a_glance(tmp_path):
    copy = tmp_path / KERNEL_19041.name
    copy.write_bytes(KERNEL_19041.read_bytes())
    seen, _, parsed = _glance(copy, CHECKED, wanted=lambda found: True)
    assert parsed and len(seen) == 1
    assert load_json_document(str(copy)) == json.loads(lzma.decompress(KERNEL_19041.read_bytes()))


@pytest.mark.parametrize("piece", [7, 64, 1 << 18])
def test_a_glance_takes_only_whole_symbol_entries_after_the_symbols_key(tmp_path, monkeypatch, piece):
    monkeypatch.setattr(isf, "_GLANCE_PIECE", piece)  # entries cut across pieces anywhere
    document = _minimal(symbols={"KdDebuggerDataBlock": {"type": {"kind": "base", "name": "void"}},  # no address
                                 "PsActiveProcessHead": {"address": True},  # not a whole number
                                 "PsLoadedModuleList": {"address": 0xC29A90, "type": {"kind": "struct",
                                                                                    "name": "_LIST_ENTRY"}}})
    document["enums"] = {"PsLoadedModuleList": {"address": 1, "base": "int", "constants": {}, "size": 4}}  # a decoy
    text = "{" + ", ".join(f'"{key}": {json.dumps(document[key])}'
                           for key in ("base_types", "enums", "metadata", "symbols", "user_types")) + "}"
    path = tmp_path / "k.json.xz"
    path.write_bytes(lzma.compress(text.encode()))
    assert _glance(path, CHECKED)[0] == [{"PsLoadedModuleList": 0xC29A90}]


def test_a_glance_takes_a_name_given_twice_as_the_parsed_file_has_it(tmp_path):
    text = ('{"metadata": {}, "symbols": {"PsLoadedModuleList": {"address": 16}, "PsLoadedModuleList": '
            '{"address": 32}}, "user_types": {}}')
    path = tmp_path / "k.json"
    path.write_text(text)
    assert json.loads(text)["symbols"]["PsLoadedModuleList"] == {"address": 32}
    assert _glance(path, ["PsLoadedModuleList", "KdDebuggerDataBlock"])[0] == [{"PsLoadedModuleList": 32}]
