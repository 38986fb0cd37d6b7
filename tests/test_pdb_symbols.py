"""Names of addresses from PDBs (procedures, data, publics, source lines), checked against LLVM's readers.

The inputs: the test driver built here with clang and lld (tests/data/testdriver/: two source files,
globals, statics, a static function), Microsoft's public amdppm.pdb of the real symbol store
(../shared/symstore: publics and types only) and the MSVC-built ARM64 programs with private PDBs
(../shared/msvc/ARM64: procedures, lines). Where llvm-pdbutil and llvm-symbolizer are installed, every
answer is compared with theirs over many addresses; literals taken from their output stand in where
they are not (each says which command gave it). Tests on ../shared skip where it is absent.
"""
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
from collections import defaultdict

import pytest

from pykd_ext.symbols import pdb as fmt
from pykd_ext.symbols.base import DATA, NEAREST_SYMBOL, PROCEDURE, PUBLIC, SymbolFileError
from pykd_ext.symbols.isf import IsfFile
from pykd_ext.symbols.names import undecorate
from pykd_ext.symbols.pdb import HIDDEN_LINES, PdbFile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER_DIR = os.path.join(ROOT, "tests", "data", "testdriver")
DRIVER_PDB = os.path.join(DRIVER_DIR, "lockdrv.pdb")
DRIVER_SYS = os.path.join(DRIVER_DIR, "lockdrv.sys")
SHARED = os.path.join(ROOT, "..", "shared")
AMDPPM_PDB = os.path.join(SHARED, "symstore", "amdppm.pdb", "1C19FDDB27BB3399D9B45973EFEAFCF31", "amdppm.pdb")
AMDPPM_SYS = os.path.join(SHARED, "symstore", "amdppm.sys", "c9c030003b000", "amdppm.sys")
ARM64 = os.path.join(SHARED, "msvc", "ARM64")
ARM64_IMAGES = ("xcpt4.exe", "nested_collided.exe", "xframe_eh_dll.dll", "xframe_eh_exe.exe")
KERNEL_19041_ISF = os.path.join(ROOT, "tests", "data", "symbols", "windows", "ntkrnlmp.pdb",
                                "5278AFF86C341677D7D7835C85B7B844-1.json.xz")
LLVM_PDBUTIL = shutil.which("llvm-pdbutil")
LLVM_SYMBOLIZER = shutil.which("llvm-symbolizer")
LLVM_UNDNAME = shutil.which("llvm-undname")

needs_shared = pytest.mark.skipif(not os.path.isfile(AMDPPM_PDB), reason="../shared (the real symbol store) is absent")
needs_arm64 = pytest.mark.skipif(not os.path.isdir(ARM64), reason="../shared/msvc (the MSVC-built PDBs) is absent")
needs_pdbutil = pytest.mark.skipif(LLVM_PDBUTIL is None, reason="llvm-pdbutil is not installed (apt-get install llvm)")
needs_symbolizer = pytest.mark.skipif(LLVM_SYMBOLIZER is None,
                                      reason="llvm-symbolizer is not installed (apt-get install llvm)")


# ---- what LLVM says ----

def pdbutil(path, *arguments):
    return subprocess.run([LLVM_PDBUTIL, "dump", *arguments, path], capture_output=True, text=True,
                          check=True).stdout


def section_addresses(path):
    """The sections' virtual addresses, in order (llvm-pdbutil dump -section-headers)."""
    return [int(found, 16) for found in re.findall(r"^\s+([0-9A-F]+) virtual address$",
                                                    pdbutil(path, "-section-headers"), re.M)]


def llvm_procedures(path):
    """(name, RVA, code size) of every S_GPROC32 / S_LPROC32 of the module streams (llvm-pdbutil)."""
    sections = section_addresses(path)
    found = re.findall(r"S_[GL]PROC32(?:_ID)? \[size = \d+\] `([^`]*)`\n\s+parent = \d+, end = \d+, "
                       r"addr = (\d+):(\d+), code size = (\d+)", pdbutil(path, "-symbols"))
    return [(name, sections[int(segment) - 1] + int(offset), int(size)) for name, segment, offset, size in found]


def llvm_data(path):
    """(name, RVA, type) of every S_GDATA32 / S_LDATA32, globals and module streams (llvm-pdbutil)."""
    sections = section_addresses(path)
    found = re.findall(r"S_[GL]DATA32 \[size = \d+\] `([^`]*)`\n\s+type = (0x[0-9A-F]+) [^\n]*addr = (\d+):(\d+)",
                       pdbutil(path, "-globals", "-symbols"))
    return {(name, sections[int(segment) - 1] + int(offset), int(type_index, 16))
            for name, type_index, segment, offset in found}


def llvm_publics(path):
    """RVA -> names of the S_PUB32 records there (llvm-pdbutil dump -publics)."""
    sections = section_addresses(path)
    publics = defaultdict(set)
    for name, segment, offset in re.findall(r"S_PUB32 \[size = \d+\] `([^`]*)`\n\s+flags = [^,]+, addr = (\d+):(\d+)",
                                            pdbutil(path, "-publics")):
        if 1 <= int(segment) <= len(sections):
            publics[sections[int(segment) - 1] + int(offset)].add(name)
    return publics


def symbolize(image, rvas, functions):
    """llvm-symbolizer's (function, file, line) for each RVA of ``image`` (its PDB beside it), inlined
    frames left out, names as ``functions`` (``short``: the procedure's name; ``linkage``: the
    public's, not demangled)."""
    result = subprocess.run([LLVM_SYMBOLIZER, f"--obj={os.path.basename(image)}", "--relative-address", "--no-inlines",
                             "--no-demangle", f"--functions={functions}", "--output-style=JSON"],
                            input="\n".join(hex(rva) for rva in rvas), capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(image))  # where it looks for the PDB the image names
    frames = [json.loads(line)["Symbol"][0] for line in result.stdout.splitlines()]
    return [(frame["FunctionName"], frame["FileName"], frame["Line"]) for frame in frames]


def named(location):
    return (location.name, location.file, location.line) if location else ("", "", None)


# ---- the test driver (clang + lld-link, committed) ----

@pytest.fixture(scope="module")
def driver():
    pdb = PdbFile.open(DRIVER_PDB)
    yield pdb
    pdb.close()


def test_the_driver_functions_their_lengths_and_lines(driver):
    # From llvm-pdbutil dump -symbols lockdrv.pdb (addr 0001:0000 code size 137, ...; .text at 0x1000) and
    # llvm-symbolizer --obj=lockdrv.sys --relative-address 0x1000 0x1010 0x1080 0x1100.
    entry = driver.locate(0x1000)
    assert (entry.name, entry.start, entry.offset, entry.size, entry.kind) == ("DriverEntry", 0x1000, 0, 137, PROCEDURE)
    assert (entry.file, entry.line) == ("C:\\src\\lockdrv\\lockdrv.c", 30)
    assert named(driver.locate(0x1010)) == ("DriverEntry", "C:\\src\\lockdrv\\lockdrv.c", 33)
    assert named(driver.locate(0x1080)) == ("DriverEntry", "C:\\src\\lockdrv\\lockdrv.c", 43)
    static = driver.locate(0x1090 + 10)  # S_LPROC32 LdValidate, 0001:0144, 67 bytes: a static function
    assert (static.name, static.start, static.offset, static.size) == ("LdValidate", 0x1090, 10, 67)
    work = driver.locate(0x1100)  # S_GPROC32 LdLockUserBuffer, 0001:0224, 224 bytes, in lockwork.c
    assert (work.name, work.start, work.offset, work.size) == ("LdLockUserBuffer", 0x10E0, 0x20, 224)
    assert work.file == "C:\\src\\lockdrv\\lockwork.c"
    assert driver.locate(0x11C0).name == "LdUnlock" and driver.locate(0x11C0 + 40).size == 41


def test_the_driver_globals_and_statics_with_their_sizes(driver):
    # From llvm-pdbutil dump -globals -symbols -types lockdrv.pdb: g_Generation 0003:0000 (long),
    # s_OpenCount 0003:0008, g_StateLock 0003:0016 (_LD_STATE, sizeof 32), s_Scratch 0003:0048 (LF_ARRAY
    # size 64), LdUnlock::s_Unlocks 0003:0112 (long); .data at 0x3000.
    expected = {0x3000: ("g_Generation", 4), 0x3008: ("s_OpenCount", 4), 0x3010: ("g_StateLock", 32),
                0x3030: ("s_Scratch", 64), 0x3070: ("LdUnlock::s_Unlocks", 4)}
    for start, (name, size) in expected.items():
        for inside in (0, size - 1):
            found = driver.locate(start + inside)
            assert (found.name, found.start, found.offset, found.size, found.kind) == (name, start, inside, size, DATA)
            assert driver.locate_data(start + inside) == found
    lock = driver.locate(0x3020)  # inside the lock: its Flags
    assert (lock.name, lock.offset) == ("g_StateLock", 0x10)
    between = driver.locate(0x3004)  # after g_Generation's 4 bytes, before s_OpenCount: the nearest public
    assert (between.name, between.offset, between.kind, between.size) == ("g_Generation", 4, PUBLIC, None)
    assert driver.locate_data(0x3004) is None


def test_what_no_symbol_names(driver):
    assert driver.locate(0) is None  # the image headers: no section
    assert driver.locate(0x5000) is None  # past the last section
    assert driver.locate_data(0x1000) is None  # code is not data


@needs_symbolizer
def test_every_code_byte_of_the_driver_as_llvm_symbolizer_names_it(driver):
    text = range(0x1000, 0x1000 + 0x1E9)  # .text (llvm-pdbutil dump -section-headers: 1E9 at 1000)
    procedures, publics = symbolize(DRIVER_SYS, text, "short"), symbolize(DRIVER_SYS, text, "linkage")
    for rva, (function, file, line), (public, _, _) in zip(text, procedures, publics):
        # Between functions (alignment padding) no procedure holds the address: the nearest public names it.
        assert named(driver.locate(rva)) == (function or public, file, line or None), hex(rva)


@needs_pdbutil
def test_every_procedure_and_variable_of_the_driver_as_llvm_pdbutil_lists_them(driver):
    procedures = llvm_procedures(DRIVER_PDB)
    assert len(procedures) == 4
    for name, start, size in procedures:
        for rva in (start, start + size - 1):
            found = driver.locate(rva)
            assert (found.name, found.start, found.size, found.kind) == (name, start, size, PROCEDURE)
    variables = llvm_data(DRIVER_PDB)
    assert {name for name, _, _ in variables} == {"g_Generation", "s_OpenCount", "g_StateLock", "s_Scratch",
                                                  "LdUnlock::s_Unlocks"}
    for name, start, _ in variables:
        found = driver.locate_data(start)
        assert (found.name, found.start) == (name, start)


@pytest.mark.skipif(shutil.which("clang") is None or shutil.which("lld-link") is None,
                    reason="clang and lld-link are not installed: the committed test driver is used as it is")
def test_the_committed_test_driver_is_what_its_build_script_builds():
    result = subprocess.run([sys.executable, os.path.join(DRIVER_DIR, "build.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- damaged module streams, line tables and files ----

def _stream_offset(raw, stream, position):
    """The file offset of byte ``position`` of ``stream`` (through the stream directory)."""
    msf = fmt._Msf(io.BytesIO(raw), "lockdrv.pdb")
    blocks = msf._block_lists[stream]
    return blocks[position // msf.block_size] * msf.block_size + position % msf.block_size


def _module_streams(raw):
    """{module name: its stream number}, from the DBI's module info (offsets as the DBI docs give them)."""
    msf = fmt._Msf(io.BytesIO(raw), "lockdrv.pdb")
    dbi = msf.stream(fmt.STREAM_DBI)
    size = struct.unpack_from("<i", dbi, 24)[0]  # ModInfoSize
    streams, position = {}, 64
    while position < 64 + size:
        stream = struct.unpack_from("<H", dbi, position + 34)[0]
        end = dbi.index(b"\x00", position + 64)
        name = dbi[position + 64:end].decode()
        end = dbi.index(b"\x00", end + 1)
        streams[name] = stream
        position = (end + 1 + 3) & ~3
    return streams


def _damaged(tmp_path, patch):
    raw = bytearray(open(DRIVER_PDB, "rb").read())
    patch(raw)
    path = tmp_path / "lockdrv.pdb"
    path.write_bytes(bytes(raw))
    return PdbFile.open(str(path))


def _refused(pdb, rva):
    with pytest.raises(SymbolFileError) as caught:
        pdb.locate(rva)
    message = str(caught.value)
    assert message.startswith("lockdrv.pdb: ") and "\n" not in message
    return message


def test_a_damaged_module_stream_is_one_line(tmp_path):
    raw = open(DRIVER_PDB, "rb").read()
    stream = _module_streams(raw)["C:\\src\\lockdrv\\lockdrv.obj"]

    def signature(data):
        data[_stream_offset(raw, stream, 0)] = 2

    assert "not C13" in _refused(_damaged(tmp_path, signature), 0x1000)

    def record_length(data):  # the first record after the signature claims to run far past the symbols
        offset = _stream_offset(raw, stream, 4)
        data[offset:offset + 2] = struct.pack("<H", 0xFFF0)

    assert "runs past its end" in _refused(_damaged(tmp_path, record_length), 0x1000)


def test_a_damaged_line_table_is_one_line(tmp_path):
    raw = open(DRIVER_PDB, "rb").read()
    stream = _module_streams(raw)["C:\\src\\lockdrv\\lockwork.obj"]
    data = fmt._Msf(io.BytesIO(raw), "lockdrv.pdb").stream(stream)
    lines = data.index(struct.pack("<I", fmt.DEBUG_S_LINES))  # the first DEBUG_S_LINES subsection

    def block_size(patched):
        offset = _stream_offset(raw, stream, lines + 8 + 12 + 8)  # subsection header, lines header, block size
        patched[offset:offset + 4] = struct.pack("<I", 0x7FFFFFFF)

    assert "line block" in _refused(_damaged(tmp_path, block_size), 0x10E0)

    def subsection_length(patched):
        offset = _stream_offset(raw, stream, lines + 4)
        patched[offset:offset + 4] = struct.pack("<I", 0x7FFFFFFF)

    assert "runs past its end" in _refused(_damaged(tmp_path, subsection_length), 0x10E0)


def test_a_pdb_that_changed_after_it_was_opened_is_not_read_again(tmp_path):
    path = tmp_path / "lockdrv.pdb"
    path.write_bytes(open(DRIVER_PDB, "rb").read())
    pdb = PdbFile.open(str(path))
    path.write_bytes(open(DRIVER_PDB, "rb").read() + b"\x00" * 4096)
    assert "changed after it was opened" in _refused(pdb, 0x1000)


def test_opening_reads_no_module_stream(tmp_path, monkeypatch):
    """Layouts-only use costs nothing more: the module streams are read at the first locate."""
    read = []
    original = fmt._Msf.stream
    monkeypatch.setattr(fmt._Msf, "stream", lambda self, index: read.append(index) or original(self, index))
    pdb = PdbFile.open(DRIVER_PDB)
    pdb.type_info("_LD_STATE", ["Lock", "Owner"])
    opened = set(read)
    modules = set(_module_streams(open(DRIVER_PDB, "rb").read()).values())
    assert not opened & modules
    pdb.locate(0x1000)
    assert set(read) - opened


# ---- Microsoft's public amdppm.pdb (publics and types, no module streams) ----

@pytest.fixture(scope="module")
def amdppm():
    pdb = PdbFile.open(AMDPPM_PDB)
    yield pdb
    pdb.close()


@needs_shared
def test_the_p2_of_the_real_small_dump(amdppm):
    # llvm-symbolizer --obj=amdppm.sys 0x1c000334c: WriteIoMemRawEx; llvm-pdbutil dump -publics:
    # WriteIoMemRawEx at 0001:8924 (.text at 0x1000: RVA 0x32DC), so amdppm+0x334c is +0x70.
    found = amdppm.locate(0x334C)
    assert (found.name, found.start, found.offset, found.size, found.kind) == ("WriteIoMemRawEx", 0x32DC, 0x70, None,
                                                                             PUBLIC)
    assert amdppm.locate(0x1000) is None  # llvm-symbolizer names nothing there: the first public is at 0x1008


@needs_shared
def test_a_forward_declared_enum_member_has_its_definitions_size(amdppm):
    # llvm-pdbutil dump -types amdppm.pdb: _WDF_REQUEST_PARAMETERS.Type and _WDF_REQUEST_COMPLETION_PARAMS.Type
    # are of type 0x177B, LF_ENUM `_WDF_REQUEST_TYPE` "forward ref (-> 0x18D4)"; 0x18D4's underlying type is
    # 0x0074 (int): 4 bytes.
    for structure in ("_WDF_REQUEST_PARAMETERS", "_WDF_REQUEST_COMPLETION_PARAMS"):
        field = amdppm.type_info(structure, ["Type"]).fields["Type"]
        assert (field.offset, field.size) == (4, 4), structure


# Sizes of the primitive types llvm-pdbutil names as an enum's underlying type (the C types of Windows).
UNDERLYING_SIZES = {"char": 1, "unsigned char": 1, "signed char": 1, "short": 2, "unsigned short": 2, "int": 4,
                    "unsigned": 4, "long": 4, "unsigned long": 4, "__int64": 8, "unsigned __int64": 8, "bool": 1}


@needs_shared
@needs_pdbutil
def test_every_enum_member_of_amdppm_has_its_underlying_types_size(amdppm):
    dump = pdbutil(AMDPPM_PDB, "-types")
    records = re.split(r"\n(?=\s+0x[0-9A-F]+ \| )", dump)
    underlying, forwards, members = {}, {}, []
    for record in records:
        head = re.match(r"\s+0x([0-9A-F]+) \| (LF_\w+)", record)
        if not head:
            continue
        index = int(head.group(1), 16)
        if head.group(2) == "LF_ENUM":
            forward = re.search(r"forward ref \(-> 0x([0-9A-F]+)\)", record)
            if forward:
                forwards[index] = int(forward.group(1), 16)
            else:
                underlying[index] = re.search(r"underlying type: 0x[0-9A-F]+ \(([^)]+)\)", record).group(1)
        elif head.group(2) in ("LF_STRUCTURE", "LF_UNION") and "forward ref" not in record:
            name = re.search(r"`([^`]+)`", record).group(1)
            members.append((name, int(re.search(r"field list: 0x([0-9A-F]+)", record).group(1), 16)))
    field_lists = {int(index, 16): body for index, body in re.findall(r"\s+0x([0-9A-F]+) \| LF_FIELDLIST[^\n]*\n"
                                                                     r"((?:\s+- [^\n]*\n?)*)", dump)}
    checked = 0
    for name, field_list in members:
        if name.startswith("<"):
            continue  # <unnamed-tag>, <anonymous-tag>: no name to ask for
        for member, type_index in re.findall(r"LF_MEMBER \[name = `(\w+)`, Type = 0x([0-9A-F]+)[,\s]",
                                             field_lists.get(field_list, "")):
            enum = forwards.get(int(type_index, 16), int(type_index, 16))
            if enum not in underlying:
                continue
            field = amdppm.type_info(name, [member]).fields[member]
            assert field.size == UNDERLYING_SIZES[underlying[enum]], f"{name}.{member}"
            checked += 1
    assert checked >= 10


@needs_shared
@needs_pdbutil
def test_every_public_of_amdppm_as_llvm_pdbutil_lists_it(amdppm):
    publics = llvm_publics(AMDPPM_PDB)
    assert len(publics) > 500
    for rva, names in publics.items():
        found = amdppm.locate(rva)
        assert found.start == rva and found.offset == 0, hex(rva)
        if found.kind == PUBLIC:
            assert found.name in {undecorate(name) for name in names}, hex(rva)


@needs_shared
@needs_pdbutil
@needs_symbolizer
def test_amdppm_addresses_as_llvm_symbolizer_names_them(amdppm, tmp_path):
    """Every 23rd byte of every section: the nearest public in the section, as LLVM finds it (of
    several publics at one address, either: the linker folded identical functions into one). Before a
    section's first public LLVM takes the last one of the section before; leakhunt names nothing."""
    for path in (AMDPPM_SYS, AMDPPM_PDB):
        shutil.copyfile(path, tmp_path / os.path.basename(path))
    publics = llvm_publics(AMDPPM_PDB)
    sections = [(int(size, 16), int(address, 16)) for size, address in re.findall(
        r"^\s+([0-9A-F]+) virtual size\n\s+([0-9A-F]+) virtual address$", pdbutil(AMDPPM_PDB, "-section-headers"), re.M)]
    rvas = [rva for size, address in sections for rva in range(address, address + size, 23)]
    image = str(tmp_path / "amdppm.sys")
    where = defaultdict(set)  # public name -> its RVAs
    for rva, names in publics.items():
        for name in names:
            where[name].add(rva)

    def section_of(rva):
        return next(address for size, address in sections if address <= rva < address + size)

    checked = 0
    for rva, short, linkage in zip(rvas, symbolize(image, rvas, "short"), symbolize(image, rvas, "linkage")):
        found = amdppm.locate(rva)
        if short[0]:  # the one procedure the public PDB kept (a static inline of ntstrsafe.h)
            assert (found.name, found.kind) == (short[0], PROCEDURE), hex(rva)
        elif not linkage[0] or all(section_of(start) != section_of(rva) for start in where[linkage[0]]):
            assert found is None, hex(rva)
            continue
        else:
            aliases = {undecorate(name) for name in publics[found.start]}
            assert found.name in aliases and undecorate(linkage[0]) in aliases, hex(rva)
        checked += 1
    assert checked > 2500


# ---- MSVC-built ARM64 programs with private PDBs (procedures, lines) ----

@needs_arm64
def test_msvc_procedures_and_lines_literals():
    # llvm-symbolizer --obj=xcpt4.exe --relative-address 0x17F8 0x184F 0x5A1C 0x1000 0x4300 0x538C 0x9000
    pdb = PdbFile.open(os.path.join(ARM64, "xcpt4.pdb"))
    source = "C:\\Users\\gustavo\\source\\windows_seh_tests\\src\\xcpt4\\"
    assert named(pdb.locate(0x17F8)) == ("ExTests", source + "xcpt4ex.c", 455)
    assert named(pdb.locate(0x184F)) == ("ExTests", source + "xcpt4ex.c", 481)
    assert named(pdb.locate(0x5A1C)) == ("ExTests$filt$0", source + "xcpt4ex.c", 470)
    assert named(pdb.locate(0x4300)) == ("main", source + "xcpt4u.c", 2397)
    assert pdb.locate(0x1000).name == "__security_check_cookie"
    assert (pdb.locate(0x538C).name, pdb.locate(0x538C).kind) == ("memcpy", PUBLIC)  # an import thunk
    assert named(pdb.locate(0x9000)) == ("__rtc_tzz", "", None)
    # llvm-pdbutil dump -symbols xcpt4.pdb: S_GPROC32 `ExTests`, addr = 0001:2040, code size = 640
    found = pdb.locate(0x1000 + 2040 + 100)
    assert (found.start, found.offset, found.size, found.kind) == (0x1000 + 2040, 100, 640, PROCEDURE)


@needs_arm64
@needs_pdbutil
@pytest.mark.parametrize("image", ARM64_IMAGES)
def test_every_msvc_procedure_as_llvm_pdbutil_lists_it(image):
    path = os.path.join(ARM64, image.rsplit(".", 1)[0] + ".pdb")
    pdb = PdbFile.open(path)
    procedures = llvm_procedures(path)
    starts = defaultdict(set)
    for name, start, size in procedures:
        starts[start].add(name)
    for name, start, size in procedures:
        for rva in (start, start + size // 2, start + size - 1):
            found = pdb.locate(rva)
            assert found.kind == PROCEDURE and found.start == start, (name, hex(rva))
            assert found.name == name or found.name in starts[start], (name, hex(rva))  # folded: one of them
            assert found.size == size or len(starts[start]) > 1, (name, hex(rva))


@needs_arm64
@needs_pdbutil
@needs_symbolizer
@pytest.mark.parametrize("image", ARM64_IMAGES)
def test_every_msvc_instruction_as_llvm_symbolizer_names_it(image):
    """Every instruction of .text: the function (a procedure, else the nearest public), the file and the
    line. Where the linker folded identical code, several names and line tables start at one address:
    any of them will do. Compiler-made code (line 0xF00F00 or 0xFEEFEE) has no line here."""
    pdb_path = os.path.join(ARM64, image.rsplit(".", 1)[0] + ".pdb")
    pdb = PdbFile.open(pdb_path)
    aliases = llvm_publics(pdb_path)
    folded = defaultdict(set)
    for name, start, _ in llvm_procedures(pdb_path):
        folded[start].add(name)
    text = re.search(r"^\s+([0-9A-F]+) virtual size\n\s+([0-9A-F]+) virtual address$",
                     pdbutil(pdb_path, "-section-headers"), re.M)
    size, address = int(text.group(1), 16), int(text.group(2), 16)
    rvas = range(address, address + size, 4)
    image_path = os.path.join(ARM64, image)
    for rva, short, linkage in zip(rvas, symbolize(image_path, rvas, "short"), symbolize(image_path, rvas, "linkage")):
        found = pdb.locate(rva)
        function = short[0] or undecorate(linkage[0])
        names = {function} | folded.get(found.start, set()) | {undecorate(name) for name in aliases.get(found.start, ())}
        assert found.name in names, hex(rva)
        if len(folded.get(found.start, ())) > 1:
            continue  # folded code: its line tables overlap
        line = None if short[2] in HIDDEN_LINES or not short[2] else short[2]
        assert (found.file, found.line) == ((short[1], line) if line else ("", None)), hex(rva)


# ---- names as WinDbg shows them ----

# From llvm-undname (the qualified name of each, without return type, calling convention and parameters).
UNDECORATED = {
    "?FxStubInitTypes@@YAJXZ": "FxStubInitTypes",
    "?__KMDF_TYPE_INIT_END@@3PEAXEA": "__KMDF_TYPE_INIT_END",
    "??0Foo@Bar@@QEAA@XZ": "Bar::Foo::Foo",
    "??1Foo@@UEAA@XZ": "Foo::~Foo",
    "?Method@?A0x12345678@Ns@@YAXXZ": "Ns::`anonymous namespace'::Method",
    "??_7Foo@@6B@": "Foo::`vftable'",
    "??4Foo@@QEAAAEAV0@AEBV0@@Z": "Foo::operator=",
    "??_C@_07NFANNNEC@UNKNOWN@": "`string'",  # llvm-undname: "UNKNOWN"...; WinDbg names a literal `string'
    "??_GFoo@@UEAAPEAXI@Z": "Foo::`scalar deleting destructor'",
    "??2@YAPEAX_K@Z": "operator new",
}


@pytest.mark.parametrize("decorated, expected", list(UNDECORATED.items()))
def test_cpp_names_are_undecorated(decorated, expected):
    assert undecorate(decorated) == expected


def test_x86_c_names_are_undecorated_and_others_left_alone():
    assert undecorate("_KeBugCheckEx@20", x86=True) == "KeBugCheckEx"
    assert undecorate("@KfAcquireSpinLock@4", x86=True) == "KfAcquireSpinLock"
    assert undecorate("_KiBugCheckDriver", x86=True) == "KiBugCheckDriver"
    assert undecorate("Vector@@16", x86=True) == "Vector"
    assert undecorate("_KiBugCheckDriver") == "_KiBugCheckDriver"  # x64 and ARM64 C names are not decorated
    for left in ("?f@?$vector@H@std@@QEAAXXZ", "?x@?1??f@@YAXXZ@4HA", "??Bfoo@@QEAAHXZ", "?broken"):
        assert undecorate(left) == left  # templates, local statics, conversions, malformed: as they are


@needs_shared
@needs_pdbutil
@pytest.mark.skipif(LLVM_UNDNAME is None, reason="llvm-undname is not installed (apt-get install llvm)")
def test_the_cpp_publics_of_amdppm_as_llvm_undname_reads_them():
    names = sorted({name for names in llvm_publics(AMDPPM_PDB).values() for name in names
                    if name.startswith("?") and not name.startswith("??_C@")})
    output = subprocess.run([LLVM_UNDNAME, *names], capture_output=True, text=True, check=True).stdout
    pairs = [block.split("\n", 1) for block in output.strip().split("\n\n")]
    undecorated = {decorated: text for decorated, text in pairs}
    checked = 0
    for name in names:
        ours = undecorate(name)
        if ours == name:
            continue  # left as it is (templates and the like)
        assert re.search(r"(^|[\s*&])" + re.escape(ours) + r"(\(|$)", undecorated[name]), (name, undecorated[name])
        checked += 1
    assert checked >= 3


# ---- ISF files: the nearest symbol ----

def test_an_isf_names_an_address_by_its_nearest_symbol():
    isf = IsfFile.open(KERNEL_19041_ISF)
    with lzma.open(KERNEL_19041_ISF) as handle:  # the table itself, read here without the reader
        symbols = sorted((entry["address"], name) for name, entry in json.load(handle)["symbols"].items())
    # The real x64 small dump's thread start, nt+0x225870 (../shared/samples/triage_x64.dmp, build 19041).
    found = isf.locate(0x225870)
    assert (found.name, found.offset, found.size, found.kind, found.line) == ("ExpWorkerThread", 0, None,
                                                                           NEAREST_SYMBOL, None)
    for address, name in symbols[::997]:
        for rva in (address, address + 3):
            nearest = max(entry for entry in symbols if entry[0] <= rva)
            found = isf.locate(rva)
            assert found.start == nearest[0] and found.offset == rva - nearest[0]
            assert found.name == undecorate(nearest[1]) or found.name in {undecorate(n) for a, n in symbols
                                                                          if a == nearest[0]}
    assert isf.locate(symbols[0][0] - 1) is None
