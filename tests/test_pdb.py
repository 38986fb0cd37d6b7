"""The PDB reader on the generated test kernel (clang + lld-link), on PDBs made by mocks/pdbwriter.py
(LF_STRUCTURE2 and the other records clang does not write), and on damaged and hostile files."""
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

from mocks import pdbwriter as writer
from mocks import test_kernel
from pykd_ext import layouts
from pykd_ext.symbols import pdb as fmt
from pykd_ext.symbols.base import SymbolFileError
from pykd_ext.symbols.pdb import PdbFile

KERNEL_DIR = test_kernel.OUTPUT_DIR
KERNEL_PDB = os.path.join(KERNEL_DIR, test_kernel.PDB)
KERNEL_EXE = os.path.join(KERNEL_DIR, test_kernel.EXE)
DESCRIBED = test_kernel.structures()
LLVM_PDBUTIL = shutil.which("llvm-pdbutil")


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def _isf():
    with open(KERNEL_EXE, "rb") as handle:
        guid, age, _ = test_kernel.codeview_identity(handle.read())
    path = os.path.join(KERNEL_DIR, test_kernel.isf_relative_path(guid, age))
    with lzma.open(path) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def kernel():
    pdb = PdbFile.open(KERNEL_PDB)
    yield pdb
    pdb.close()


def _open_bytes(tmp_path, raw, name="ntkrnlmp.pdb"):
    path = tmp_path / name
    path.write_bytes(raw)
    return PdbFile.open(str(path))


def _refused(tmp_path, raw, *, lookups=()):
    """The file is refused with one line, at open or at the first lookup that reads the damage."""
    try:
        pdb = _open_bytes(tmp_path, raw)
        for name, fields in lookups:
            pdb.type_info(name, fields) if fields is not None else pdb.rva(name)
    except SymbolFileError as error:
        message = str(error)
        assert message and "\n" not in message and "Traceback" not in message
        return message
    raise AssertionError("the damaged PDB was not refused")


# ---- the generated test kernel ----

def test_the_identity_is_the_one_the_image_names(kernel):
    guid, age, name = test_kernel.codeview_identity(_read(KERNEL_EXE))
    assert (kernel.identity.guid, kernel.identity.age, kernel.identity.name) == (guid, age, name)
    assert kernel.kind == "pdb" and kernel.pointer_size == 8
    assert kernel.label == f"pdb ntkrnlmp.pdb {guid}-{age}"
    assert _isf()["metadata"]["windows"]["pdb"]["GUID"] == guid


def test_the_globals_have_the_rvas_the_linker_gave_them(kernel):
    symbols = _isf()["symbols"]  # written from lld-link's map file
    for name, _ in test_kernel.GLOBALS:
        assert kernel.rva(name) == symbols[name]["address"], name
    assert kernel.rva(test_kernel.ENTRY) == symbols[test_kernel.ENTRY]["address"]
    assert kernel.rva(test_kernel.ENTRY) != kernel.rva("KiBugCheckDriver")  # .text and .data
    assert kernel.rva("NoSuchSymbol") is None
    assert kernel.rva("KiBugCheck") is None  # a prefix of a real name is not that name


@pytest.mark.parametrize("name", list(DESCRIBED))
def test_every_structure_of_the_generator_reads_back(kernel, name):
    expected = test_kernel.expected_layout(name, DESCRIBED)
    info = kernel.type_info(name, list(expected) + ["NoSuchField", "Tail.NoSuchField"])
    assert info.name == name and info.size == DESCRIBED[name].size
    assert {path: (field.offset, field.size) for path, field in info.fields.items()} == expected


def _builtin_x64_19045():
    tables = test_kernel.table_rows()
    return [(name, size, rows) for name, (size, rows) in tables.items()]


@pytest.mark.parametrize("name,size,rows", _builtin_x64_19045(), ids=[row[0] for row in _builtin_x64_19045()])
def test_the_pdb_gives_leakhunts_builtin_x64_19045_layouts(kernel, name, size, rows):
    info = kernel.type_info(name, layouts.known_field_names(name))
    assert {path: field.offset for path, field in info.fields.items()} == {path: row[0] for path, row in rows.items()}
    if size:
        assert info.size == size
    for path, (_, kind) in rows.items():
        if kind in layouts.KIND_SIZES:
            assert info.fields[path].size == layouts.KIND_SIZES[kind], path
        elif kind == "ptr":
            assert info.fields[path].size == 8, path


def test_nested_paths_and_unnamed_members(kernel):
    irp = kernel.type_info("_IRP", ["Tail", "Tail.Overlay", "Tail.Overlay.Thread", "Tail.Overlay.CurrentStackLocation",
                                    "Tail.Overlay.PacketType", "Tail.CompletionKey", "ThreadListEntry.Blink"])
    offsets = {path: (field.offset, field.size) for path, field in irp.fields.items()}
    assert offsets == {"Tail": (0x78, 0x58), "Tail.Overlay": (0x78, 0x50), "Tail.Overlay.Thread": (0x98, 8),
                       "Tail.Overlay.CurrentStackLocation": (0xB8, 8), "Tail.Overlay.PacketType": (0xB8, 4),
                       "Tail.CompletionKey": (0x78, 8), "ThreadListEntry.Blink": (0x28, 8)}
    lock_entry = kernel.type_info("_KLOCK_ENTRY", ["EntryFlags", "EntryOffset", "CrossThreadFlags"])
    assert [(f.offset, f.size) for f in lock_entry.fields.values()] == [(0x18, 4), (0x18, 1), (0x1B, 1)]
    # Through an embedded structure whose member type is a forward reference (_KTHREAD inside _ETHREAD).
    ethread = kernel.type_info("_ETHREAD", ["Tcb.ApcState.Process", "Cid.UniqueThread", "LockEntries"])
    assert {p: (f.offset, f.size) for p, f in ethread.fields.items()} == {
        "Tcb.ApcState.Process": (0xB8, 8), "Cid.UniqueThread": (0x480, 8), "LockEntries": (0x650, 6 * 0x60)}


def test_bit_fields_arrays_enums_qualifiers_and_pointers(kernel):
    paths = ["Locked", "Kind", "Count", "Wide", "Top", "Grid", "State", "Constant", "Owner", "Chain", "Heads",
             "Heads.Flink"]
    info = kernel.type_info("_LEAKHUNT_SHAPES", paths)
    assert {p: (f.offset, f.size) for p, f in info.fields.items()} == {
        "Locked": (4, 4), "Kind": (4, 4), "Count": (4, 4),  # bit fields: their storage unit
        "Wide": (8, 8), "Top": (8, 8), "Grid": (0x10, 24), "State": (0x28, 4), "Constant": (0x2C, 4),
        "Owner": (0x30, 8), "Chain": (0x38, 8), "Heads": (0x40, 32)}  # no path goes into an array


def test_a_type_only_declared_is_unknown(kernel):
    assert kernel.type_info("_KPROCESS", ["Header"]) is None  # only a forward reference exists
    assert kernel.type_info("_NO_SUCH_TYPE", []) is None
    assert kernel.type_info("_LEAKHUNT_STATE", []) is None  # an enum, not a structure


def test_a_field_list_continued_by_lf_index(kernel):
    names = [f"Field{n:04d}" for n in range(test_kernel.WIDE_MEMBERS)]
    info = kernel.type_info("_LEAKHUNT_WIDE", names)
    assert len(info.fields) == test_kernel.WIDE_MEMBERS
    assert all(info.fields[name].offset == 8 * n and info.fields[name].size == 8 for n, name in enumerate(names))


# ---- llvm-pdbutil, an independent reader ----

def _pdbutil(*arguments):
    return subprocess.run([LLVM_PDBUTIL, "dump", *arguments, KERNEL_PDB], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(LLVM_PDBUTIL is None, reason="llvm-pdbutil is not installed (apt-get install llvm)")
def test_llvm_pdbutil_reads_the_same_layouts(kernel):
    """Every defined structure's size and direct members as llvm-pdbutil dumps them."""
    dump = _pdbutil("-types")
    records = re.split(r"\n(?=\s+0x[0-9A-F]+ \| )", dump)
    field_lists = {}
    definitions = []
    for record in records:
        head = re.match(r"\s+0x([0-9A-F]+) \| (LF_\w+)", record)
        if not head:
            continue
        if head.group(2) == "LF_FIELDLIST":
            members = re.findall(r"LF_MEMBER \[name = `(\w+)`, Type = [^,]+, offset = (\d+)", record)
            more = re.findall(r"LF_INDEX continuation = 0x([0-9A-F]+)", record)
            field_lists[int(head.group(1), 16)] = ([(n, int(o)) for n, o in members], [int(m, 16) for m in more])
        elif head.group(2) in ("LF_STRUCTURE", "LF_UNION") and "forward ref" not in record:
            name = re.search(r"`([^`]+)`", record).group(1)
            field_list = int(re.search(r"field list: 0x([0-9A-F]+)", record).group(1), 16)
            size = int(re.search(r"sizeof (\d+)", record).group(1))
            definitions.append((name, field_list, size))
    assert sum(len(more) for _, more in field_lists.values()) >= 3  # the wide structure's continuations
    checked = 0
    for name, field_list, size in definitions:
        if "<unnamed-tag>" in name:
            continue
        members, pending = [], [field_list]
        while pending:
            listed, more = field_lists[pending.pop()]
            members += listed
            pending += more
        first = {}
        for member, offset in members:
            first.setdefault(member, offset)
        info = kernel.type_info(name, list(first))
        assert info.size == size, name
        assert {path: field.offset for path, field in info.fields.items()} == first, name
        checked += 1
    assert checked >= len([tag for tag in DESCRIBED])


@pytest.mark.skipif(LLVM_PDBUTIL is None, reason="llvm-pdbutil is not installed (apt-get install llvm)")
def test_llvm_pdbutil_reads_the_same_identity_and_addresses(kernel):
    summary = _pdbutil("-summary")
    guid = re.search(r"GUID: \{([0-9A-F-]+)\}", summary).group(1).replace("-", "")
    assert guid == kernel.identity.guid
    assert int(re.search(r"Age: (\d+)", summary).group(1)) == kernel.identity.age
    sections = [int(address, 16) for address in
                re.findall(r"^\s+([0-9A-F]+) virtual address$", _pdbutil("-section-headers"), re.M)]
    dump = _pdbutil("-globals", "-publics")
    found = re.findall(r"(S_GDATA32|S_PUB32) \[size = \d+\] `(\w+)`\n\s+(?:type = \S+ \([^)]*\)|flags = [^,]+), "
                       r"addr = (\d+):(\d+)", dump)
    assert {kind for kind, *_ in found} == {"S_GDATA32", "S_PUB32"}
    for _, name, segment, offset in found:
        assert kernel.rva(name) == sections[int(segment) - 1] + int(offset), name


@pytest.mark.skipif(shutil.which("clang") is None or shutil.which("lld-link") is None,
                    reason="clang and lld-link are not installed: the committed test kernel is used as it is")
def test_the_committed_test_kernel_is_what_the_generator_builds():
    result = subprocess.run([sys.executable, os.path.join(test_kernel.ROOT, "mocks", "test_kernel.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- records clang does not write (mocks/pdbwriter.py) ----

def test_lf_structure2_and_lf_union2(tmp_path):
    pdb = _open_bytes(tmp_path, writer.class2_sample())
    assert pdb.identity.guid == "00112233445566778899AABBCCDDEEFF" and pdb.identity.age == 3
    paths = ["Next", "Bits", "Name", "Whole", "Low", "Colour", "Far", "Farther", "Walk", "Count", "Inner"]
    holder = pdb.type_info("_HOLDER", ["Node", "Tail"] + ["Node." + path for path in paths])
    assert holder.size == 0x48
    assert {p: (f.offset, f.size) for p, f in holder.fields.items()} == {
        "Node": (0, 0x123456790), "Tail": (0x40, 4),  # the forward reference resolved by its unique name
        "Node.Next": (0x8, 8), "Node.Bits": (0x10, 4), "Node.Name": (0x14, 15), "Node.Whole": (0x28, 8),
        "Node.Low": (0x28, 4), "Node.Colour": (0x30, 4), "Node.Far": (0x12348, 8), "Node.Farther": (0x123456788, 8)}
    first = pdb.type_info("_NODE", ["Other", "Next"])  # by name: the first definition of that name
    assert first.size == 4 and list(first.fields) == ["Other"]
    assert pdb.rva("KiBugCheckDriver") == 0x5010
    assert pdb.rva("PsLoadedModuleList") == 0x1020
    assert pdb.rva("KiLocal") == 0x5030


def test_the_kernel_structures_as_lf_structure2_records(tmp_path):
    """The same structures written the way recent Microsoft PDBs have them (LF_STRUCTURE2, LF_UNION2,
    forward references everywhere, unnamed members flattened) read back the same."""
    types = writer.TypeRecords()
    writer.kernel_types(types, DESCRIBED)
    pdb = _open_bytes(tmp_path, writer.write_pdb(types))
    for name, aggregate in DESCRIBED.items():
        expected = test_kernel.expected_layout(name, DESCRIBED)
        info = pdb.type_info(name, list(expected))
        assert info.size == aggregate.size, name
        assert {path: (field.offset, field.size) for path, field in info.fields.items()} == expected, name


def test_the_guid_is_written_the_way_symbol_stores_spell_it(tmp_path):
    raw = bytes.fromhex("33221100" "5544" "7766" "8899AABBCCDDEEFF")  # Data1..3 little-endian, Data4 bytes
    pdb = _open_bytes(tmp_path, writer.write_pdb(writer.TypeRecords(), guid=raw, age=0x1A))
    assert pdb.identity.guid == "00112233445566778899AABBCCDDEEFF"
    assert pdb.identity.store_key == "00112233445566778899AABBCCDDEEFF1A"


def test_the_age_is_the_dbi_streams(tmp_path):
    """pdbcopy bumps the info stream's age, not the DBI's, and the image names the DBI age."""
    pdb = _open_bytes(tmp_path, writer.write_pdb(writer.TypeRecords(), age=1, info_age=3))
    assert pdb.identity.age == 1
    no_dbi = writer.msf([b"", writer.info_stream(bytes(16), 5)])
    assert _open_bytes(tmp_path, no_dbi).identity.age == 5


def test_an_x86_pdb(tmp_path):
    types = writer.TypeRecords()
    forward = types.structure("_MDL", 0, 0, forward=True)
    pointer = types.pointer(forward, size=4)
    fields = types.field_list([writer.member("Next", pointer, 0), writer.member("Size", 0x11, 4)])
    types.structure("_MDL", fields, 0x1C)
    symbols = [writer.symbol_record(fmt.S_PUB32, "_KiBugCheckDriver", 1, 0x40)]
    pdb = _open_bytes(tmp_path, writer.write_pdb(types, symbols, machine=0x14C))
    assert pdb.pointer_size == 4
    assert pdb.rva("KiBugCheckDriver") == 0x1040  # x86 publics carry the C decoration
    info = pdb.type_info("_MDL", ["Next", "Size"])
    assert (info.size, info.fields["Next"].size, info.fields["Size"].offset) == (0x1C, 4, 4)


def test_an_enum_of_the_same_name_is_not_the_structure(tmp_path):
    types = writer.TypeRecords()
    types.enum("_SAME", 0x74, types.field_list([writer.enumerate_value("One", 1)]), 1)
    types.structure("_SAME", types.field_list([writer.member("Field", 0x22, 4)]), 8)
    info = _open_bytes(tmp_path, writer.write_pdb(types)).type_info("_SAME", ["Field"])
    assert info.size == 8 and info.fields["Field"].offset == 4


def test_a_pdb_without_symbols_or_types(tmp_path):
    image = writer.msf([b"", writer.info_stream(bytes(16), 1)])
    pdb = _open_bytes(tmp_path, image)
    assert pdb.pointer_size is None and pdb.rva("KiBugCheckDriver") is None and pdb.type_info("_MDL", []) is None


# ---- damaged and hostile files ----

def test_what_is_not_a_pdb(tmp_path):
    assert "no MSF 7.0 signature" in _refused(tmp_path, b"")
    assert "no MSF 7.0 signature" in _refused(tmp_path, b"{\"metadata\": {}}")
    assert "no MSF 7.0 signature" in _refused(tmp_path, bytes(4096))
    with pytest.raises(SymbolFileError, match="cannot read"):
        PdbFile.open(str(tmp_path / "missing.pdb"))
    with pytest.raises(SymbolFileError, match="cannot read"):
        PdbFile.open(str(tmp_path))


def test_a_pdb_cut_short_anywhere(tmp_path):
    raw = _read(KERNEL_PDB)
    cuts = sorted(set(range(0, 200, 7)) | set(range(0, len(raw), 4096)) | set(range(57, len(raw), 9973))
                  | {len(raw) - 1})
    for cut in cuts:
        message = _refused(tmp_path, raw[:cut])
        assert "cut short" in message or "no MSF 7.0 signature" in message, (cut, message)


def _patched(raw, offset, fmt_, value):
    image = bytearray(raw)
    struct.pack_into(fmt_, image, offset, value)
    return bytes(image)


def test_a_damaged_superblock_or_directory(tmp_path):
    raw = writer.class2_sample()
    block_size, _, block_count, directory_bytes, _, block_map = struct.unpack_from("<6I", raw, 32)
    assert "block size" in _refused(tmp_path, _patched(raw, 32, "<I", 4097))
    assert "cut short" in _refused(tmp_path, _patched(raw, 40, "<I", 0xFFFFFFFF))
    assert "block map" in _refused(tmp_path, _patched(raw, 52, "<I", 0))
    assert "block map" in _refused(tmp_path, _patched(raw, 52, "<I", block_count))
    assert "stream directory" in _refused(tmp_path, _patched(raw, 44, "<I", 0xFFFFFFF0))
    assert "stream directory" in _refused(tmp_path, _patched(raw, 44, "<I", 4096 * 4096))
    (directory_block,) = struct.unpack_from("<I", raw, block_map * block_size)
    directory = directory_block * block_size
    assert "streams" in _refused(tmp_path, _patched(raw, directory, "<I", 0x3FFFFFFF))
    assert "more blocks" in _refused(tmp_path, _patched(raw, directory + 4 + 4 * 2, "<I", 0xFFFFFFF0))
    (stream_count,) = struct.unpack_from("<I", raw, directory)
    first_block_entry = directory + 4 + 4 * stream_count
    for value in (0, block_count, 0xFFFFFFFF):
        assert "outside the" in _refused(tmp_path, _patched(raw, first_block_entry + 4, "<I", value))
        assert "outside the" in _refused(tmp_path, _patched(raw, block_map * block_size, "<I", value))


def test_a_stream_that_lists_one_block_again_and_again(tmp_path):
    """A 6.5 KiB file whose one stream claims 1000 blocks (all the same one): refused, not allocated."""
    block_size, repeats = 512, 1000
    data_block = 12
    directory = struct.pack("<II", 1, repeats * block_size) + struct.pack("<I", data_block) * repeats
    directory_blocks = list(range(3, 3 + -(-len(directory) // block_size)))  # blocks 3..10
    block_map = directory_blocks[-1] + 1
    image = bytearray((data_block + 1) * block_size)
    image[:56] = fmt.MSF_MAGIC + struct.pack("<6I", block_size, 1, data_block + 1, len(directory), 0, block_map)
    image[3 * block_size:3 * block_size + len(directory)] = directory
    struct.pack_into(f"<{len(directory_blocks)}I", image, block_map * block_size, *directory_blocks)
    assert "claim 1000 blocks" in _refused(tmp_path, bytes(image))


def _records_pdb(add_records, symbols=()):
    types = writer.TypeRecords()
    add_records(types)
    return writer.write_pdb(types, symbols)


def test_cyclic_and_runaway_type_chains(tmp_path):
    def cyclic_index(types):  # list A continues into B, B into A
        first = types.next_index
        types.add(fmt.LF_FIELDLIST, writer.member("A", 0x74, 0) + writer.continuation(first + 1))
        types.add(fmt.LF_FIELDLIST, writer.member("B", 0x74, 4) + writer.continuation(first))
        types.structure("_LOOP", first, 8)

    def self_index(types):
        first = types.next_index
        types.add(fmt.LF_FIELDLIST, writer.continuation(first))
        types.structure("_LOOP", first, 8)

    def modifier_loop(types):  # a modifier of itself
        first = types.next_index
        types.modifier(first)
        fields = types.field_list([writer.member("X", first, 0)])
        types.structure("_LOOP", fields, 8)

    def unnamed_loop(types):  # an unnamed member whose type is the structure itself
        first = types.next_index
        types.add(fmt.LF_FIELDLIST, writer.member("", first + 1, 0) + writer.member("", first + 1, 0))
        types.structure("_LOOP", first, 8)

    def field_list_not_a_list(types):
        pointer = types.pointer(0x74)
        types.structure("_LOOP", pointer, 8)

    def index_past_the_end(types):
        fields = types.field_list([writer.member("X", 0xFFFFFF, 0)])
        types.structure("_LOOP", fields, 8)

    for build, words in ((cyclic_index, "continues into itself"), (self_index, "continues into itself"),
                         (modifier_loop, "chain of more than"), (unnamed_loop, "nest too deep"),
                         (field_list_not_a_list, "record of kind"), (index_past_the_end, "outside")):
        message = _refused(tmp_path, _records_pdb(build), lookups=[("_LOOP", ["X", "Y"])])
        assert words in message, (build.__name__, message)


def test_absurd_counts_and_lengths(tmp_path):
    base = writer.class2_sample()
    (tmp_path / "base.pdb").write_bytes(base)
    with open(tmp_path / "base.pdb", "rb") as handle:
        tpi = fmt._Msf(handle, "base.pdb").stream(fmt.STREAM_TPI)

    def with_tpi(header_field, value):  # rewrite a TPI header field in place (the TPI is in one block run)
        image = bytearray(base)
        at = image.find(bytes(tpi[:20]))
        struct.pack_into("<I", image, at + 4 * header_field, value)
        return bytes(image)

    assert "records" in _refused(tmp_path, with_tpi(3, 0x7FFFFFFF))  # end type index
    assert "run past" in _refused(tmp_path, with_tpi(4, 0xFFFFFF00))  # record bytes
    assert "version" in _refused(tmp_path, with_tpi(0, 1))

    def bad_numeric(types):
        types.add(fmt.LF_STRUCTURE, struct.pack("<HHIII", 0, 0, 0, 0, 0) + struct.pack("<H", 0x8005) + b"_BAD\x00")

    assert "numeric leaf" in _refused(tmp_path, _records_pdb(bad_numeric), lookups=[("_BAD", [])])

    def unknown_leaf(types):
        fields = types.add(fmt.LF_FIELDLIST, struct.pack("<HH", 0x1234, 0))
        types.structure("_BAD", fields, 8)

    assert "unknown kind" in _refused(tmp_path, _records_pdb(unknown_leaf), lookups=[("_BAD", ["X"])])

    def unterminated(types):  # a member name without its zero (the record's padding follows)
        fields = types.add(fmt.LF_FIELDLIST, struct.pack("<HHIH", fmt.LF_MEMBER, 3, 0x74, 0) + b"X")
        types.structure("_BAD", fields, 8)

    assert "not terminated" in _refused(tmp_path, _records_pdb(unterminated), lookups=[("_BAD", ["X"])])

    def many_names(types):
        for _ in range(fmt.MAX_NAME_HITS + 1):
            types.structure("_BAD", 0, 0, forward=True)

    assert "more than" in _refused(tmp_path, _records_pdb(many_names), lookups=[("_BAD", [])])


def test_a_record_length_that_runs_past_its_stream(tmp_path):
    def long_record(types):
        types.records.append(struct.pack("<HH", 0xFFF0, fmt.LF_POINTER) + bytes(8))

    assert "runs past" in _refused(tmp_path, _records_pdb(long_record))

    def empty_record(types):
        types.records.append(struct.pack("<HH", 0, 0))

    assert "length 0" in _refused(tmp_path, _records_pdb(empty_record))
    symbols = [struct.pack("<HH", 0x40, fmt.S_PUB32) + bytes(4)]
    assert "symbol record stream" in _refused(tmp_path, writer.write_pdb(writer.TypeRecords(), symbols))


def test_the_rvas_of_an_image_rearranged_after_linking(tmp_path):
    """Symbols give section:offset in the original sections; the OMAP table moves them."""
    symbols = [writer.symbol_record(fmt.S_PUB32, "KiBugCheckDriver", 2, 0x10),  # 0x3010 -> 0x2410
               writer.symbol_record(fmt.S_PUB32, "PsLoadedModuleList", 1, 0x880),  # 0x1080 -> 0x1080
               writer.symbol_record(fmt.S_PUB32, "KiDropped", 2, 0x120),  # 0x3120: no place in the image
               writer.symbol_record(fmt.S_PUB32, "KiBefore", 1, 0)]  # 0x800: before the first entry
    omap = [(0x1000, 0x1000), (0x3000, 0x2400), (0x3100, 0)]
    pdb = _open_bytes(tmp_path, writer.write_pdb(writer.TypeRecords(), symbols, sections=[0x1000, 0x2000],
                                                 omap=omap, original_sections=[0x800, 0x3000]))
    assert pdb.rva("KiBugCheckDriver") == 0x2410 and pdb.rva("PsLoadedModuleList") == 0x1080
    assert pdb.rva("KiDropped") is None and pdb.rva("KiBefore") is None
    unsorted = writer.write_pdb(writer.TypeRecords(), symbols, omap=[(0x3000, 0x1), (0x1000, 0x2)],
                                original_sections=[0x1000])
    assert "increasing" in _refused(tmp_path, unsorted)


def test_a_symbol_in_a_section_the_pdb_does_not_have(tmp_path):
    symbols = [writer.symbol_record(fmt.S_PUB32, "KiBugCheckDriver", 9, 0x10),
               writer.symbol_record(fmt.S_PUB32, "PsActiveProcessHead", 0, 0x10)]
    pdb = _open_bytes(tmp_path, writer.write_pdb(writer.TypeRecords(), symbols))
    assert pdb.rva("KiBugCheckDriver") is None and pdb.rva("PsActiveProcessHead") is None


def test_the_file_is_only_read(tmp_path):
    path = tmp_path / "ntkrnlmp.pdb"
    path.write_bytes(_read(KERNEL_PDB))
    os.chmod(path, 0o444)
    pdb = PdbFile.open(str(path))
    pdb.type_info("_EPROCESS", layouts.known_field_names("_EPROCESS"))
    pdb.close()
    assert path.read_bytes() == _read(KERNEL_PDB)
