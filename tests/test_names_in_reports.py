"""Names and the unwound stack in whole reports, as a user gets them from `leakhunt analyze` and a replay.

Expected names come from LLVM's reading of the PDBs (llvm-symbolizer, quoted in comments where a literal
stands in for it) and from the real kernel's symbol table; expected frames from the real small dump's
stack and its images' unwind data as LLVM decodes it (tests/test_unwind_real_dump.py checks each return
address against LLVM's disassembly)."""
import contextlib
import io
import json
import lzma
import os
import shutil
import struct
import subprocess

import pytest

from mocks.dumpwriter import write_dump
from mocks.memory import add_pages
from mocks.scenarios import case_0x76
from pykd_ext.cli import main
from pykd_ext.symbols.isf import IsfFile
from pykd_ext.targets.base import Module
from pykd_ext.targets.snapshot import save_snapshot
import test_module_symbols
import unwind_harness as harness
from test_module_symbols import DRIVER_PDB, DRIVER_SYS, loaded_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
SMALL_DUMP = os.path.join(SHARED, "samples", "triage_x64.dmp")
SYMBOL_PATH = f"{os.path.join(SHARED, 'symstore')};{os.path.join(SHARED, 'symbols')}"
AMDPPM_SYS = os.path.join(SHARED, "symstore", "amdppm.sys", "c9c030003b000", "amdppm.sys")
AMDPPM_PDB = os.path.join(SHARED, "symstore", "amdppm.pdb", "1C19FDDB27BB3399D9B45973EFEAFCF31", "amdppm.pdb")
fresh_process_cache = test_module_symbols.fresh_process_cache  # each test starts as a new process would
needs_shared = pytest.mark.skipif(not os.path.exists(SMALL_DUMP), reason="../shared (the real dump and store) is absent")
IRP_CANCEL_ROUTINE = 0x68  # _IRP.CancelRoutine on x64 (reference/windows-kernel.md §4.2)
# llvm-symbolizer --obj=tests/data/testdriver/lockdrv.sys 0x140001100: "LdLockUserBuffer" at
# C:\src\lockdrv\lockwork.c:20 (llvm-pdbutil dump -symbols lockdrv.pdb: LdLockUserBuffer starts at RVA 0x10E0).
DRIVER_ROUTINE_RVA = 0x1100
DRIVER_ROUTINE_NAME = "LdLockUserBuffer+0x20 [C:\\src\\lockdrv\\lockwork.c @ 20]"


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
    add_pages(data, culprit.base, loaded_image(DRIVER_SYS))
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


# ---- the fields of !analyze -v and the triage bucket --------------------------------------------------

@needs_shared
def test_the_real_small_dump_has_the_fields_of_analyze():
    report = json.loads(run("analyze", SMALL_DUMP, "--symbol-path", SYMBOL_PATH, "--format", "json")[1])
    # As !analyze writes them: the offset in hex without 0x; FAILURE_BUCKET_ID without it; the version
    # is the image file's version resource (its FileVersion string reads "10.0.19041.1110 (WinBuild...)").
    assert report["analyze"] == {"symbol_name": "amdppm!WriteIoMemRawEx+70", "module_name": "amdppm",
                                 "image_name": "amdppm.sys", "image_version": "10.0.19041.1110",
                                 "failure_bucket": "AV_amdppm!WriteIoMemRawEx",
                                 "followup": "P2, the address where the exception occurred"}
    unnamed = json.loads(run("analyze", SMALL_DUMP, "--format", "json")[1])["analyze"]
    assert unnamed["failure_bucket"] == "AV_amdppm!unknown_function" and unnamed["symbol_name"] == "amdppm+334c"


def test_a_fault_in_nt_follows_up_the_first_driver_frame_of_the_unwound_stack():
    """The followup is chosen from the report as !analyze chooses it: P2 in nt, the first unwound frame
    outside nt and hal names the function."""
    from pykd_ext.analyses.common import Context, Options
    from pykd_ext.analyses.summary import summarize
    from pykd_ext.report import CallFrame, CallStack
    from pykd_ext.targets.base import BugCheck, Module
    from pykd_ext.targets.snapshot import SnapshotData, SnapshotTarget

    nt = Module("nt", "ntoskrnl.exe", 0xFFFFF80000000000, 0x1000000)
    driver = Module("drv", "drv.sys", 0xFFFFF80100000000, 0x10000)
    data = SnapshotData("x64", 8, BugCheck(0x7E, (0xC0000005, nt.base + 0x1234, 0, 0)), modules=[nt, driver])
    context = Context(SnapshotTarget(data), Options())
    context.report.call_stack = CallStack("test", frames=[
        CallFrame(0, 0x1000, nt.base + 0x1234, nt.base + 0x2000, "nt+0x1234", "nt", "context"),
        CallFrame(1, 0x1100, nt.base + 0x2000, driver.base + 0x1500, "nt+0x2000", "nt", "unwind data"),
        CallFrame(2, 0x1200, driver.base + 0x1500, None, "drv+0x1500", "drv", "unwind data")])
    summarize(context)
    summary = context.report.summary
    assert summary.failure_bucket == "AV_drv!unknown_function" and summary.module_name == "drv"
    assert summary.followup.startswith("frame 02 of the unwound stack, the first outside nt and hal")


@needs_shared
def test_triage_buckets_by_the_function_where_a_symbol_file_named_it(tmp_path):
    from test_fleet_local import records_of, triage

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SMALL_DUMP, folder / "a.dmp")
    with_symbols = triage([str(folder), "--out", str(tmp_path / "named"), "--symbol-path", SYMBOL_PATH])
    assert with_symbols.returncode == 0, with_symbols.stderr
    record = records_of(str(tmp_path / "named"))["a.dmp"]
    assert record["bucket"] == "0x7e_AV_amdppm!WriteIoMemRawEx" and record["bucket_version"] == 2
    assert record["bucket_followup"] == "P2, the address where the exception occurred"
    without = triage([str(folder), "--out", str(tmp_path / "unnamed")])
    assert without.returncode == 0, without.stderr
    assert records_of(str(tmp_path / "unnamed"))["a.dmp"]["bucket"] == "0x7e_amdppm.sys"  # no function known


# ---- a trap frame on the unwound stack (.trap) -------------------------------------------------------

def test_a_kernel_trap_handler_on_the_stack_shows_its_trap_frame(tmp_path):
    """A crash inside a trap handler of hal (the clang-built test image standing in for hal.dll, run under
    an x86-64 emulator that pushes the machine frame as the CPU does), with _KTRAP_FRAME from the real
    19041 kernel's symbol table: the handler's frame shows its trap frame (k's "TrapFrame @"), whose
    Rip and Rsp are the interrupted instruction and stack pointer the emulator recorded."""
    pytest.importorskip("unicorn")
    isf_path = os.path.join(ROOT, "tests", "data", "symbols", "windows", "ntkrnlmp.pdb",
                            "5278AFF86C341677D7D7835C85B7B844-1.json.xz")
    with lzma.open(isf_path) as handle:  # the offsets as the real symbol table has them, read with json alone
        trap_fields = json.load(handle)["user_types"]["_KTRAP_FRAME"]["fields"]
    pe, symbols = harness.MappedPe(harness.TEST_IMAGE), harness.read_link_map()
    emulation = harness.Emulation(pe)
    emulation.trap_at, emulation.trap_handler = symbols["trap_in_body"], symbols["trap_handler"]
    emulation.stop_at = symbols["trap_done"]
    emulation.run(symbols["trap_entry"])
    (trap,) = [call for call in emulation.live_calls() if call.trap]

    scenario = case_0x76("x64", "irp", noise_pages=0)
    data = scenario.data
    harness.crash_in_scene(data, emulation, Module("hal", "hal.dll", harness.IMAGE_BASE, pe.size))  # in hal's place
    isf = IsfFile.open(isf_path)
    data.types["nt!_KTRAP_FRAME"] = isf.type_info("_KTRAP_FRAME", ["Rip", "Rsp", "Rbp", "Rax", "Rcx", "Rdx", "R8",
                                                                      "R9", "R10", "R11", "EFlags"])
    snapshot = str(tmp_path / "trap.snap")
    save_snapshot(data, snapshot)

    report = json.loads(run("replay", snapshot, "--format", "json")[1])
    trap_frame = trap.slot - trap_fields["Rip"]["offset"]
    handler = report["call_stack"]["frames"][0]
    assert handler["symbol"].startswith("hal+") and handler["trap_frame"] == hex(trap_frame)
    assert [frame["trap_frame"] for frame in report["call_stack"]["frames"][1:]] == \
        [None] * (len(report["call_stack"]["frames"]) - 1)
    assert report["trap_frame"]["address"] == hex(trap_frame)
    saved = {r["name"]: int(r["value"], 16) for r in report["trap_frame"]["registers"]}
    assert saved["rip"] == trap.return_address == symbols["trap_in_body"] and saved["rsp"] == trap.caller_sp
    text = run("replay", snapshot)[1]
    assert f"(TrapFrame @ {trap_frame >> 32:08x}`{trap_frame & 0xFFFFFFFF:08x})" in text
    assert "(.trap: the registers the trap handler saved" in text


# ---- an image partly in memory, the rest from its file -----------------------------------------------

@needs_shared
def test_an_image_read_partly_from_memory_and_partly_from_its_file_replays_the_same_stack(tmp_path):
    """The real small dump's amdppm.sys, with its headers and the pages of its function table put in the
    dump's memory (the rest only in the image file on the symbol path): the unwinder reads the table from
    memory and the unwind codes from the file, and the recording replays the same stack, reading both
    the same way."""
    from pykd_ext.analyses import Options
    from pykd_ext.render.jsonout import render_json
    from pykd_ext.run import run_analysis
    from pykd_ext.session import open_session
    from pykd_ext.symbols.pe import PeImage
    from pykd_ext.targets.snapshot import SnapshotTarget, load_snapshot

    plain = str(tmp_path / "plain.snap")
    assert run("analyze", SMALL_DUMP, "--symbol-path", SYMBOL_PATH, "--record", plain)[0] == 0
    data = load_snapshot(plain)
    data.images = {}  # read from the image files again
    amdppm = next(module for module in data.modules if module.name == "amdppm")
    image = PeImage.from_file(AMDPPM_SYS)
    table, size = image.exception_directory
    first, end = table & ~0xFFF, (table + size + 0xFFF) & ~0xFFF
    add_pages(data, amdppm.base, image.read(0, image.size_of_headers))
    add_pages(data, amdppm.base + first, image.read(first, end - first))
    live_path = str(tmp_path / "live.snap")
    live = json.loads(render_json(run_analysis(SnapshotTarget(data), Options(),
                                               lambda target: open_session(target, SYMBOL_PATH), live_path)))
    frames = live["call_stack"]["frames"]
    assert frames[0]["symbol"] == "amdppm!WriteIoMemRawEx+0x70" and frames[5]["symbol"].startswith("amdppm!")
    recorded = load_snapshot(live_path).images[("amdppm", amdppm.base)]
    assert recorded.reads and not any(table <= rva < table + size for rva in recorded.reads)  # the table: memory
    replayed = json.loads(run("replay", live_path, "--format", "json")[1])
    assert replayed["call_stack"] == live["call_stack"]
