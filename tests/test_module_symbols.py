"""Names of addresses in loaded modules: each module's symbol file found by identity and checked.

The test driver (tests/data/testdriver/lockdrv.sys and .pdb, built with clang and lld) stands for a
developer's driver: loaded in memory (a kernel dump written by mocks/dumpwriter.py, or a reader over
its mapped image) or only named by its TimeDateStamp and SizeOfImage (a small dump). The real symbol
store of ../shared/symstore gives amdppm.sys and its PDB, and Wdf01000.sys without its PDB.
"""
import http.server
import os
import shutil
import struct
import threading

import pytest

from mocks.dumpwriter import write_dump
from mocks.memory import add_pages
from mocks.scenarios import case_0x76
from pykd_ext.session import is_module_symbol_file, open_session
from pykd_ext.symbols import modulesyms
from pykd_ext.symbols.base import DATA, PROCEDURE, PUBLIC, PdbIdentity
from pykd_ext.symbols.modulesyms import ModuleSymbols
from pykd_ext.targets.base import SymbolicAddress
from pykd_ext.symbols.pdb import PdbFile
from pykd_ext.symbols.pe import image_store_key
from pykd_ext.targets.base import MemoryReadError, Module
from pykd_ext.sources import open_dump

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER_DIR = os.path.join(ROOT, "tests", "data", "testdriver")
DRIVER_PDB = os.path.join(DRIVER_DIR, "lockdrv.pdb")
DRIVER_SYS = os.path.join(DRIVER_DIR, "lockdrv.sys")
KERNEL_PDB = os.path.join(ROOT, "tests", "data", "testkernel", "ntkrnlmp.pdb")
# llvm-readobj --file-headers lockdrv.sys: TimeDateStamp 0xBC411168, SizeOfImage 20480; llvm-pdbutil dump
# -summary lockdrv.pdb gives its GUID and age (the key the store files it under).
DRIVER_TIMESTAMP, DRIVER_SIZE = 0xBC411168, 0x5000
SHARED = os.path.join(ROOT, "..", "shared")
SYMSTORE = os.path.join(SHARED, "symstore")
SYMBOLS = os.path.join(SHARED, "symbols")
SMALL_DUMP = os.path.join(SHARED, "samples", "triage_x64.dmp")
needs_shared = pytest.mark.skipif(not os.path.isdir(SYMSTORE), reason="../shared (the real symbol store) is absent")
BASE = 0xFFFFF80470000000


@pytest.fixture(autouse=True)
def fresh_process_cache():
    """Each test starts as a new process would: nothing found yet."""
    modulesyms._SYMBOL_FILES.clear()
    modulesyms._IMAGE_FILES.clear()
    yield
    modulesyms._SYMBOL_FILES.clear()
    modulesyms._IMAGE_FILES.clear()


def driver_identity():
    pdb = PdbFile.open(DRIVER_PDB)
    return PdbIdentity("lockdrv.pdb", pdb.identity.guid, pdb.identity.age)


def loaded_image(path):
    """The image as the loader maps it: headers, then each section's raw data at its VirtualAddress
    (IMAGE_SECTION_HEADER fields read here with struct, not with leakhunt's PE reader)."""
    raw = open(path, "rb").read()
    e_lfanew = struct.unpack_from("<I", raw, 0x3C)[0]
    sections, optional_size = struct.unpack_from("<H", raw, e_lfanew + 6)[0], struct.unpack_from("<H", raw, e_lfanew + 20)[0]
    size_of_image, size_of_headers = struct.unpack_from("<II", raw, e_lfanew + 24 + 56)
    image = bytearray(size_of_image)
    image[:size_of_headers] = raw[:size_of_headers]
    table = e_lfanew + 24 + optional_size
    for number in range(sections):
        _, address, raw_size, raw_pointer = struct.unpack_from("<IIII", raw, table + 40 * number + 8)
        image[address:address + raw_size] = raw[raw_pointer:raw_pointer + raw_size]
    return bytes(image)


def memory_reader(image, base=BASE):
    def read(address, size):
        offset = address - base
        if offset < 0 or offset + size > len(image):
            raise MemoryReadError(address, size)
        return image[offset:offset + size]
    return read


def driver_module(name="lockdrv", timestamp=DRIVER_TIMESTAMP, size=DRIVER_SIZE, base=BASE):
    return Module(name, "lockdrv.sys", base, size, timestamp)


def store_file(store, source, key, name=None):
    """Put ``source`` into the symbol store ``store`` as ``name/key/name``."""
    name = name or os.path.basename(source)
    folder = os.path.join(str(store), name, key)
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(source, os.path.join(folder, name))
    return os.path.join(folder, name)


# ---- what a name looks like ----

def test_an_address_is_written_as_windbg_writes_it():
    assert SymbolicAddress(0xFFFFF8048B58334C, "amdppm", "WriteIoMemRawEx", 0x70, kind=PUBLIC).text == \
        "amdppm!WriteIoMemRawEx+0x70"
    assert SymbolicAddress(0x1000, "nt", "ExpWorkerThread", 0).text == "nt!ExpWorkerThread"
    located = SymbolicAddress(0x1100, "leakyflt", "LfLockUserBuffer", 0x55, "c:\\src\\lock.c", 118, PROCEDURE)
    assert located.text == "leakyflt!LfLockUserBuffer+0x55 [c:\\src\\lock.c @ 118]"
    assert located.as_json() == {"symbol": located.text, "module": "leakyflt", "function": "LfLockUserBuffer",
                                 "offset": "0x55", "file": "c:\\src\\lock.c", "line": 118}
    assert SymbolicAddress(0xFFFFF80313101B00, "leakyflt", offset=0x1B00).text == "leakyflt+0x1b00"
    assert SymbolicAddress(0xFFFFF80313101B00).text == "0xfffff80313101b00"
    assert SymbolicAddress(0x10, "x").as_json() == {"symbol": "x+0x0", "module": "x", "offset": "0x0"}


def test_the_symbol_store_key_of_an_image():
    # The SSQP key conventions (dotnet/symstore docs/specs/SSQP_Key_Conventions.md, PE-timestamp-filesize):
    # TimeDateStamp as eight upper-case hex digits, SizeOfImage in as few lower-case digits as needed; their
    # example: Timestamp 0x542d574e, SizeOfImage 0xc2000 -> 542D574Ec2000.
    assert image_store_key(0x542D574E, 0xC2000) == "542D574Ec2000"
    assert image_store_key(0xC9C03000, 0x3B000) == "C9C030003b000"
    assert image_store_key(0x0000BEEF, 0x1000) == "0000BEEF1000"


# ---- the identity from the image in memory ----

def test_a_driver_loaded_in_memory_is_named_from_its_own_pdb(tmp_path):
    build_output = tmp_path / "build"  # a developer's output folder: the PDB beside nothing else
    build_output.mkdir()
    shutil.copyfile(DRIVER_PDB, build_output / "lockdrv.pdb")
    symbols = ModuleSymbols(str(build_output), read_memory=memory_reader(loaded_image(DRIVER_SYS)))
    module = driver_module()
    # llvm-symbolizer --obj=lockdrv.sys --relative-address 0x1000 0x1100: DriverEntry lockdrv.c:30,
    # LdLockUserBuffer lockwork.c:20 (its start is 0x10E0: llvm-pdbutil dump -symbols).
    assert symbols.describe(module, BASE + 0x1000).text == "lockdrv!DriverEntry [C:\\src\\lockdrv\\lockdrv.c @ 30]"
    work = symbols.describe(module, BASE + 0x1100)
    assert work.text == "lockdrv!LdLockUserBuffer+0x20 [C:\\src\\lockdrv\\lockwork.c @ 20]"
    assert (work.module, work.function, work.offset, work.line, work.kind) == ("lockdrv", "LdLockUserBuffer", 0x20, 20,
                                                                               PROCEDURE)
    lock = symbols.describe(module, BASE + 0x3010)  # a driver global (llvm-pdbutil: g_StateLock 0003:0016)
    assert (lock.text, lock.kind) == ("lockdrv!g_StateLock", DATA)
    assert symbols.describe(module, BASE + 0x3020).text == "lockdrv!g_StateLock+0x10"
    assert symbols.describe(module, BASE).text == "lockdrv+0x0"  # the headers: no symbol
    notes = symbols.notes()
    assert len(notes) == 1 and "lockdrv: symbols from pdb lockdrv.pdb" in notes[0]
    assert "of the image in memory" in notes[0] and str(build_output / "lockdrv.pdb") in notes[0]


def test_a_pdb_of_another_build_at_the_right_place_is_refused_with_one_note(tmp_path):
    identity = driver_identity()
    impostor = store_file(tmp_path / "store", KERNEL_PDB, identity.store_key, "lockdrv.pdb")  # right path, other PDB
    plain = tmp_path / "build"
    plain.mkdir()
    shutil.copyfile(KERNEL_PDB, plain / "lockdrv.pdb")  # a build folder holding another build's PDB
    symbols = ModuleSymbols(f"{tmp_path / 'store'};{plain}", read_memory=memory_reader(loaded_image(DRIVER_SYS)))
    module = driver_module()
    for offset in (0x1000, 0x1100, 0x3010):
        assert symbols.describe(module, BASE + offset).text == f"lockdrv+{offset:#x}"
    notes = symbols.notes()
    assert len(notes) == 1
    assert impostor in notes[0] and str(plain / "lockdrv.pdb") in notes[0] and "of another build" in notes[0]
    assert f"no symbol file for lockdrv.pdb (GUID {identity.guid}, age {identity.age})" in notes[0]


def test_the_right_pdb_after_a_wrong_one_is_used(tmp_path):
    identity = driver_identity()
    store_file(tmp_path / "first", KERNEL_PDB, identity.store_key, "lockdrv.pdb")
    store_file(tmp_path / "second", DRIVER_PDB, identity.store_key)
    symbols = ModuleSymbols(f"{tmp_path / 'first'};{tmp_path / 'second'}",
                            read_memory=memory_reader(loaded_image(DRIVER_SYS)))
    assert symbols.describe(driver_module(), BASE + 0x1000).function == "DriverEntry"
    assert str(tmp_path / "second") in symbols.notes()[0]


def test_a_driver_pdb_given_directly_is_used_for_its_own_build_only(tmp_path):
    given = PdbFile.open(DRIVER_PDB)
    symbols = ModuleSymbols(None, [given], memory_reader(loaded_image(DRIVER_SYS)))
    assert symbols.describe(driver_module(), BASE + 0x11C0).function == "LdUnlock"
    assert "given with --symbols" in symbols.notes()[0]
    other = bytearray(loaded_image(DRIVER_SYS))  # the same driver rebuilt: another GUID in its RSDS record
    at = other.index(b"RSDS") + 4
    other[at] ^= 0xFF
    rebuilt = ModuleSymbols(None, [given], memory_reader(bytes(other)))
    assert rebuilt.describe(driver_module(), BASE + 0x11C0).text == "lockdrv+0x11c0"
    assert "was not given and no symbol path is set" in rebuilt.notes()[0]


# ---- the identity from the image file (small dumps hold no image) ----

def test_a_small_dumps_driver_is_found_by_its_image_then_its_pdb(tmp_path):
    identity = driver_identity()
    store_file(tmp_path / "store", DRIVER_SYS, "BC4111685000")  # as a symbol store files the image
    store_file(tmp_path / "store", DRIVER_PDB, identity.store_key)
    symbols = ModuleSymbols(str(tmp_path / "store"))  # no memory at all
    assert symbols.describe(driver_module(), BASE + 0x1100).function == "LdLockUserBuffer"
    note = symbols.notes()[0]
    assert "the identity of the image file" in note and os.path.join("lockdrv.sys", "BC4111685000") in note
    assert symbols.image(driver_module()).time_date_stamp == DRIVER_TIMESTAMP


@pytest.mark.parametrize("key", ["bc4111685000", "BC4111685000"])
def test_the_image_key_is_found_in_lower_and_upper_case(tmp_path, key):
    store_file(tmp_path / "store", DRIVER_SYS, key)
    store_file(tmp_path / "store", DRIVER_PDB, driver_identity().store_key)
    assert ModuleSymbols(str(tmp_path / "store")).describe(driver_module(), BASE + 0x1000).function == "DriverEntry"


def test_an_image_of_another_build_at_the_right_key_is_refused(tmp_path):
    impostor = store_file(tmp_path / "store", os.path.join(ROOT, "tests", "data", "testkernel", "ntoskrnl.exe"),
                          "BC4111685000", "lockdrv.sys")
    symbols = ModuleSymbols(str(tmp_path / "store"))
    assert symbols.describe(driver_module(), BASE + 0x1000).text == "lockdrv+0x1000"
    note = symbols.notes()[0]
    assert impostor in note and "of another build: TimeDateStamp" in note
    assert "no image file for lockdrv.sys (TimeDateStamp BC411168, SizeOfImage 0x5000)" in note


def test_what_cannot_be_looked_up_says_why():
    symbols = ModuleSymbols("")
    assert symbols.describe(driver_module(timestamp=None), BASE + 0x10).text == "lockdrv+0x10"
    assert "does not record its TimeDateStamp" in symbols.notes()[0]
    assert symbols.describe(None, 0xFFFFF80000001234).text == "0xfffff80000001234"


def test_only_the_modules_asked_for_are_looked_up_and_each_once(tmp_path, monkeypatch):
    store_file(tmp_path / "store", DRIVER_SYS, "BC4111685000")
    store_file(tmp_path / "store", DRIVER_PDB, driver_identity().store_key)
    opened = []
    original = PdbFile.open.__func__
    monkeypatch.setattr(PdbFile, "open", classmethod(lambda cls, path: opened.append(path) or original(cls, path)))
    for _ in range(3):  # three dumps of one fleet worker sharing the driver
        symbols = ModuleSymbols(str(tmp_path / "store"))
        for offset in range(0x1000, 0x1200, 0x10):
            symbols.describe(driver_module(), BASE + offset)
        assert len(symbols.notes()) == 1
    assert len(opened) == 1
    untouched = ModuleSymbols(str(tmp_path / "store"))
    assert untouched.notes() == []


# ---- downloads from a symbol server ----

class _Server:
    """A symbol server on 127.0.0.1 serving a symbol store folder, counting requests."""

    def __init__(self, root):
        self.requests = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                file = os.path.join(str(root), *self.path.split("/")[2:])
                if not os.path.isfile(file):
                    self.send_error(404)
                    return
                body = open(file, "rb").read()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/sym"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def test_the_image_and_the_pdb_are_downloaded_once(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    store_file(tmp_path / "served", DRIVER_SYS, "BC4111685000")
    store_file(tmp_path / "served", DRIVER_PDB, driver_identity().store_key)
    server = _Server(tmp_path / "served")
    try:
        path = f"srv*{tmp_path / 'cache'}*{server.url}"
        symbols = ModuleSymbols(path)
        assert symbols.describe(driver_module(), BASE + 0x1000).function == "DriverEntry"
        assert len(server.requests) == 2 and "downloaded from" in symbols.notes()[0]
        cached = sorted(os.path.relpath(os.path.join(folder, name), tmp_path / "cache")
                        for folder, _, names in os.walk(tmp_path / "cache") for name in names)
        assert cached == sorted([os.path.join("lockdrv.sys", "BC4111685000", "lockdrv.sys"),
                                 os.path.join("lockdrv.pdb", driver_identity().store_key, "lockdrv.pdb")])
        ModuleSymbols(path).describe(driver_module(), BASE + 0x1000)  # the same process: nothing more is fetched
        modulesyms._SYMBOL_FILES.clear()
        modulesyms._IMAGE_FILES.clear()
        again = ModuleSymbols(path)  # a new process: the downstream store serves it
        assert again.describe(driver_module(), BASE + 0x1000).function == "DriverEntry"
        assert len(server.requests) == 2
    finally:
        server.stop()


def test_offline_nothing_is_downloaded(tmp_path):
    symbols = ModuleSymbols(f"srv*{tmp_path / 'cache'}*http://127.0.0.1:9/sym", offline=True)
    assert symbols.describe(driver_module(), BASE + 0x1000).text == "lockdrv+0x1000"
    assert "not downloaded: offline" in symbols.notes()[0]


# ---- kernel dumps and the session ----

def test_a_kernel_dump_and_a_driver_pdb_given_with_symbols(tmp_path):
    """The driver's image mapped in a kernel dump written by mocks/dumpwriter.py: its identity is read
    there, and the PDB given with --symbols is kept for it, not offered to the kernel."""
    scenario = case_0x76("x64", "irp", noise_pages=0)
    data = scenario.data
    module = next(m for m in data.modules if m.name == "innocent")
    add_pages(data, module.base, loaded_image(DRIVER_SYS))
    dump = tmp_path / "MEMORY.DMP"
    write_dump(data, str(dump))
    target = open_dump(str(dump))
    try:
        given = PdbFile.open(DRIVER_PDB)
        assert is_module_symbol_file(given)
        session = open_session(target, symbol_files=[given])
        assert session.symbol_files == [] and session.module_symbol_files == [given]
        assert not any("lockdrv.pdb" in note for note in session.notes)
        loaded = session.module_map().by_image(module.image)
        named = session.module_symbols().describe(loaded, loaded.base + 0x1100)
        assert named.text == "innocent!LdLockUserBuffer+0x20 [C:\\src\\lockdrv\\lockwork.c @ 20]"
        assert "of the image in memory" in session.module_symbols().notes()[0]
    finally:
        target.close()


def test_the_kernels_symbol_file_is_not_a_modules():
    kernel = PdbFile.open(KERNEL_PDB)
    assert not is_module_symbol_file(kernel)  # ntkrnlmp.pdb: the kernel's, checked against the dump as before


# ---- the real symbol store ----

@needs_shared
def test_amdppm_is_found_by_its_image_in_the_real_store_and_wdf01000_has_no_pdb():
    # The real small dump's module list: amdppm.sys TimeDateStamp 0xC9C03000 SizeOfImage 0x3B000 and
    # Wdf01000.sys 0xA9A9D36E 0xD1000 (../shared/symstore/README.md); P2 is amdppm+0x334c, which
    # llvm-symbolizer --obj=amdppm.sys 0x1c000334c names WriteIoMemRawEx (a public at RVA 0x32DC).
    symbols = ModuleSymbols(f"{SYMSTORE};{SYMBOLS}", offline=True)
    amdppm = Module("amdppm", "amdppm.sys", 0xFFFFF8048B580000, 0x3B000, 0xC9C03000)
    wdf = Module("Wdf01000", "Wdf01000.sys", 0xFFFFF8048A000000, 0xD1000, 0xA9A9D36E)
    named = symbols.describe(amdppm, 0xFFFFF8048B58334C)
    assert (named.text, named.kind) == ("amdppm!WriteIoMemRawEx+0x70", PUBLIC)
    assert symbols.describe(wdf, wdf.base + 0x1234).text == "Wdf01000+0x1234"
    symbols.describe(wdf, wdf.base + 0x5678)
    amdppm_note, wdf_note = symbols.notes()
    assert "amdppm.pdb 1C19FDDB27BB3399D9B45973EFEAFCF3-1" in amdppm_note
    assert os.path.join("amdppm.sys", "c9c030003b000", "amdppm.sys") in amdppm_note
    assert "no symbol file for Wdf01000.pdb (GUID 6D6E9C327875C47856AC7DA750AB1C5E, age 1)" in wdf_note
    assert symbols.image(wdf).version().file_version == "1.31.19041.423"  # its image was found
    assert symbols.image(amdppm).exception_directory == (0x19000, 0x1854)  # llvm-readobj: ExceptionTableRVA/Size


@needs_shared
@pytest.mark.skipif(not os.path.isfile(SMALL_DUMP), reason="../shared/samples is absent")
def test_the_real_small_dump_named_with_the_real_store():
    target = open_dump(SMALL_DUMP)
    try:
        session = open_session(target, f"{SYMSTORE};{SYMBOLS}")
        modules = session.module_map()
        symbols = session.module_symbols()
        p2 = target.bugcheck().parameters[1]
        assert symbols.describe(modules.find(p2), p2).text == "amdppm!WriteIoMemRawEx+0x70"
        kernel = modules.by_image("ntoskrnl.exe")
        # The thread's start address (nt+0x225870), which the kernel's 19041 table names ExpWorkerThread.
        assert symbols.describe(kernel, kernel.base + 0x225870).text == "nt!ExpWorkerThread"
    finally:
        target.close()
