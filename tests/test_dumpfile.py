"""`leakhunt analyze MEMORY.DMP`: dump files written from the scenarios give the findings of replaying the
scenario itself; the real small dumps give their bug check; bad files give one line and exit code 3."""
import errno
import hashlib
import json
import os
import struct
import sys

import pytest

import pykd_ext.search as search
import pykd_ext.targets.dumpfile as dumpfile_module
from mocks.dumpwriter import DumpImage, write_dump
from mocks.scenarios import KINDS_0x76, case_0x76
from pykd_ext.sources import open_dump
from pykd_ext.analyses import analyze
from pykd_ext.session import KernelSession
from pykd_ext.cli import main
from pykd_ext.console import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_NO_HUNT, EXIT_NO_SUSPECT, EXIT_SUSPECT
from pykd_ext.targets.base import Target, TargetError
from pykd_ext.targets.dumpfile import DumpFileTarget
from pykd_ext.targets.dumpheader import (DUMP_BITMAP, DUMP_COMPLETE, DUMP_FULL, DUMP_KERNEL_MEMORY, DUMP_TRIAGE,
                                         H64_DUMP_TYPE, HEADER64_SIZE, RDMP_RANGES, DumpFileError)
from pykd_ext.targets.snapshot import SnapshotTarget

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "..", "shared", "samples")  # the real dumps beside this checkout
TRIAGE_X64 = os.path.join(SAMPLES, "triage_x64.dmp")
TRIAGE_ARM64 = os.path.join(SAMPLES, "triage_arm64.dmp")
needs_samples = pytest.mark.skipif(not os.path.exists(TRIAGE_X64), reason="the real sample dumps are not here")


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def findings(report):
    """The report minus what names the source (its description, its crash time, where layouts and symbols
    came from, the crashing processor's registers, the stack unwound from them and the names of both)."""
    result = report.as_dict()
    del result["source"], result["layouts"], result["symbols"], result["crash_time"]
    del result["registers"], result["call_stack"], result["names"]
    return result


def ki_bugcheck_driver(scenario):
    """The symbol a dump lacks but the scenario knows, as a user gives it with --symbol."""
    return {"nt!KiBugCheckDriver": scenario.data.symbols["nt!KiBugCheckDriver"]}


def analyze_dump(path, addresses=None):
    """Analyze the dump with ``addresses`` given as the user gives them (--symbol NAME=ADDRESS)."""
    target = open_dump(path)
    try:
        return analyze(KernelSession(target, addresses=addresses))
    finally:
        target.close()


@pytest.fixture(scope="module")
def scenarios():
    return {kind: case_0x76("x64", kind) for kind in KINDS_0x76}


# ---- the same findings from every source --------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS_0x76)
@pytest.mark.parametrize("dump_type", [DUMP_BITMAP, DUMP_FULL], ids=["bitmap", "full"])
def test_a_dump_gives_the_findings_of_the_scenario(tmp_path, scenarios, kind, dump_type):
    scenario = scenarios[kind]
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path, dump_type)
    from_dump = analyze_dump(path, ki_bugcheck_driver(scenario))
    replayed = analyze(SnapshotTarget(scenario.data))
    assert findings(from_dump) == findings(replayed)
    if kind != "unlock":  # P1=1 hunts the holders of one MDL: no locked-page accounting
        assert from_dump.locked_pages_accounted == scenario.expected["locked_pages"]
    assert [m.address for m in from_dump.mdls if m.locked] == sorted(scenario.expected["locked_mdls"])
    assert sorted(i.address for i in from_dump.irps) == sorted(scenario.expected["irps"])
    culprit = scenario.expected["culprit"]
    assert (from_dump.suspects[0].driver if from_dump.suspects else None) == culprit


@pytest.mark.parametrize("kind", KINDS_0x76)
def test_a_dump_gives_the_findings_of_the_pykd_session(tmp_path, scenarios, kind):
    mocks = os.path.join(ROOT, "mocks")
    if mocks not in sys.path:
        sys.path.insert(0, mocks)
    control = pytest.importorskip("pykd._control", reason="the stand-in pykd is not available")
    pykd_target = pytest.importorskip("pykd_ext.targets.pykd_target", reason="the pykd target is not available")
    scenario = scenarios[kind]
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path, DUMP_BITMAP)
    control.load(scenario)
    try:
        through_pykd = analyze(pykd_target.PykdTarget())
    finally:
        control.unload()
    from_dump = analyze_dump(path, ki_bugcheck_driver(scenario))
    # The same findings. For P1 = 0 the dump collects the IRPs in the pass that finds the MDLs and searches
    # only for the locked MDLs no IRP holds; the debugger's !search looks for every MDL in a second pass.
    dump_findings, pykd_findings = findings(from_dump), findings(through_pykd)
    if kind != "unlock":
        unheld = [m for m in from_dump.mdls if m.locked and not m.irps]
        assert from_dump.searches == 1 + bool(unheld) and through_pykd.searches == 1 + bool(from_dump.mdls)
    del dump_findings["search_passes"], pykd_findings["search_passes"]
    assert dump_findings == pykd_findings
    # The debugger's current context is the dump header's: the same registers, the same stack from them
    # (named apart: the debugger knows a symbol at the kernel address the context points to).
    def unnamed(report):
        stack = report.as_dict()["call_stack"]
        for entry in stack["frames"] + stack["scan_below"]:
            del entry["symbol"]
        return [(r["name"], r["value"]) for r in report.as_dict()["registers"]], stack

    assert unnamed(through_pykd) == unnamed(from_dump) and through_pykd.registers


@pytest.mark.parametrize("dump_type", [DUMP_KERNEL_MEMORY, DUMP_COMPLETE], ids=["kernel-ranges", "complete-ranges"])
def test_range_dumps_give_the_same_findings(tmp_path, scenarios, dump_type):
    scenario = scenarios["irp"]
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path, dump_type)
    from_dump = analyze_dump(path, ki_bugcheck_driver(scenario))
    assert findings(from_dump) == findings(analyze(SnapshotTarget(scenario.data)))


# ---- the command line ---------------------------------------------------------------------------

def test_analyze_names_the_driver_and_leaves_the_dump_untouched(tmp_path, capsys, scenarios):
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenarios["irp"].data, path)
    before = digest(path)
    assert main(["analyze", path]) == EXIT_SUSPECT
    out = capsys.readouterr().out
    assert "Most likely culprit: \\Driver\\leakyflt (leakyflt.sys)" in out
    assert "MEMORY.DMP: bitmap memory dump" in out
    assert digest(path) == before


def test_record_from_a_dump_replays_to_the_same_json(tmp_path, capsys, scenarios):
    path = str(tmp_path / "MEMORY.DMP")
    snap = str(tmp_path / "case.snap")
    write_dump(scenarios["irp"].data, path)
    assert main(["analyze", path, "--format", "json", "--record", snap]) == EXIT_SUSPECT
    analyzed = capsys.readouterr().out
    assert main(["replay", snap, "--format", "json"]) == EXIT_SUSPECT
    replayed = capsys.readouterr().out
    assert replayed == analyzed  # byte for byte


def test_symbols_from_the_command_line_reach_the_hunt(tmp_path, capsys):
    scenario = case_0x76("x64", "orphan", ki_bugcheck_driver="leakyflt.sys")
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path)
    address = scenario.data.symbols["nt!KiBugCheckDriver"]

    def facts(argv):
        code = main(["analyze", path, "--format", "json"] + argv)
        report = json.loads(capsys.readouterr().out)
        return code, {fact["label"]: fact["value"] for fact in report["facts"]}, report["suspects"]

    code, known, suspects = facts([])
    assert code == EXIT_NO_SUSPECT and known["nt!KiBugCheckDriver"] == "unknown" and not suspects
    code, known, suspects = facts(["--symbol", f"KiBugCheckDriver={address:#x}"])
    assert code == EXIT_SUSPECT and known["nt!KiBugCheckDriver"] == "leakyflt.sys"
    assert suspects[0]["image"] == "leakyflt.sys"
    symbol_file = tmp_path / "symbols.json"
    symbol_file.write_text(json.dumps({"nt!KiBugCheckDriver": hex(address)}))
    code, known, _ = facts(["--symbols", str(symbol_file)])
    assert code == EXIT_SUSPECT and known["nt!KiBugCheckDriver"] == "leakyflt.sys"


@needs_samples
@pytest.mark.parametrize("path, code, name, parameters, arch, build, exit_code", [
    (TRIAGE_X64, 0x1000007E, "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M",
     ["0xffffffffc0000005", "0xfffff8048b58334c", "0xffff850429891ee8", "0xffff850429891720"], "x64", 19041,
     EXIT_SUSPECT),  # P2, the faulting code, names its driver
    (TRIAGE_ARM64, 0x1C8, "MANUALLY_INITIATED_POWER_BUTTON_HOLD", ["0x1b58", "0xfffff803f3a20860", "0x0", "0x0"],
     "arm64", 22000, EXIT_NO_SUSPECT),  # no hunt for 0x1C8, nobody named
])
def test_real_small_dumps_give_their_bug_check(capsys, path, code, name, parameters, arch, build, exit_code):
    before = digest(path)
    target = open_dump(path)
    assert target.bugcheck().code == code
    target.close()
    assert main(["analyze", path, "--format", "json"]) == exit_code
    report = json.loads(capsys.readouterr().out)
    assert report["bugcheck"]["name"] == name
    assert [p["value"] for p in report["bugcheck"]["parameters"]] == parameters
    assert report["target"] == {"arch": arch, "pointer_size": 8, "build": build}
    # Neither code has a hunt: what a kernel dump would add to a hunt is not said (test_smalldump says it
    # for a 0x76 small dump).
    assert report["hunt_possible"] is True and not any("small memory dump" in w for w in report["warnings"])
    assert digest(path) == before


@needs_samples
def test_the_small_dump_header_facts():
    target = open_dump(TRIAGE_X64)
    header = target.header
    assert (header.dump_type, header.build, header.processors) == (DUMP_TRIAGE, 19041, 16)
    assert header.ps_loaded_module_list == target.symbol("nt!PsLoadedModuleList") == 0xFFFFF8047C62A390
    assert target.symbol("nt!PsActiveProcessHead") == 0xFFFFF8047C61E200
    assert header.directory_table_base == 0x1AD000 and header.kd_debugger_data_block == 0xFFFFF8047C600B20
    assert target.max_pfn is None  # a triage dump leaves its PhysicalMemoryBlock unfilled
    target.close()


def test_a_small_dump_of_a_0x76_crash_decodes_it_and_exits_4(tmp_path, capsys, scenarios):
    path = str(tmp_path / "Mini.dmp")
    write_dump(scenarios["irp"].data, path)
    with open(path, "r+b") as handle:  # the same crash, written as a small dump
        handle.seek(H64_DUMP_TYPE)
        handle.write(struct.pack("<I", DUMP_TRIAGE))
    assert main(["analyze", path]) == EXIT_NO_HUNT
    out = capsys.readouterr().out
    assert "PROCESS_HAS_LOCKED_PAGES" in out and "Mini.dmp is a small memory dump" in out
    verdict = out.split("\nVERDICT\n", 1)[1].split("\n\n", 1)[0]
    assert verdict.startswith("  The hunt did not run") and "No driver is named by the evidence" not in out
    warnings = out.split("\nWARNINGS\n", 1)[1].split("\n\n", 1)[0]
    assert warnings.count("Mini.dmp is a small memory dump") == 1 and "CrashDumpEnabled" in warnings


def test_a_32_bit_dump_gives_its_bug_check(tmp_path, capsys):
    scenario = case_0x76("x86", "irp")
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path, DUMP_FULL)
    target = open_dump(path)
    assert (target.arch, target.pointer_size, target.build) == ("x86", 4, 19045)
    assert target.bugcheck() == scenario.data.bugcheck
    target.close()
    assert main(["analyze", path, "--format", "json"]) == EXIT_NO_HUNT
    report = json.loads(capsys.readouterr().out)
    assert report["bugcheck"]["parameters"][1]["value"] == hex(scenario.expected["process"])
    assert any("32-bit x86 dump" in w and "!py leakhunt" in w for w in report["warnings"])


# ---- bad input ----------------------------------------------------------------------------------

def _bad_files(tmp_path, data):
    good = str(tmp_path / "good.dmp")
    write_dump(data, good)
    with open(good, "rb") as handle:
        content = handle.read()
    files = {
        "empty": b"",
        "short header": content[:1000],
        "truncated pages": content[:len(content) - 3 * 4096],
        "wrong magic": b"NOTADUMP" + content[8:],
        "user minidump": b"MDMP\x93\xa7" + content[6:],
        "damaged bitmap header": content[:HEADER64_SIZE] + b"XDMP" + content[HEADER64_SIZE + 4:],
    }
    paths = {}
    for name, raw in files.items():
        path = tmp_path / (name.replace(" ", "_") + ".dmp")
        path.write_bytes(raw)
        paths[name] = str(path)
    return paths


@pytest.mark.parametrize("case, message", [
    ("empty", "is empty"),
    ("short header", "is truncated"),
    ("truncated pages", "is truncated"),
    ("wrong magic", "not a Windows kernel crash dump"),
    ("user minidump", "user-mode minidump"),
    ("damaged bitmap header", "is corrupt"),
])
def test_bad_files_give_one_line_and_exit_3(tmp_path, capsys, scenarios, case, message):
    path = _bad_files(tmp_path, scenarios["nothing"].data)[case]
    before = digest(path)
    assert main(["analyze", path]) == EXIT_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err and "Traceback" not in captured.err
    assert digest(path) == before


@pytest.mark.parametrize("field, value", [(0, 2 ** 64 - 0x100), (8, 2 ** 64 - 1), (8, 2 ** 41)],
                         ids=["first-frame", "count-overflows", "count-too-large"])
def test_a_page_range_beyond_any_machine_is_corrupt(tmp_path, capsys, scenarios, field, value):
    path = tmp_path / "MEMORY.DMP"
    write_dump(scenarios["irp"].data, str(path), DUMP_KERNEL_MEMORY)
    raw = bytearray(path.read_bytes())
    first_range = HEADER64_SIZE + RDMP_RANGES
    raw[first_range + field:first_range + field + 8] = value.to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    assert main(["analyze", str(path)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is corrupt" in err and "Warning" not in err


def test_a_truncated_dump_still_names_its_bug_check(tmp_path, capsys, scenarios):
    path = _bad_files(tmp_path, scenarios["irp"].data)["truncated pages"]
    assert main(["analyze", path]) == EXIT_INPUT
    assert "bug check 0x76" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["missing", "directory", "unreadable"])
def test_files_that_cannot_be_opened(tmp_path, capsys, scenarios, what):
    path = str(tmp_path / "MEMORY.DMP")
    if what == "directory":
        os.mkdir(path)
    elif what == "unreadable":
        write_dump(scenarios["nothing"].data, path)
        os.chmod(path, 0)
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read any file (root)")
    assert main(["analyze", path]) == EXIT_INPUT
    err = capsys.readouterr().err
    expected = {"missing": "no such file", "directory": "is a directory", "unreadable": "permission denied"}[what]
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_damaged_page_tables_give_a_partial_report_with_warnings(tmp_path, capsys, scenarios):
    scenario = scenarios["irp"]
    image = DumpImage(scenario.data)
    pool_page = scenario.expected["process"] & ~0xFFF
    # Drop the page table that maps the pool from the dump: the objects there can be neither read nor located.
    pdpt_frame = (image.entry(image.pml4, (pool_page >> 39) & 0x1FF) >> 12) & 0xFFFFFFFFFF
    pd_frame = (image.entry(pdpt_frame, (pool_page >> 30) & 0x1FF) >> 12) & 0xFFFFFFFFFF
    pt_frame = (image.entry(pd_frame, (pool_page >> 21) & 0x1FF) >> 12) & 0xFFFFFFFFFF
    del image.tables[pt_frame]
    path = str(tmp_path / "MEMORY.DMP")
    image.write(path)
    before = digest(path)
    code = main(["analyze", path, "--format", "json"])
    captured = capsys.readouterr()
    assert code == EXIT_NO_SUSPECT and captured.err == ""
    report = json.loads(captured.out)
    assert report["hunt_possible"] is True and not report["suspects"]
    assert any("page table(s)" in w and "not in the dump" in w for w in report["warnings"])
    assert any("no MDL pointing at the process" in w for w in report["warnings"])
    assert digest(path) == before


def pages_as_ranges(pages, start, end):
    ranges = []
    for page in sorted(p for p in pages if start <= p < end):
        if ranges and ranges[-1][1] == page:
            ranges[-1] = (ranges[-1][0], page + 0x1000)
        else:
            ranges.append((page, page + 0x1000))
    return ranges


@pytest.mark.parametrize("damaged", [False, True], ids=["whole", "a page table dropped"])
def test_the_readable_ranges_of_a_dump_are_the_pages_it_holds(tmp_path, scenarios, damaged):
    """From one walk of the range's tables: the scene's pages (what the writer was given), less those a
    dropped page table maps; the ranges say the same as reading the range page by page."""
    scenario = scenarios["irp"]
    image = DumpImage(scenario.data)
    pages = dict(scenario.data.pages)
    pool_page = scenario.expected["process"] & ~0xFFF
    if damaged:
        pdpt_frame = (image.entry(image.pml4, (pool_page >> 39) & 0x1FF) >> 12) & 0xFFFFFFFFFF
        pd_frame = (image.entry(pdpt_frame, (pool_page >> 30) & 0x1FF) >> 12) & 0xFFFFFFFFFF
        del image.tables[(image.entry(pd_frame, (pool_page >> 21) & 0x1FF) >> 12) & 0xFFFFFFFFFF]
        table_span = pool_page & ~0x1FFFFF
        pages = {p: c for p, c in pages.items() if not table_span <= p < table_span + 0x200000}
    path = str(tmp_path / "MEMORY.DMP")
    image.write(path)
    # The pool and the images, each apart from the tables' self-map (0xFFFFF680`00000000, 512 GiB).
    pool = sorted(p for p in scenario.data.pages if p < 0xFFFFF68000000000)
    images = sorted(p for p in scenario.data.pages if p >= 0xFFFFF70000000000)
    target = open_dump(path)
    try:
        for start, end in ((pool[0], pool[-1] + 0x1000), (pool[0] + 0x10, pool[-1] + 0xFF0),
                           (images[0] - 0x5000, images[-1] + 0x3000), (pool_page + 0x18, pool_page + 0x2008)):
            expected = [(max(a, start), min(b, end)) for a, b in pages_as_ranges(pages, start & ~0xFFF, end)]
            assert target.readable_ranges(start, end - start) == expected
            assert Target.readable_ranges(target, start, end - start) == expected  # by reading
        assert target.readable_ranges(0x00007FFFFFFFF000, 0x2000) == []  # across the non-canonical hole
    finally:
        target.close()


def test_an_unknown_dump_type_gives_the_bug_check_only(tmp_path, capsys, scenarios):
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenarios["irp"].data, path)
    with open(path, "r+b") as handle:
        handle.seek(H64_DUMP_TYPE)
        handle.write(struct.pack("<I", 2))
    assert main(["analyze", path]) == EXIT_NO_HUNT
    assert "DumpType 0x2" in capsys.readouterr().out


def test_open_errors_are_target_errors(tmp_path):
    path = tmp_path / "x.dmp"
    path.write_bytes(b"PAGEDU64" + bytes(100))
    with pytest.raises(DumpFileError, match="truncated"):
        open_dump(str(path))



@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "read"])
def test_ctrl_c_during_the_search_prints_a_partial_report(tmp_path, capsys, scenarios, monkeypatch, mapped):
    path = str(tmp_path / "MEMORY.DMP")
    snap = str(tmp_path / "case.snap")
    write_dump(scenarios["orphan"].data, path)  # two passes: the process's MDLs, then what holds them
    monkeypatch.setattr(dumpfile_module, "MAPPED_SEARCH", mapped)
    scans = []
    read_window, search_mapped_window = DumpFileTarget._scan_window, DumpFileTarget._scan_mapped_window

    def interrupted_second_pass(scan, *arguments):
        scans.append(scan.__name__)
        if len(scans) > 1:
            raise KeyboardInterrupt
        return scan(*arguments)

    monkeypatch.setattr(DumpFileTarget, "_scan_window",
                        staticmethod(lambda *arguments: interrupted_second_pass(read_window, *arguments)))
    monkeypatch.setattr(DumpFileTarget, "_scan_mapped_window",
                        lambda *arguments: interrupted_second_pass(search_mapped_window, *arguments))
    assert main(["analyze", path, "--format", "json", "--record", snap]) == EXIT_INTERRUPTED
    report = json.loads(capsys.readouterr().out)
    assert report["partial"] is True and report["search_passes"] == 2
    assert not os.path.exists(snap)  # an interrupted hunt records nothing
    expected_scan = "_scan_mapped_window" if mapped and search.compiled_searches_mappings else "_scan_window"
    assert set(scans) == {expected_scan}


# ---- the search's threads and engines -----------------------------------------------------------

def test_every_thread_count_engine_and_file_access_finds_the_same(tmp_path, monkeypatch):
    scenario = case_0x76("x64", "irp", leaked=12, noise_pages=64)
    path = str(tmp_path / "MEMORY.DMP")
    DumpImage(scenario.data, noise_pages=1500, seed=3).write(path, DUMP_BITMAP)
    monkeypatch.setattr("pykd_ext.targets.dumpfile.WINDOW_BYTES", 64 * 1024)  # ~100 windows
    values = [scenario.expected["process"]] + scenario.expected["locked_mdls"] + scenario.expected["decoy_mdls"]
    variants = [("numpy", False)] + ([("compiled", True), ("compiled", False)] if search._wordscan else [])
    results = []
    for engine, mapped in variants:
        for threads in (1, 3):
            monkeypatch.setattr(search, "preferred_engine", engine)
            monkeypatch.setattr(dumpfile_module, "MAPPED_SEARCH", mapped)
            monkeypatch.setattr("pykd_ext.targets.dumpfile.SEARCH_THREADS", threads)
            target = open_dump(path)
            try:
                progress = []
                hits = target.search_pointers(values, progress=lambda done, total: progress.append(done))
                report = findings(analyze(target))
            finally:
                target.close()
            assert progress == sorted(progress) and len(progress) > 50
            results.append((hits, report))
    assert all(hits[scenario.expected["process"]] for hits, _ in results)
    assert all(result == results[0] for result in results[1:])


# ---- a file that changes under the search ------------------------------------------------------

@pytest.mark.parametrize("reads_files,mapped", [(True, True), (True, False), (False, False)],
                         ids=["engine-maps", "engine-reads", "python-reads"])
@pytest.mark.parametrize("cut", ["before the first pass", "between the passes"])
def test_a_dump_truncated_after_it_was_opened_stops_the_search_with_a_clear_error(tmp_path, scenarios, monkeypatch,
                                                                                  reads_files, mapped, cut):
    if reads_files and not search.compiled_reads_files:
        pytest.skip("the compiled engine's file reads are not built here")
    monkeypatch.setattr(search, "preferred_engine", "compiled" if reads_files else "numpy")
    monkeypatch.setattr(dumpfile_module, "MAPPED_SEARCH", mapped)
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenarios["irp"].data, path)
    process = scenarios["irp"].expected["process"]
    target = open_dump(path)
    try:
        if cut == "between the passes":  # the file is mapped (where it is) while it is cut: the pages gone raise SIGBUS
            assert target.search_pointers([process])[process]
        os.truncate(path, target.layout.data_start + 4096)  # another program cut it short meanwhile
        with pytest.raises(TargetError, match="shorter than when leakhunt opened it"):
            target.search_pointers([process])
    finally:
        target.close()


@pytest.mark.parametrize("access", ["mapped", "read by the engine", "read by python"])
def test_a_page_that_cannot_be_read_is_an_io_error_not_a_crash(tmp_path, scenarios, monkeypatch, access):
    """A page the file still has but cannot give (a failing disk, a network share gone) is an I/O error."""
    if access != "read by python" and not (search.compiled_searches_mappings and search.compiled_reads_files):
        pytest.skip("the compiled engine's file access is not built here")
    monkeypatch.setattr(search, "preferred_engine", "numpy" if access == "read by python" else "compiled")
    monkeypatch.setattr(dumpfile_module, "MAPPED_SEARCH", access == "mapped")

    def unreadable(*arguments):
        raise OSError(errno.EIO, "Input/output error")  # what the bus-error guard and a failing read raise

    monkeypatch.setattr(search.ValueSet, "find_in_mapping", unreadable)
    monkeypatch.setattr(search.ValueSet, "find_in_file", unreadable)
    monkeypatch.setattr(dumpfile_module._WindowReader, "read", unreadable)
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenarios["irp"].data, path)
    target = open_dump(path)
    try:
        with pytest.raises(TargetError, match="Input/output error: a failing disk.*copy the dump to a local disk"):
            target.search_pointers([scenarios["irp"].expected["process"]])
    finally:
        target.close()


def test_a_file_that_cannot_be_mapped_is_read_instead(tmp_path, scenarios, monkeypatch):
    if not search.compiled_searches_mappings:
        pytest.skip("the compiled engine's bus-error guard is not built here")
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenarios["irp"].data, path)
    process = scenarios["irp"].expected["process"]
    target = open_dump(path)
    try:
        mapped = target.search_pointers([process])
    finally:
        target.close()

    def no_mappings(*arguments, **keywords):
        raise OSError(errno.ENODEV, "No such device")  # a file system that cannot map files

    monkeypatch.setattr(dumpfile_module.mmap, "mmap", no_mappings)
    read_scans = []
    read_window = DumpFileTarget._scan_window
    monkeypatch.setattr(DumpFileTarget, "_scan_window",
                        staticmethod(lambda *arguments: read_scans.append(1) or read_window(*arguments)))
    target = open_dump(path)
    try:
        assert target.search_pointers([process]) == mapped and mapped[process]
    finally:
        target.close()
    assert read_scans


def test_a_hunt_on_a_dump_truncated_after_it_was_opened_keeps_a_warning(tmp_path, scenarios):
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenarios["irp"].data, path)
    target = open_dump(path)
    try:
        os.truncate(path, target.layout.data_start + 4096)
        report = analyze(target)
    finally:
        target.close()
    assert report.complete_hunt is False and not report.suspects
    assert any("truncated while leakhunt read it" in warning for warning in report.warnings)


def test_the_mapping_is_let_go_in_the_background_when_the_analysis_is_done(tmp_path, scenarios, monkeypatch):
    if not search.compiled_searches_mappings:
        pytest.skip("the compiled engine's bus-error guard is not built here")
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenarios["irp"].data, path)
    process = scenarios["irp"].expected["process"]
    mappings = []
    real_mmap = dumpfile_module.mmap.mmap
    monkeypatch.setattr(dumpfile_module.mmap, "mmap", lambda *a, **k: mappings.append(real_mmap(*a, **k)) or mappings[-1])
    target = open_dump(path)
    try:
        report = analyze(KernelSession(target))
        assert report.suspects and len(mappings) == 1
        unmapping = target._unmapping
        assert target._mapping is None and unmapping is not None
        unmapping.join()
        assert mappings[0].closed
        found = target.search_pointers([process])  # a later search maps the file again
        assert found[process] and len(mappings) == 2 and not mappings[1].closed
    finally:
        target.close()
    assert mappings[1].closed and target._unmapping is None
