"""PykdTarget over the stand-in pykd: the same findings as replaying the scenario, from symbols or from
the built-in layouts, with the debugger's !search or with leakhunt's own scan of physical memory."""
import dataclasses
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCKS = os.path.join(ROOT, "mocks")
if MOCKS not in sys.path:
    sys.path.insert(0, MOCKS)

import pykd  # noqa: E402,F401  (the stand-in)
from pykd import _control  # noqa: E402

import unwind_harness as harness  # noqa: E402
from mocks.scenarios import KINDS_0x76, case_0x76  # noqa: E402
from pykd_ext.analyses import Options, analyze  # noqa: E402
from pykd_ext.run import run_analysis  # noqa: E402
from pykd_ext.session import KernelSession  # noqa: E402
from pykd_ext.targets.base import (MemoryReadError, Module, PfnRange, SearchUnavailable,  # noqa: E402
                                   TargetError)
from pykd_ext.targets.pykd_target import SEARCH_NATIVE, SEARCH_SCAN, NotKernelTarget, PykdTarget  # noqa: E402
from pykd_ext.targets.snapshot import SnapshotTarget, load_snapshot  # noqa: E402


@pytest.fixture(autouse=True)
def no_target():
    yield
    _control.unload()


def findings(report):
    """The report minus what names the source (its description, its crash time, where layouts and symbols
    came from, the crashing processor's registers, the stack unwound from them and the names of both, how
    many passes its search took: a snapshot collects the IRPs in the pass that finds the MDLs)."""
    result = report.as_dict()
    del result["source"], result["layouts"], result["symbols"], result["crash_time"], result["search_passes"]
    del result["registers"], result["call_stack"], result["names"]
    return result


@pytest.mark.parametrize("arch", ["x64", "x86"])
@pytest.mark.parametrize("kind", KINDS_0x76)
@pytest.mark.parametrize("types", [True, False], ids=["symbols", "no-symbols"])
def test_findings_equal_replaying_the_scenario(arch, kind, types):
    scenario = case_0x76(arch, kind)
    _control.load(scenario, types=types)
    through_pykd = analyze(PykdTarget())
    replayed = analyze(SnapshotTarget(scenario.data))
    assert findings(through_pykd) == findings(replayed)
    if kind != "unlock":  # P1 = 0: no search for the MDLs that IRPs hold or that are not locked
        unheld = [m for m in replayed.mdls if m.locked and not m.irps]
        assert replayed.searches == 1 + bool(unheld) and through_pykd.searches == 1 + bool(replayed.mdls)
    expected_source = "debugger symbols" if types else f"built-in {arch} table"
    assert through_pykd.layouts["_MDL"] == through_pykd.layouts["_IRP"] == expected_source
    if scenario.expected["culprit"]:
        assert through_pykd.suspects[0].driver == scenario.expected["culprit"]


@pytest.mark.parametrize("arch", ["x64", "x86"])
@pytest.mark.parametrize("physical", ["sparse", "full"])
def test_the_scan_finds_what_the_native_search_finds(arch, physical):
    scenario = case_0x76(arch, "irp")
    _control.load(scenario, physical=physical)
    native = PykdTarget(SEARCH_NATIVE)
    scan = PykdTarget(SEARCH_SCAN)
    values = [scenario.expected["process"]] + scenario.expected["locked_mdls"]
    assert scan.search_pointers(values) == native.search_pointers(values)
    assert findings(analyze(scan)) == findings(analyze(SnapshotTarget(scenario.data)))


def test_target_facts_x86_are_cut_back_to_32_bits():
    scenario = case_0x76("x86", "unlock")
    _control.load(scenario)
    target = PykdTarget()
    assert (target.arch, target.pointer_size, target.build) == ("x86", 4, scenario.data.build)
    assert target.max_pfn == scenario.data.max_pfn
    assert target.bugcheck() == scenario.data.bugcheck
    assert target.symbol("nt!KiBugCheckDriver") == scenario.data.symbols["nt!KiBugCheckDriver"]
    assert sorted(target.modules(), key=lambda m: m.base) == sorted(scenario.data.modules, key=lambda m: m.base)
    address = scenario.expected["unlock_mdl"]
    assert target.read(address, 0x1C) == SnapshotTarget(scenario.data).read(address, 0x1C)
    assert "pykd 0.3.4.15" in target.description


def test_type_info_walks_nested_fields_and_is_none_without_symbols():
    _control.load(case_0x76("x64", "irp"))
    target = PykdTarget()
    info = target.type_info("nt!_IRP", ["MdlAddress", "Tail.Overlay.Thread", "Tail.Overlay.CurrentStackLocation",
                                        "NoSuchField", "Tail.NoSuch"])
    assert info.size == 0xD0 and target.has_type_info
    assert {name: (f.offset, f.size) for name, f in info.fields.items()} == {
        "MdlAddress": (0x8, 8), "Tail.Overlay.Thread": (0x98, 8), "Tail.Overlay.CurrentStackLocation": (0xB8, 8)}
    assert target.type_info("nt!_NO_SUCH_TYPE", ["X"]) is None
    _control.load(case_0x76("x64", "irp"), types=False)
    target = PykdTarget()
    assert target.type_info("nt!_IRP", ["MdlAddress"]) is None and not target.has_type_info


def test_errors_become_target_errors():
    scenario = case_0x76("x64", "irp")
    _control.load(scenario)
    target = PykdTarget()
    with pytest.raises(MemoryReadError):
        target.read(0xFFFFF80000000000, 8)
    with pytest.raises(MemoryReadError):
        target.read_physical(0, 8)
    va = min(scenario.data.physical)
    assert target.read_physical(scenario.data.physical[va], 16) == scenario.data.pages[va][:16]
    with pytest.raises(TargetError, match="not found"):
        target.symbol("nt!NoSuchSymbol")
    with pytest.raises(TargetError, match="Failed to find module"):
        target.symbol("nosuchmodule!X")


def test_modules_fall_back_to_ps_loaded_module_list():
    scenario = case_0x76("x86", "irp")
    _control.load(scenario, modules_list=False)
    assert PykdTarget().modules() is None  # the debugger cannot list them: the session walks the list
    walked = KernelSession(PykdTarget()).modules()
    assert sorted(walked, key=lambda m: m.base) == sorted(scenario.data.modules, key=lambda m: m.base)
    symbols = {k: v for k, v in scenario.data.symbols.items() if k != "nt!PsLoadedModuleList"}
    _control.load(dataclasses.replace(scenario.data, symbols=symbols), modules_list=False)
    with pytest.raises(TargetError, match="PsLoadedModuleList is unknown"):
        KernelSession(PykdTarget()).modules()


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_bugcheck_falls_back_to_the_bugcheck_command(arch):
    scenario = case_0x76(arch, "irp")
    _control.load(scenario, bugcheck_data=False)
    assert PykdTarget().bugcheck() == scenario.data.bugcheck
    _control.load(scenario, bugcheck_data=False, bugcheck_command=False)
    with pytest.raises(NotKernelTarget, match="no bug check data"):
        PykdTarget().bugcheck()


def test_a_user_mode_target_is_refused():
    _control.load(case_0x76("x64", "irp"), kernel=False)
    with pytest.raises(NotKernelTarget, match="user-mode"):
        PykdTarget()


@pytest.mark.parametrize("arch, columns", [("x64", "backtick"), ("x64", "plain"), ("x86", "backtick")])
def test_native_search_keeps_exact_hits_only(arch, columns):
    scenario = case_0x76(arch, "irp")
    process = scenario.expected["process"]
    _control.load(scenario, x64_columns=columns)
    hits = PykdTarget().search_pointers([process])[process]
    assert hits == SnapshotTarget(scenario.data).search_pointers([process])[process]
    assert hits and all(hit.value == process for hit in hits)
    raw = pykd.dbgCommand(f"!search {process:#x} 0")
    assert raw.count("\n") - 5 > len(hits)  # the debugger also printed one-bit neighbours


def test_native_search_respects_the_pfn_range_and_missing_virtual_addresses():
    scenario = case_0x76("x64", "irp")
    process = scenario.expected["process"]
    every = SnapshotTarget(scenario.data).search_pointers([process])[process]
    pfns = sorted({hit.physical >> 12 for hit in every})
    assert len(pfns) > 1
    hidden_va = next(va for va, pa in scenario.data.physical.items() if pa >> 12 == pfns[0])
    _control.load(scenario, hide_va=[hidden_va])
    target = PykdTarget()
    in_range = target.search_pointers([process], PfnRange(pfns[0], pfns[0]))[process]
    assert in_range and {hit.physical >> 12 for hit in in_range} == {pfns[0]}
    assert all(hit.virtual is None for hit in in_range)  # !search printed no Va for that page
    assert [hit.physical for hit in in_range] == sorted(h.physical for h in every if h.physical >> 12 == pfns[0])


def test_search_reports_progress_and_lets_ctrl_break_through():
    scenario = case_0x76("x64", "irp")
    _control.load(scenario)
    seen = []
    values = [scenario.expected["process"]] + scenario.expected["locked_mdls"]
    PykdTarget().search_pointers(values, progress=lambda done, total: seen.append((done, total)))
    assert len(seen) == len(values) + 1 and seen[-1][0] == seen[-1][1] > 0
    target = PykdTarget()
    _control.interrupt("dbgCommand", call=_control.calls()["dbgCommand"] + 2)
    with pytest.raises(SystemExit, match="CTRL\\+BREAK"):
        target.search_pointers(values)


def test_search_unavailable_says_why():
    scenario = case_0x76("x64", "irp")
    _control.load(scenario, search_extension=False)
    with pytest.raises(SearchUnavailable, match="No export search found"):
        PykdTarget().search_pointers([scenario.expected["process"]])
    report = analyze(PykdTarget())
    assert not report.complete_hunt and any("No export search found" in w for w in report.warnings)
    symbols = {k: v for k, v in scenario.data.symbols.items() if k != "nt!MmHighestPhysicalPage"}
    _control.load(dataclasses.replace(scenario.data, symbols=symbols, max_pfn=None))
    with pytest.raises(SearchUnavailable, match="highest physical page is unknown"):
        PykdTarget(SEARCH_SCAN).search_pointers([scenario.expected["process"]])


@pytest.mark.parametrize("printed, message", [
    ("Searching PFNs in range 00001000 - 00004FFF for [FFFFA58A1C000000 - FFFFA58A1C000000]\n\n"
     "Pfn      Offset   Hit      Va       Pte\n- - - -\n", "stopped before 'Search done.'"),
    ("Searching PFNs in range 00001000 - 00004FFF for [0000000000001234 - 0000000000001234]\nSearch done.\n",
     "searched for 0x1234 instead"),
    ("Couldn't resolve error at 'ffffa58a1c000000 0'\n", "did not run: Couldn't resolve error"),
])
def test_search_output_that_cannot_be_trusted_is_not_used(monkeypatch, printed, message):
    scenario = case_0x76("x64", "irp")
    _control.load(scenario)
    target = PykdTarget()
    monkeypatch.setattr(pykd, "dbgCommand", lambda command, suppress=True, mask=1: printed)
    with pytest.raises(SearchUnavailable, match=message):
        target.search_pointers([scenario.expected["process"]])


# ---- the crashing processor's context and the stack unwound from it ----------------------------------

def test_the_stack_is_unwound_from_the_debuggers_context_through_its_memory(tmp_path):
    """A crash stopped in the clang-built test image's innermost leaf (run under an x86-64 emulator, which
    records every live call): through pykd, the registers of the debugger's context (``reg``) and the
    image and stack in its memory give the frames the emulator recorded, and a recording replays them."""
    pytest.importorskip("unicorn")
    pe, symbols = harness.MappedPe(harness.TEST_IMAGE), harness.read_link_map()
    emulation = harness.Emulation(pe)
    emulation.stop_at = symbols["deepest_point"]
    emulation.run(symbols["asm_chain"])
    scenario = case_0x76("x64", "irp", noise_pages=0)
    harness.crash_in_scene(scenario.data, emulation, Module("unwind_x64", "unwind_x64.exe", harness.IMAGE_BASE, pe.size))
    _control.load(scenario)
    snapshot = str(tmp_path / "case.snap")
    report = run_analysis(PykdTarget(), Options(), record_path=snapshot)
    stack = report.call_stack
    assert stack.start == "the crashing processor's context" and stack.complete
    assert [frame.return_address for frame in stack.frames] == \
        [call.return_address for call in emulation.live_calls()] + [0]
    assert [frame.ip for frame in stack.frames[1:]] == [call.return_address for call in emulation.live_calls()]
    assert stack.frames[0].symbol == f"unwind_x64+{symbols['deepest_point'] - harness.IMAGE_BASE:#x}"
    assert {r.name: r.value for r in report.registers}["rip"] == symbols["deepest_point"]
    _control.unload()
    assert analyze(SnapshotTarget(load_snapshot(snapshot))).as_dict()["call_stack"] == report.as_dict()["call_stack"]
