"""ARM64 kernel dumps offline: the 4 KiB-granule translation tables (blocks, transition entries, the
self-map, damaged tables), the ARM64 context record, and every hunt with the kernel's symbols and without.

The dumps are written by mocks/dumpwriter.py from the ARMv8-A descriptor format and the ARM64 CONTEXT
layout (its own constants, not leakhunt's tables); the walk is also checked against descriptor words
written out by hand below. The ARM64 test kernel (tests/data/testkernel-arm64: a real ARM64 PE and PDB
made by clang and lld, and its ISF) has the ARM64 layouts of build 26100's headers (mocks/arm64_layouts.py),
which differ from leakhunt's x64 tables.
"""
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from mocks import dumpwriter
from mocks.dumpwriter import DumpImage, write_dump
from mocks.memory import SymbolFit, fit_of_pdb
from mocks.scenarios import KINDS_0x76, case_0x76
from mocks.scenarios_family import (DRIVER_DATA, case_0x4e, case_0x76_tracked, case_0x153, case_0x162, case_0x192,
                                    case_0xcb, case_0xd9)
from mocks.scenarios_private import case_0x76_private
from pykd_ext.sources import open_dump
from pykd_ext.analyses import analyze
from pykd_ext.arch import ARM64
from pykd_ext.arch.pagetables import PageTables
from pykd_ext.session import KernelSession
from pykd_ext.cli import main
from pykd_ext.console import EXIT_INPUT, EXIT_NO_HUNT, EXIT_NO_SUSPECT, EXIT_SUSPECT
from pykd_ext.symbols.pdb import PdbFile
from pykd_ext.targets.base import PAGE_SIZE
from pykd_ext.targets.dumpheader import (DUMP_BITMAP, DUMP_COMPLETE, DUMP_FULL, DUMP_KERNEL_AND_USER,
                                         DUMP_KERNEL_BITMAP, DUMP_KERNEL_MEMORY, H64_DIRECTORY_TABLE_BASE,
                                         H64_DUMP_TYPE, MACHINE_ARM64)
from pykd_ext.targets.snapshot import SnapshotTarget

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL = os.path.join(HERE, "data", "testkernel-arm64")
PDB = os.path.join(KERNEL, "ntkrnlmp.pdb")
X64_PDB = os.path.join(HERE, "data", "testkernel", "ntkrnlmp.pdb")
ALL_TYPES = [DUMP_FULL, DUMP_BITMAP, DUMP_KERNEL_BITMAP, DUMP_KERNEL_MEMORY, DUMP_KERNEL_AND_USER, DUMP_COMPLETE]


def fit() -> SymbolFit:
    return fit_of_pdb(PDB)


def pdb_label() -> str:
    return f"pdb ntkrnlmp.pdb {fit().guid}-{fit().age}"


def run_json(capsys, *args):
    code = main(list(args) + ["--format", "json"])
    captured = capsys.readouterr()
    assert captured.err == "" or captured.err.count("\n") == 1, captured.err
    return code, json.loads(captured.out)


def findings(report):
    """What the hunt found, without what names the source: its crash time, where layouts, symbols and
    registers came from, the names of those registers and the stack unwound from them, how many passes its
    search took (a dump collects the IRPs in the pass that finds the MDLs, the debugger's !search does
    not) and the warning naming the built-in tables used (a dump's module list needs the loader entry's,
    a snapshot's does not)."""
    result = report.as_dict()
    for key in ("source", "crash_time", "layouts", "symbols", "registers", "names", "call_stack", "search_passes"):
        del result[key]
    result["warnings"] = [w for w in result["warnings"] if "the built-in x64 tables were used for" not in w]
    return result


def analyze_dump(path, scenario):
    """The dump analyzed with the symbol it does not record given as a user gives it (--symbol)."""
    target = open_dump(path)
    try:
        return analyze(KernelSession(target, addresses={
            "nt!KiBugCheckDriver": scenario.data.symbols["nt!KiBugCheckDriver"]}))
    finally:
        target.close()


@pytest.fixture(scope="module")
def scenarios():
    return {kind: case_0x76("arm64", kind, noise_pages=4) for kind in KINDS_0x76}


@pytest.fixture(scope="module")
def dumps(tmp_path_factory, scenarios):
    """One bitmap dump of each 0x76 case, and the 'irp' case of the kernel the test PDB describes."""
    folder = tmp_path_factory.mktemp("arm64")
    paths = {}
    for kind, scenario in scenarios.items():
        paths[kind] = str(folder / f"{kind}.dmp")
        write_dump(scenario.data, paths[kind])
    symbolized = case_0x76("arm64", "irp", noise_pages=4, fit=fit(), ki_bugcheck_driver="leakyflt.sys")
    paths["symbolized"] = str(folder / "symbolized.dmp")
    write_dump(symbolized.data, paths["symbolized"])
    return paths


# ---- the translation tables, from descriptor words written by hand -----------------------------------

# ARMv8-A VMSAv8-64, 4 KiB granule: bits[1:0] 0b11 = table (levels 0-2) or page (level 3), 0b01 = block
# (levels 1-2); AF (bit 10) and SH (bits 9:8) set as an OS sets them; Windows' transition entry: bit 11
# set, bits 10 and 0 clear.
ROOT, LEVEL1, LEVEL2, LEVEL3 = 0x10, 0x11, 0x12, 0x13
HAND_TABLES = {
    ROOT: {0x1FF: 0x0060000000011703,  # -> level-1 table at frame 0x11 (VAs 0xFFFFFF80`00000000 up)
           0x100: 0x0000000000020701,  # a "block" at level 0: the 4 KiB granule has none, so nothing is mapped
           0x10C: 0x0060000000010703},  # the self-map: the top-level table itself
    LEVEL1: {0: 0x0060000040000701,  # a 1 GiB block at 0x40000000
             1: 0x0060000000012703},  # -> level-2 table
    LEVEL2: {0: 0x0060000000600701,  # a 2 MiB block at 0x600000
             1: 0x0060000000013703},  # -> level-3 table
    LEVEL3: {0: 0x0060000000050703,  # a page at 0x50000
             1: 0x0000000000051800,  # in transition: its frame 0x51 still holds the page
             2: 0x0000000000052C00,  # Prototype set too: not a frame of this page
             3: 0x0000000000053701},  # bit 1 clear at level 3: reserved, nothing mapped
}
BASE = 0xFFFFFF8000000000


def hand_made_tables():
    pages = {}
    for frame, entries in HAND_TABLES.items():
        content = bytearray(PAGE_SIZE)
        for index, entry in entries.items():
            struct.pack_into("<Q", content, index * 8, entry)
        pages[frame] = bytes(content)
    read = pages.get
    return PageTables(ARM64.paging, ROOT << 12, read, read)


@pytest.mark.parametrize("virtual, physical", [
    (BASE + 0x12345678, 0x40000000 + 0x12345678),  # inside the 1 GiB block
    (BASE + 0x40000000 + 0x1F1234, 0x600000 + 0x1F1234),  # inside the 2 MiB block
    (BASE + 0x40200000 + 0x10, 0x50010),  # a page
    (BASE + 0x40201000 + 0xFF8, 0x51FF8),  # a page in transition
    (BASE + 0x40202000, None),  # a prototype entry
    (BASE + 0x40203000, None),  # a reserved level-3 encoding
    (0xFFFF800000000000, None),  # under a level-0 "block"
    (0x0000800000000000, None),  # not canonical
    (BASE + 0x80000000, None),  # an empty level-1 entry
])
def test_the_arm64_walk_reads_descriptors_as_the_architecture_defines_them(virtual, physical):
    assert hand_made_tables().walk(virtual) == physical


def test_the_range_walk_gives_each_mapped_page_of_a_range_and_skips_what_maps_nothing_at_once():
    frames_read = []
    tables = hand_made_tables()
    read = tables._page
    tables._page = lambda frame: frames_read.append(frame) or read(frame)
    # The last two pages of the 2 MiB block, then the level-3 table: a page, one in transition, a
    # prototype entry and a reserved encoding (neither maps), then nothing.
    assert tables.mapped_pages(BASE + 0x401FE000, BASE + 0x40205000) == [
        (BASE + 0x401FE000, 0x7FE000), (BASE + 0x401FF000, 0x7FF000),
        (BASE + 0x40200000, 0x50000), (BASE + 0x40201000, 0x51000)]
    assert tables.mapped_pages(BASE + 0x3FFFF000, BASE + 0x40001000) == [
        (BASE + 0x3FFFF000, 0x7FFFF000), (BASE + 0x40000000, 0x600000)]  # the 1 GiB block, then the 2 MiB one
    # 510 GiB that the level-1 table maps nothing of: one read of the top table and one of the level-1 table.
    frames_read.clear()
    assert tables.mapped_pages(BASE + 0x80000000, BASE + (0x1FF << 30)) == []
    assert frames_read == [ROOT, LEVEL1]
    assert tables.mapped_pages(0x0000800000000000, 0x0000800000002000) == []  # not canonical


def test_the_reverse_walk_names_blocks_pages_and_transition_frames_and_skips_the_self_map():
    tables = hand_made_tables()
    found = tables.kernel_addresses([0x40012, 0x601, 0x50, 0x51, 0x52, 0x53, ROOT])
    assert found[0x40012] == BASE + 0x12000  # inside the 1 GiB block
    assert found[0x601] == BASE + 0x40001000  # inside the 2 MiB block
    assert found[0x50] == BASE + 0x40200000 and found[0x51] == BASE + 0x40201000
    assert found[0x52] is None and found[0x53] is None
    assert found[ROOT] is None  # the top-level table is seen only through the self-map
    assert not tables.missing_tables and not tables.repeated_tables


# ---- dumps the writer makes: every dump type, every page ---------------------------------------------

@pytest.mark.parametrize("dump_type", ALL_TYPES)
def test_every_arm64_dump_type_gives_every_page_of_the_scenario(tmp_path, scenarios, dump_type):
    scenario = scenarios["irp"]
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path, dump_type)
    target = open_dump(path)
    try:
        assert (target.arch, target.header.machine, target.build) == ("arm64", MACHINE_ARM64, 26100)
        assert target.hunt_unavailable == ""
        for va, content in scenario.data.pages.items():
            assert target.read(va, PAGE_SIZE) == content
        kdmp_parser = pytest.importorskip("kdmp_parser")
        # An independent reader of the container (it walks no ARM64 tables, so only its pages are compared).
        parser = kdmp_parser.KernelDumpParser(path)
        assert parser.header.BugCheckCode == 0x76 and int(parser.type) == dump_type
        for va, pa in list(scenario.data.physical.items())[::7]:
            assert bytes(parser.pages[pa]) == scenario.data.pages[va] == target.read_physical(pa, PAGE_SIZE)
    finally:
        target.close()


def test_the_writers_self_map_entry_is_what_windows_writes(scenarios):
    """MemProcFS recognises an ARM64 top-level table by its self-map entry:
    (entry & 0x0063fffffffff073) == table | 0x0060000000000003 (reference/arm64-kernel.md)."""
    image = DumpImage(scenarios["irp"].data)
    root = image.pml4 << 12
    self_maps = [index for index in range(512)
                 if image.entry(image.pml4, index) & 0x0063FFFFFFFFF073 == root | 0x0060000000000003]
    assert self_maps == [(0xFFFF860000000000 >> 39) & 0x1FF]


# ---- the 0x76 hunt ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS_0x76)
def test_an_arm64_0x76_dump_gives_the_findings_of_the_scenario(scenarios, dumps, kind):
    scenario = scenarios[kind]
    from_dump = analyze_dump(dumps[kind], scenario)
    assert findings(from_dump) == findings(analyze(SnapshotTarget(scenario.data)))
    assert [m.address for m in from_dump.mdls if m.locked] == sorted(scenario.expected["locked_mdls"])
    assert sorted(i.address for i in from_dump.irps) == sorted(scenario.expected["irps"])
    assert (from_dump.suspects[0].driver if from_dump.suspects else None) == scenario.expected["culprit"]
    if kind != "unlock":
        assert from_dump.locked_pages_accounted == scenario.expected["locked_pages"]


def test_without_symbols_the_stable_tables_name_the_culprit_and_the_report_says_what_is_unknown(capsys, dumps):
    code, report = run_json(capsys, "analyze", dumps["irp"])
    assert code == EXIT_SUSPECT and report["target"] == {"arch": "arm64", "pointer_size": 8, "build": 26100}
    assert report["suspects"][0]["driver"] == "\\Driver\\leakyflt"
    layouts = report["layouts"]
    assert layouts["_MDL"] == "built-in x64 table (used for ARM64: matches the ARM64 headers of build 26100)"
    assert all("used for ARM64" in source for source in layouts.values())
    assert "_EPROCESS" not in layouts and report["process"]["name"] is None
    unknown = [w for w in report["warnings"] if "are unknown for this ARM64 kernel" in w]
    assert len(unknown) == 1 and "_EPROCESS" in unknown[0] and "never applies another architecture's" in unknown[0]
    assert "process names and ids" in unknown[0] and "--symbol-path" in unknown[0]
    used = [w for w in report["warnings"] if "built-in x64 tables were used for" in w]
    assert len(used) == 1 and "_IRP" in used[0] and "_MDL" in used[0]


def test_an_x64_table_is_never_applied_to_an_arm64_kernel_even_of_a_build_that_has_one(tmp_path, capsys):
    scenario = case_0x76("arm64", "irp", noise_pages=2)
    scenario.data.build = 19045  # leakhunt has x64 tables for this build
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path)
    code, report = run_json(capsys, "analyze", path)
    assert code == EXIT_SUSPECT and "_EPROCESS" not in report["layouts"]
    assert not any("build 19045" in source for source in report["layouts"].values())
    assert report["process"]["name"] is None


@pytest.mark.parametrize("how", ["pdb", "isf on the symbol path"])
def test_with_the_kernels_symbols_every_layout_comes_from_them(capsys, dumps, how):
    if how == "pdb":
        arguments, label = ["--symbols", PDB], pdb_label()
    else:
        arguments, label = ["--symbol-path", os.path.join(KERNEL, "isf")], f"isf ntkrnlmp.pdb {fit().guid}-{fit().age}"
    code, report = run_json(capsys, "analyze", dumps["symbolized"], *arguments)
    assert code == EXIT_SUSPECT
    assert set(report["layouts"].values()) == {label} and "_EPROCESS" in report["layouts"]
    assert report["process"] == {"address": report["process"]["address"], "name": "leakapp.exe", "id": 0x3A8}
    assert {f["label"]: f["value"] for f in report["facts"]}["nt!KiBugCheckDriver"] == "leakyflt.sys"
    assert report["suspects"][0]["driver"] == "\\Driver\\leakyflt"
    assert not any("ARM64" in w for w in report["warnings"])
    irp = report["irps"][0]
    assert (irp["thread_process_id"], irp["thread_id"]) == (0x3A8, 0x61C)  # the thread's Cid, through _ETHREAD


@pytest.mark.parametrize("symbols", [False, True], ids=["without symbols", "with symbols"])
def test_an_arm64_private_leak_names_the_driver_that_keeps_the_mdls(tmp_path, capsys, symbols):
    """The locked MDLs no IRP holds (mocks/scenarios_private.py): a device extension, a global and tagged
    pool blocks of shmdrv name it; the copy on the process's kernel stack is placed only where the kernel's
    symbols give ARM64's _KTHREAD stack fields, and names nobody either way."""
    scenario = case_0x76_private("arm64", noise_pages=4, fit=fit() if symbols else None)
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path)
    code, report = run_json(capsys, "analyze", path, *(["--symbols", PDB] if symbols else []))
    assert code == EXIT_SUSPECT
    assert [(s["driver"], s["image"], s["confidence"]) for s in report["suspects"]] == \
        [("\\Driver\\shmdrv", "shmdrv.sys", "high")]  # not innocent.sys nor oldflt.sys of the decoys
    mdls = {int(m["address"], 16): m for m in report["mdls"]}
    assert sorted(a for a, m in mdls.items() if m["locked"]) == sorted(scenario.expected["locked_mdls"])
    for mdl, expected in scenario.expected["holders"].items():
        found = {h["kind"] for h in mdls[mdl]["holders"]}
        assert set(expected) <= found and found <= set(expected) | {"unknown"}, (hex(mdl), found)
    low, high = scenario.expected["stack"]
    (on_stack,) = [h for h in mdls[scenario.expected["locked_mdls"][0]]["holders"] if low <= int(h["address"], 16) < high]
    assert on_stack["kind"] == ("kernel_stack" if symbols else "unknown") and on_stack["evidence"] is None
    everywhere = [h for m in mdls.values() for h in m["holders"]]
    assert scenario.expected["near_miss"] not in {int(h["address"], 16) for h in everywhere}
    assert report["locked_pages"]["accounted"] == scenario.expected["locked_pages"]


def test_an_x64_symbol_file_is_never_used_for_an_arm64_kernel(capsys, dumps):
    code, report = run_json(capsys, "analyze", dumps["irp"], "--symbols", X64_PDB)
    refused = [w for w in report["warnings"] if "does not fit this dump" in w]
    assert len(refused) == 1 and "it is for an x64 kernel, the dump's is ARM64" in refused[0]
    assert not any(source.startswith("pdb") for source in report["layouts"].values())


def test_the_context_record_gives_the_arm64_registers_placed_in_modules(capsys, scenarios, dumps):
    code, report = run_json(capsys, "analyze", dumps["irp"])
    registers = {r["name"]: r for r in report["registers"]}
    assert list(registers) == ["pc", "sp", "fp", "lr"] + [f"x{n}" for n in range(29)]
    assert registers["pc"]["symbol"] == f"nt+{dumpwriter.ARM64_PC_OFFSET:#x}"
    assert registers["lr"]["symbol"] == f"nt+{dumpwriter.ARM64_LR_OFFSET:#x}"
    assert registers["sp"]["value"] == hex(dumpwriter.ARM64_SP) and registers["sp"]["symbol"] is None
    bugcheck = scenarios["irp"].data.bugcheck
    assert [int(registers[f"x{n}"]["value"], 16) for n in range(5)] == [bugcheck.code] + list(bugcheck.parameters)
    main(["analyze", dumps["irp"]])
    text = capsys.readouterr().out
    context = text.split("\nCONTEXT (the crashing processor's registers)\n", 1)[1].split("\n\n", 1)[0]
    pc = int(registers["pc"]["value"], 16)
    assert context.splitlines()[0].split() == ["registers:", "pc", f"{pc >> 32:08x}`{pc & 0xFFFFFFFF:08x}", "sp",
                                               "fffff803`1f7feda0", "fp", "fffff803`1f7fede0"]
    lines = context.splitlines()
    assert len(lines) == 11 + 2  # 33 registers, three a line, then the two that lie in images, named
    assert lines[-2].split() == ["pc", "is", f"nt+{dumpwriter.ARM64_PC_OFFSET:#x}"]
    assert lines[-1].split() == ["lr", "is", f"nt+{dumpwriter.ARM64_LR_OFFSET:#x}"]


def test_a_recording_of_an_arm64_dump_replays_to_the_same_bytes(tmp_path, capsys, dumps):
    snapshot = str(tmp_path / "case.snap")
    assert main(["analyze", dumps["irp"], "--format", "json", "--record", snapshot]) == EXIT_SUSPECT
    recorded = capsys.readouterr().out
    assert main(["replay", snapshot, "--format", "json"]) == EXIT_SUSPECT
    assert capsys.readouterr().out == recorded


@pytest.mark.parametrize("types", [False, True], ids=["no-symbols", "debugger-symbols"])
def test_through_pykd_an_arm64_target_gives_the_findings_of_the_dump(dumps, scenarios, types):
    mocks = os.path.join(os.path.dirname(HERE), "mocks")
    if mocks not in sys.path:
        sys.path.insert(0, mocks)
    control = pytest.importorskip("pykd._control", reason="the stand-in pykd is not available")
    pykd_target = pytest.importorskip("pykd_ext.targets.pykd_target", reason="the pykd target is not available")
    control.load(scenarios["irp"], types=types)
    try:
        target = pykd_target.PykdTarget()
        assert (target.arch, target.pointer_size) == ("arm64", 8)  # the debugger's processor type
        through_pykd = analyze(target)
    finally:
        control.unload()
    if types:  # the debugger's ARM64 type information (the stand-in's covers the I/O and process structures)
        assert through_pykd.layouts["_EPROCESS"] == through_pykd.layouts["_IRP"] == "debugger symbols"
        assert through_pykd.process_name == "leakapp.exe"
        assert not any("unknown for this ARM64 kernel" in w for w in through_pykd.warnings)
    else:
        assert findings(analyze_dump(dumps["irp"], scenarios["irp"])) == findings(through_pykd)
    assert through_pykd.suspects[0].driver == scenarios["irp"].expected["culprit"]


# ---- 0x153 --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lock_entry_dump(tmp_path_factory):
    scenario = case_0x153("arm64", "image-lock", build=26100, noise_pages=2, fit=fit())
    path = str(tmp_path_factory.mktemp("arm64-0x153") / "MEMORY.DMP")
    write_dump(scenario.data, path)
    return scenario, path


def test_an_arm64_0x153_with_symbols_names_the_owner_of_the_leaked_lock(capsys, lock_entry_dump):
    scenario, path = lock_entry_dump
    code, report = run_json(capsys, "analyze", path, "--symbols", PDB)
    assert code == EXIT_SUSPECT
    assert (report["suspects"][0]["image"], report["suspects"][0]["confidence"]) == ("leakyflt.sys", "high")
    assert report["lock"]["location"] == "image" and report["lock"]["module"] == "leakyflt"
    assert int(report["lock"]["address"], 16) == scenario.data.modules[2].base + DRIVER_DATA + 0x40
    thread = report["thread"]
    assert (thread["process_id"], thread["thread_id"], thread["process_name"]) == (4, 0x1F4, "System")
    assert [int(e["address"], 16) for e in report["lock_entries"]][0] == scenario.expected["entry"]


def test_an_arm64_0x153_without_symbols_names_nobody_and_says_why(capsys, lock_entry_dump):
    _, path = lock_entry_dump
    code, report = run_json(capsys, "analyze", path)
    assert code == EXIT_NO_SUSPECT and report["suspects"] == []
    assert report["verdict"].startswith("No driver is named: the lock entry")
    assert "_KLOCK_ENTRY layout" in report["verdict"] and "by the evidence" not in report["verdict"]
    assert any("_KLOCK_ENTRY" in w and "unknown for this ARM64 kernel" in w for w in report["warnings"])


# ---- large blocks, transition entries, the self-map ---------------------------------------------------

MARKER = 0xFFFFD0CAFE0000F0
LARGE_VA, HUGE_VA, PAGED_VA = 0xFFFFD00000000000, 0xFFFFD10000000000, 0xFFFFD20000005000
LARGE_PFN, HUGE_PFN, PAGED_PFN = 0x100000, 0x80000, 0x7F123


def marked_page(value):
    page = bytearray(PAGE_SIZE)
    struct.pack_into("<Q", page, 0x238, value)
    return bytes(page)


def test_blocks_and_transition_pages_are_read_and_searched(tmp_path, scenarios):
    image = DumpImage(scenarios["irp"].data)
    image.map_large(LARGE_VA, LARGE_PFN, 2 << 20)
    image.map_large(HUGE_VA, HUGE_PFN, 1 << 30)
    image.map_transition(PAGED_VA, PAGED_PFN)
    image.pages[LARGE_PFN + 5] = marked_page(MARKER)
    image.pages[HUGE_PFN + 0x12345] = marked_page(MARKER + 0x10)
    image.pages[PAGED_PFN] = marked_page(MARKER + 0x20)
    path = str(tmp_path / "MEMORY.DMP")
    image.write(path)
    target = open_dump(path)
    try:
        assert target.read_u64(LARGE_VA + 5 * PAGE_SIZE + 0x238) == MARKER
        assert target.read_u64(HUGE_VA + 0x12345 * PAGE_SIZE + 0x238) == MARKER + 0x10
        assert target.read_u64(PAGED_VA + 0x238) == MARKER + 0x20
        hits = target.search_pointers([MARKER, MARKER + 0x10, MARKER + 0x20])
        assert [(h.virtual, h.physical) for h in hits[MARKER]] == [
            (LARGE_VA + 5 * PAGE_SIZE + 0x238, (LARGE_PFN + 5) * PAGE_SIZE + 0x238)]
        assert [h.virtual for h in hits[MARKER + 0x10]] == [HUGE_VA + 0x12345 * PAGE_SIZE + 0x238]
        assert [h.virtual for h in hits[MARKER + 0x20]] == [PAGED_VA + 0x238]
        assert target.limitations() == []
    finally:
        target.close()


def test_page_tables_seen_only_through_the_self_map_have_no_kernel_address(tmp_path, scenarios):
    scenario = scenarios["irp"]
    image = DumpImage(scenario.data)
    va, pa = sorted(scenario.data.physical.items())[0]
    descriptor = pa | dumpwriter.ARM64_PAGE_FLAGS  # the level-3 entry that maps the page: it lies in a table
    path = str(tmp_path / "MEMORY.DMP")
    image.write(path)
    target = open_dump(path)
    try:
        hits = target.search_pointers([descriptor])[descriptor]
    finally:
        target.close()
    assert hits and all(h.virtual is None for h in hits)
    assert all((h.physical >> 12) in image.tables for h in hits)


# ---- damaged tables and dumps without memory --------------------------------------------------------

def pool_tables(image, address):
    """(level-1, level-2, level-3) table frames on the way to ``address``."""
    frames, table = [], image.pml4
    for shift in (39, 30, 21):
        table = image.table_frame(image.entry(table, (address >> shift) & 0x1FF))
        frames.append(table)
    return frames


@pytest.mark.parametrize("damage", ["a loop back to a level-1 table", "a table past the end of memory"])
def test_damaged_tables_give_a_warning_and_the_hunt_goes_on(tmp_path, capsys, scenarios, damage):
    scenario = scenarios["irp"]
    image = DumpImage(scenario.data)
    level1, level2, _ = pool_tables(image, scenario.expected["process"])
    if damage.startswith("a loop"):
        image.set_entry(level2, 511, (level1 << 12) | dumpwriter.ARM64_TABLE_FLAGS)
        expected = "reached from more than one entry"
    else:
        image.set_entry(level1, 511, (0xFFFFFF << 12) | dumpwriter.ARM64_TABLE_FLAGS)
        expected = "not in the dump"
    path = str(tmp_path / "MEMORY.DMP")
    image.write(path)
    code, report = run_json(capsys, "analyze", path)
    assert code == EXIT_SUSPECT and report["suspects"][0]["driver"] == scenario.expected["culprit"]
    assert any("kernel page table(s)" in w and expected in w for w in report["warnings"])


@pytest.mark.parametrize("root", ["a page of zeros", "a frame past the end of memory"])
def test_unusable_top_level_tables_say_the_hunt_did_not_run(tmp_path, capsys, scenarios, root):
    scenario = scenarios["irp"]
    image = DumpImage(scenario.data)
    frame = next(pfn for pfn in range(1, 0x100) if pfn not in image.pages and pfn not in image.tables)
    if root == "a page of zeros":
        image.pages[frame] = bytes(PAGE_SIZE)
    else:
        frame = 0xFFFFFFF
    path = str(tmp_path / "MEMORY.DMP")
    image.write(path)
    with open(path, "r+b") as handle:
        handle.seek(H64_DIRECTORY_TABLE_BASE)
        handle.write(struct.pack("<Q", frame << 12))
    code, report = run_json(capsys, "analyze", path)
    assert code == EXIT_NO_HUNT and report["hunt_possible"] is False and report["suspects"] == []
    assert report["verdict"].startswith("The hunt did not run, so no driver is named or cleared: the kernel page "
                                        "tables of MEMORY.DMP cannot be used")
    assert ("maps no kernel address" if root == "a page of zeros" else "is not in the dump") in report["verdict"]
    assert "No driver is named by the evidence" not in json.dumps(report)
    assert report["bugcheck"]["code"] == "0x76" and report["registers"]


def test_an_arm64_dump_without_memory_says_the_hunt_did_not_run_and_keeps_its_context(tmp_path, capsys, dumps):
    path = tmp_path / "MEMORY.DMP"
    path.write_bytes(open(dumps["irp"], "rb").read())
    with open(path, "r+b") as handle:
        handle.seek(H64_DUMP_TYPE)
        handle.write(struct.pack("<I", 2))  # a summary dump
    code, report = run_json(capsys, "analyze", str(path))
    assert code == EXIT_NO_HUNT and report["verdict"].startswith("The hunt did not run")
    assert "DumpType 0x2" in report["verdict"] and len(report["registers"]) == 33


def test_a_truncated_arm64_dump_is_refused_in_one_line(tmp_path, capsys, dumps):
    raw = open(dumps["irp"], "rb").read()
    path = tmp_path / "MEMORY.DMP"
    path.write_bytes(raw[:len(raw) - 3 * PAGE_SIZE])
    assert main(["analyze", str(path)]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is truncated" in err


# ---- the ARM64 test kernel ----------------------------------------------------------------------------

def test_the_arm64_test_kernel_is_an_arm64_kernel_with_the_arm64_layouts():
    """Its PDB and ISF say ARM64 (IMAGE_FILE_MACHINE_ARM64) and hold the offsets of the ARM64 headers of
    build 26100 (ntdiff/headers Win11_2409_24H2/ARM64: _EPROCESS.h, _ETHREAD.h), which differ from x64's."""
    pdb = PdbFile.open(PDB)
    try:
        assert pdb.machine == 0xAA64 and pdb.pointer_size == 8
        eprocess = pdb.type_info("_EPROCESS", ["UniqueProcessId", "ImageFileName", "LockedPagesList"])
        kthread = pdb.type_info("_KTHREAD", ["ApcState.Process", "Process", "KernelAbEntries"])
        ethread = pdb.type_info("_ETHREAD", ["Cid.UniqueThread", "StartAddress"])
    finally:
        pdb.close()
    assert (eprocess.size, kthread.size, ethread.size) == (0x900, 0x4A0, 0x768)
    assert [eprocess.fields[f].offset for f in ("UniqueProcessId", "ImageFileName", "LockedPagesList")] == \
        [0x1C0, 0x328, 0x388]
    assert [kthread.fields[f].offset for f in ("ApcState.Process", "Process", "KernelAbEntries")] == [0xB0, 0x240, 0x490]
    assert [ethread.fields[f].offset for f in ("Cid.UniqueThread", "StartAddress")] == [0x4F0, 0x4C0]
    with open(os.path.join(KERNEL, "ntoskrnl.exe"), "rb") as handle:
        image = handle.read()
    machine_offset = struct.unpack_from("<I", image, 0x3C)[0] + 4  # the PE header's Machine (PE format)
    assert struct.unpack_from("<H", image, machine_offset)[0] == 0xAA64


@pytest.mark.skipif(shutil.which("clang") is None or shutil.which("lld-link") is None,
                    reason="clang and lld-link are not installed: the committed ARM64 test kernel is used as it is")
def test_the_committed_arm64_test_kernel_is_what_the_generator_builds():
    result = subprocess.run([sys.executable, os.path.join(os.path.dirname(HERE), "mocks", "test_kernel.py"),
                             "--arch", "arm64", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- the other hunts ----------------------------------------------------------------------------------

FAMILY = {
    "0xcb-current": lambda **fit: case_0xcb("arm64", "current", noise_pages=2, **fit),
    "0xcb-legacy": lambda **fit: case_0xcb("arm64", "legacy", noise_pages=2, **fit),
    "0xcb-iomgr": lambda **fit: case_0xcb("arm64", "iomgr", noise_pages=2, **fit),
    "tracked-0x76": lambda **fit: case_0x76_tracked("arm64", noise_pages=2, **fit),
    "0xd9-1": lambda: case_0xd9("arm64", 1, noise_pages=2),
    "0xd9-3": lambda: case_0xd9("arm64", 3, noise_pages=2),
    "0x4e-07": lambda: case_0x4e("arm64", 0x07, noise_pages=2),
    "0x4e-9a": lambda: case_0x4e("arm64", 0x9A, noise_pages=2),
    "0x162": lambda: case_0x162("arm64", "image-lock", build=26100, noise_pages=2),
    "0x192": lambda: case_0x192("arm64", "pool-lock", build=26100, noise_pages=2),
}
# Without symbols: the culprit (and its confidence) that what is left names. The lock trackers of 0xCB
# (current form) and of a tracked 0x76 are unknown on ARM64 without symbols, so whoever the IRP names is
# capped at medium (in the tracked case that is ufilter, which pends the IRP: the trackers would name
# leakyflt); 0x192's lock is in pool and its thread's start address needs _ETHREAD, so nobody is named.
WITHOUT_SYMBOLS = {"0xcb-current": ("leakyflt.sys", "medium"), "0xcb-legacy": ("leakyflt.sys", "high"),
                   "0xcb-iomgr": ("leakyflt.sys", "high"), "tracked-0x76": ("ufilter.sys", "medium"),
                   "0xd9-1": ("leakyflt.sys", "medium"), "0xd9-3": ("leakyflt.sys", "medium"),
                   "0x4e-07": ("leakyflt.sys", "medium"), "0x4e-9a": ("leakyflt.sys", "medium"),
                   "0x162": ("leakyflt.sys", "high"), "0x192": None}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_every_hunt_runs_on_an_arm64_dump_as_on_its_memory(tmp_path, name):
    scenario = FAMILY[name]()
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path)
    from_dump = analyze_dump(path, scenario)
    assert findings(from_dump) == findings(analyze(SnapshotTarget(scenario.data)))
    top = from_dump.suspects[0] if from_dump.suspects else None
    assert ((top.image, top.confidence) if top else None) == WITHOUT_SYMBOLS[name]
    if top is not None and top.confidence == "medium" and name in ("0xcb-current", "tracked-0x76"):
        assert "could not be decoded" in top.evidence[-1] and "could name another driver" in top.evidence[-1]


@pytest.mark.parametrize("name", ["0xcb-current", "tracked-0x76"])
def test_with_symbols_the_arm64_lock_trackers_name_the_driver_that_locked_the_pages(tmp_path, capsys, name):
    scenario = FAMILY[name](fit=fit())
    path = str(tmp_path / "MEMORY.DMP")
    write_dump(scenario.data, path)
    code, report = run_json(capsys, "analyze", path, "--symbols", PDB)
    assert code == EXIT_SUSPECT
    top = report["suspects"][0]
    assert (top["image"], top["confidence"]) == ("leakyflt.sys", "high")
    assert report["layouts"]["_LOCK_TRACKER"] == pdb_label()
    tracked = [int(t["address"], 16) for t in report["tracked_locked_pages"]["trackers"]]
    assert tracked == sorted(scenario.expected["trackers"])  # the process's tracker tree, walked through the PDB
