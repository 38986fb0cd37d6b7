"""``--symbols FILE``: a PDB, an ISF file or an address map, told apart by content; anything else is one line."""
from __future__ import annotations

import gzip
import importlib.util
import json
import lzma
import os
from pathlib import Path

import pytest

from pykd_ext.symbols.base import SymbolFileError
from pykd_ext.symbols.files import MSF_2_MAGIC, MSF_7_MAGIC, open_symbol_file
from pykd_ext.symbols.isf import IsfFile

REAL_ISF = (Path(__file__).parent / "data" / "symbols" / "windows" / "ntkrnlmp.pdb"
            / "5278AFF86C341677D7D7835C85B7B844-1.json.xz")
HAS_PDB_READER = importlib.util.find_spec("pykd_ext.symbols.pdb") is not None


@pytest.mark.parametrize("form", ["xz", "gzip", "plain"])
def test_an_isf_file_in_any_form(tmp_path, form):
    text = lzma.decompress(REAL_ISF.read_bytes())
    content = {"xz": REAL_ISF.read_bytes(), "gzip": gzip.compress(text), "plain": text}[form]
    path = tmp_path / "kernel.bin"  # the name says nothing
    path.write_bytes(content)
    opened = open_symbol_file(str(path))
    assert isinstance(opened, IsfFile) and opened.identity.guid == "5278AFF86C341677D7D7835C85B7B844"
    assert opened.rva("PsLoadedModuleList") == 0xC2A390


def test_an_address_map(tmp_path):
    path = tmp_path / "symbols.json"
    path.write_text(json.dumps({"nt!KiBugCheckDriver": "0xfffff8047c6f9d70", "nt!Other": 4096}))
    expected = {"nt!KiBugCheckDriver": 0xFFFFF8047C6F9D70, "nt!Other": 4096}
    assert open_symbol_file(str(path)) == expected


@pytest.mark.parametrize("content", ['["nt!X"]', "{}", '{"nt!X": [1]}', '{"nt!X": "0xSECRETVALUE"}',
                                     '{"nt!X": "0x10000000000000000"}', '{"": "0x10"}', '{"nt!X": true}', "3"],
                         ids=["list", "empty", "list-value", "not-hex", "past-64-bits", "no-name", "bool", "number"])
def test_a_wrong_shape_is_one_line_naming_the_accepted_shapes(tmp_path, content):
    path = tmp_path / "symbols.json"
    path.write_text(content)
    with pytest.raises(SymbolFileError, match="accepted are a PDB, a volatility3 ISF file") as caught:
        open_symbol_file(str(path))
    message = str(caught.value)
    assert "\n" not in message and "SECRETVALUE" not in message and len(message) < 300


def test_a_missing_or_unreadable_file(tmp_path):
    for path in (tmp_path / "missing.json", tmp_path):
        with pytest.raises(SymbolFileError, match="cannot read symbol file"):
            open_symbol_file(str(path))


def test_an_old_pdb_is_refused(tmp_path):
    path = tmp_path / "old.pdb"
    path.write_bytes(MSF_2_MAGIC + bytes(64))
    with pytest.raises(SymbolFileError, match="PDB 2.00"):
        open_symbol_file(str(path))


@pytest.mark.skipif(not HAS_PDB_READER, reason="the PDB reader pykd_ext/symbols/pdb.py is not in this checkout")
def test_a_pdb_goes_to_the_pdb_reader(tmp_path):
    path = tmp_path / "cut.pdb"
    path.write_bytes(MSF_7_MAGIC + bytes(8))  # an MSF 7.0 signature and nothing after it: a truncated PDB
    with pytest.raises(SymbolFileError) as caught:
        open_symbol_file(str(path))
    assert "\n" not in str(caught.value)


def test_a_candidate_of_another_build_is_given_up_once_for_the_process(tmp_path, monkeypatch):
    from pykd_ext.symbols import files

    path = tmp_path / REAL_ISF.name
    path.write_bytes(REAL_ISF.read_bytes())
    rvas = json.loads(lzma.decompress(REAL_ISF.read_bytes()))["symbols"]
    wanted = {"PsLoadedModuleList": rvas["PsLoadedModuleList"]["address"]}
    asked = []

    def fits(expected):
        return lambda found: asked.append(dict(found)) or all(found.get(n) == v for n, v in expected.items())

    other_build = {"PsLoadedModuleList": wanted["PsLoadedModuleList"] + 0x1000}
    assert files.open_candidate_once(str(path), ["PsLoadedModuleList"], fits(other_build)) is None
    assert asked == [wanted]
    monkeypatch.setattr(files, "open_symbol_file", lambda *args: pytest.fail("the file was read again"))
    assert files.open_candidate_once(str(path), ["PsLoadedModuleList"], fits(other_build)) is None  # remembered
    monkeypatch.undo()
    opened = files.open_candidate_once(str(path), ["PsLoadedModuleList"], fits(wanted))
    assert isinstance(opened, IsfFile) and opened.rva("PsLoadedModuleList") == wanted["PsLoadedModuleList"]
    assert files.open_symbol_file_once(str(path)) is opened  # one parse, shared


def test_files_of_a_file_system_without_inode_numbers_are_told_apart_by_path(tmp_path, monkeypatch):
    from pykd_ext.symbols import files

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text('{"nt!A": 1}')
    second.write_text('{"nt!B": 2}')
    os.utime(first, ns=(1, 1))
    os.utime(second, ns=(1, 1))  # the same size and time, as unpacked from an archive
    real_stat = os.stat

    def without_inodes(path, *args, **kwargs):
        status = list(real_stat(path, *args, **kwargs))
        status[1] = 0  # st_ino
        return os.stat_result(status)

    monkeypatch.setattr(os, "stat", without_inodes)
    assert files.open_symbol_file_once(str(first)) == {"nt!A": 1}
    assert files.open_symbol_file_once(str(second)) == {"nt!B": 2}
