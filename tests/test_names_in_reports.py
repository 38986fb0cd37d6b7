"""Names and the unwound stack in whole reports, as a user gets them from `leakhunt analyze` and a replay.

Expected names come from LLVM's reading of the PDBs (llvm-symbolizer, quoted in comments where a literal
stands in for it) and from the real kernel's symbol table; expected frames from the real small dump's
stack and its images' unwind data as LLVM decodes it (tests/test_unwind_real_dump.py checks each return
address against LLVM's disassembly)."""
import contextlib
import io
import json
import os
import shutil
import struct
import subprocess

import pytest

from mocks.dumpwriter import write_dump
from mocks.scenarios import case_0x76
from pykd_ext.cli import main
from pykd_ext.symbols import modulesyms
from test_module_symbols import DRIVER_PDB, DRIVER_SYS, loaded_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
SMALL_DUMP = os.path.join(SHARED, "samples", "triage_x64.dmp")
SYMBOL_PATH = f"{os.path.join(SHARED, 'symstore')};{os.path.join(SHARED, 'symbols')}"
AMDPPM_SYS = os.path.join(SHARED, "symstore", "amdppm.sys", "c9c030003b000", "amdppm.sys")
AMDPPM_PDB = os.path.join(SHARED, "symstore", "amdppm.pdb", "1C19FDDB27BB3399D9B45973EFEAFCF31", "amdppm.pdb")
needs_shared = pytest.mark.skipif(not os.path.exists(SMALL_DUMP), reason="../shared (the real dump and store) is absent")
IRP_CANCEL_ROUTINE = 0x68  # _IRP.CancelRoutine on x64 (reference/windows-kernel.md §4.2)
# llvm-symbolizer --obj=tests/data/testdriver/lockdrv.sys 0x140001100: "LdLockUserBuffer" at
# C:\src\lockdrv\lockwork.c:20 (llvm-pdbutil dump -symbols lockdrv.pdb: LdLockUserBuffer starts at RVA 0x10E0).
DRIVER_ROUTINE_RVA = 0x1100
DRIVER_ROUTINE_NAME = "LdLockUserBuffer+0x20 [C:\\src\\lockdrv\\lockwork.c @ 20]"


@pytest.fixture(autouse=True)
def fresh_process_cache():
    modulesyms._SYMBOL_FILES.clear()
    modulesyms._IMAGE_FILES.clear()
    yield
    modulesyms._SYMBOL_FILES.clear()
    modulesyms._IMAGE_FILES.clear()


def run(*arguments):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(arguments))
    return code, out.getvalue(), err.getvalue()


def symbolizer(image, pdb, address, folder):
    """llvm-symbolizer's function name for ``address`` of ``image`` with its PDB beside it (where LLVM looks
    for it), or None where the tool is not installed."""
    tool = shutil.which("llvm-symbolizer")
    if tool is None:
        return None
    shutil.copy(image, folder)
    shutil.copy(pdb, folder)
    result = subprocess.run([tool, f"--obj={os.path.join(folder, os.path.basename(image))}", hex(address)],
                            capture_output=True, text=True, timeout=60)
    return result.stdout.splitlines()[0]


@pytest.fixture
def driver_dump(tmp_path):
    """A 0x76 kernel dump whose culprit's image is the clang-built test driver, its IRP's cancel routine
    pointing into LdLockUserBuffer."""
    scenario = case_0x76("x64", "irp", noise_pages=0)
    data = scenario.data
    culprit = next(m for m in data.modules if m.name == "leakyflt")
    image = loaded_image(DRIVER_SYS)
    next_frame = max(data.physical.values()) // 0x1000 + 1
    for offset in range(0, len(image), 0x1000):
        data.pages[culprit.base + offset] = image[offset:offset + 0x1000]
        data.physical[culprit.base + offset] = (next_frame + offset // 0x1000) * 0x1000
    irp = scenario.expected["irps"][0]
    field = irp + IRP_CANCEL_ROUTINE
    page = bytearray(data.pages[field & ~0xFFF])
    struct.pack_into("<Q", page, field & 0xFFF, culprit.base + DRIVER_ROUTINE_RVA)
    data.pages[field & ~0xFFF] = bytes(page)
    path = tmp_path / "MEMORY.DMP"
    write_dump(data, str(path))
    return str(path), irp, culprit.base


def test_a_driver_routine_is_named_from_its_pdb_with_its_source_line(driver_dump, tmp_path):
    path, irp, base = driver_dump
    code, out, err = run("analyze", path, "--symbols", DRIVER_PDB, "--format", "json")
    report = json.loads(out)
    assert code == 0 and report["suspects"][0]["image"] == "leakyflt.sys"
    record = next(i for i in report["irps"] if i["address"] == hex(irp))
    assert record["cancel_symbol"] == "leakyflt!" + DRIVER_ROUTINE_NAME
    named = report["names"][hex(base + DRIVER_ROUTINE_RVA)]
    assert named == {"symbol": "leakyflt!" + DRIVER_ROUTINE_NAME, "module": "leakyflt", "offset": "0x20",
                     "function": "LdLockUserBuffer", "file": "C:\\src\\lockdrv\\lockwork.c", "line": 20}
    assert any(note.startswith("leakyflt: symbols from") and "of the image in memory" in note
               for note in report["module_symbols"])
    text = run("analyze", path, "--symbols", DRIVER_PDB)[1]
    assert "CancelRoutine leakyflt!LdLockUserBuffer+0x20 [C:\\src\\lockdrv\\lockwork.c @ 20]" in text


def test_a_recording_keeps_the_names_so_a_replay_needs_no_pdb(driver_dump, tmp_path):
    path, _, _ = driver_dump
    snapshot = str(tmp_path / "case.snap")
    recorded = run("analyze", path, "--symbols", DRIVER_PDB, "--format", "json", "--record", snapshot)[1]
    replayed = run("replay", snapshot, "--format", "json")[1]
    assert replayed == recorded and DRIVER_ROUTINE_NAME.split(" ")[0] in replayed


def test_without_symbols_nothing_is_looked_up(driver_dump):
    path, irp, base = driver_dump
    report = json.loads(run("analyze", path, "--format", "json")[1])
    record = next(i for i in report["irps"] if i["address"] == hex(irp))
    assert record["cancel_symbol"] == f"leakyflt+{DRIVER_ROUTINE_RVA:#x}" and report["module_symbols"] == []


@needs_shared
def test_the_real_small_dump_reads_as_windbg_shows_it(tmp_path):
    code, out, err = run("analyze", SMALL_DUMP, "--symbol-path", SYMBOL_PATH, "--format", "json")
    report = json.loads(out)
    p2 = report["bugcheck"]["parameters"][1]
    expected = symbolizer(AMDPPM_SYS, AMDPPM_PDB, 0x1C000334C, tmp_path) or "WriteIoMemRawEx"  # LLVM's answer
    assert p2["symbol"] == f"amdppm!{expected}+0x70"
    assert report["thread"]["start_symbol"] == "nt!ExpWorkerThread"  # the 19041 ISF names nt+0x225870
    stack = report["call_stack"]
    assert stack["start"].startswith("the exception's context, .cxr 0xffff850429891720")
    functions = [frame["symbol"] for frame in stack["frames"]]
    assert functions[:6] == ["amdppm!WriteIoMemRawEx+0x70", "amdppm!WriteGenAddrEx+0x6b",
                             "amdppm!WriteGenAddrMaybeHiddenEx+0x18", "amdppm!InitAcpiCpc+0x317",
                             "amdppm!ProcLibDeviceStart+0x886", "amdppm!EvtDevicePrepareHardware+0xd2"]
    assert all(symbol.startswith("Wdf01000+0x") for symbol in functions[6:16])  # its image, not its PDB
    assert functions[16] == "nt!IofCallDriver+0x55"  # nt's image is not in the store: the unwind stops here
    assert stack["stop"]["reason"] == "unwind data not available" and not stack["complete"]
    assert "ntoskrnl.exe" in stack["stop"]["message"] and stack["scan_below"]
    assert [f["child_sp"] for f in stack["frames"]][:3] == ["0xffff850429892120", "0xffff850429892150",
                                                             "0xffff850429892180"]
    snapshot = str(tmp_path / "real.snap")
    recorded = run("analyze", SMALL_DUMP, "--symbol-path", SYMBOL_PATH, "--format", "json", "--record", snapshot)[1]
    assert run("replay", snapshot, "--format", "json")[1] == recorded  # no symbol path, no image files


@needs_shared
def test_the_text_report_shows_k_and_cxr(tmp_path):
    text = run("analyze", SMALL_DUMP, "--symbol-path", SYMBOL_PATH)[1]
    assert "STACK (k, unwound from the exception's context, .cxr ffff8504`29891720 (P4))" in text
    assert "  00  ffff8504`29892120  fffff804`8b58313f  amdppm!WriteIoMemRawEx+0x70" in text
    assert "CONTEXT RECORD" in text and "rip is amdppm!WriteIoMemRawEx+0x70" in text
    assert "The unwind stopped at frame 10" in text
