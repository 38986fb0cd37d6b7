"""Small memory dumps: the triage section of the two real samples, generated small dumps checked against their
scenario's truth, damaged triage sections, and the faulting-code-address suspect on every source."""
import hashlib
import json
import lzma
import os
import struct

import pytest

from mocks.dumpwriter import SMALL_DUMP_STACK_VA, add_crashing_thread as crashing_thread, write_small_dump
from mocks.scenarios import case_0x76
from mocks.scenarios_family import case_0x153, case_0xcb
from pykd_ext.sources import open_dump
from pykd_ext.analyses import analyze
from pykd_ext.cli import main
from pykd_ext.console import EXIT_INPUT, EXIT_NO_HUNT, EXIT_NO_SUSPECT, EXIT_SUSPECT
from pykd_ext.layouts import builtin_layout
from pykd_ext.render.text import render_text
from pykd_ext.targets.base import MemoryReadError, SearchUnavailable
from pykd_ext.targets.smalldump import SmallDumpTarget
from pykd_ext.targets.snapshot import SnapshotTarget

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
TRIAGE_X64 = os.path.join(SHARED, "samples", "triage_x64.dmp")
TRIAGE_ARM64 = os.path.join(SHARED, "samples", "triage_arm64.dmp")
# The real symbol table of the x64 sample's kernel (10.0.19041.804), as the checkout ships it.
ISF_19041 = os.path.join(ROOT, "tests", "data", "symbols", "windows", "ntkrnlmp.pdb",
                         "5278AFF86C341677D7D7835C85B7B844-1.json.xz")
needs_samples = pytest.mark.skipif(not os.path.exists(TRIAGE_X64), reason="the real sample dumps are not here")


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def json_report(capsys, *arguments):
    code = main(["analyze", *arguments, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


# ---- the real samples ---------------------------------------------------------------------------

SAMPLES = {
    # path: (drivers, nt base, process name, unloaded drivers, the parameter placed in an image)
    "x64": (TRIAGE_X64, 151, 0xFFFFF8047BA00000, "System",
            ["dam.sys", "WdBoot.sys", "hwpolicy.sys", "mcupdate.dll"], (2, "amdppm.sys", "amdppm+0x334c")),
    "arm64": (TRIAGE_ARM64, 245, 0xFFFFF803F2E00000, None,
              ["MSKSSRV.sys", "WdFilter.sys", "WdNisDrv.sys", "WdNisDrv.sys", "dump_storpor", "dump_storufs",
               "dump_dumpfve", "WUDFRd.sys", "WUDFRd.sys", "WUDFRd.sys", "WdBoot.sys"], (2, "ntoskrnl.exe", "nt+0xc20860")),
}


@needs_samples
@pytest.mark.parametrize("arch", sorted(SAMPLES))
def test_the_triage_section_of_a_real_small_dump(arch):
    path, drivers, nt_base, _, unloaded, _ = SAMPLES[arch]
    target = open_dump(path)
    try:
        assert isinstance(target, SmallDumpTarget) and target.limitations() == []
        modules = target.modules()
        assert len(modules) == drivers
        nt = modules[0]
        assert (nt.name, nt.image, nt.base) == ("nt", "ntoskrnl.exe", nt_base)
        assert nt.contains(target.header.ps_loaded_module_list)  # the header's kernel global lies inside nt
        assert all(m.timestamp is not None for m in modules)
        facts = target.crash_facts()
        assert [u.image for u in facts.unloaded] == unloaded
        assert all(u.start < u.end for u in facts.unloaded)
        assert facts.broken_driver is None  # neither crash had the kernel name a culprit
        # The copies are mapped where they came from; the stack starts at TopOfStack.
        stack_base, stack_size = facts.stack
        assert stack_base == target.triage.top_of_stack and stack_size == target.triage.fields["SizeOfCallStack"]
        assert len(target.read(stack_base, stack_size)) == stack_size
        assert target.read_pointer(facts.thread + 8) == facts.thread + 8  # the thread's empty wait list
        assert target.read_pointer(facts.process + 8) == facts.process + 8
        with pytest.raises(MemoryReadError, match="not in this small dump"):
            target.read(0x7FF000000000, 8)  # user memory is not in a small dump
        with pytest.raises(SearchUnavailable, match="small memory dump"):
            target.search_pointers([facts.process])
    finally:
        target.close()


@needs_samples
@pytest.mark.parametrize("arch", sorted(SAMPLES))
def test_a_real_small_dump_report(capsys, arch):
    path, drivers, _, process_name, unloaded, (index, module, symbol) = SAMPLES[arch]
    before = digest(path)
    code, report = json_report(capsys, path)
    assert digest(path) == before
    parameters = report["bugcheck"]["parameters"]
    assert (parameters[index - 1]["module"], parameters[index - 1]["symbol"]) == (module, symbol)
    assert all(p["module"] is None for p in parameters if p["index"] != index)
    assert len(report["modules"]) == drivers and "ntoskrnl.exe" in [m["image"] for m in report["modules"]]
    assert [u["image"] for u in report["unloaded_modules"]] == unloaded
    assert [u["image"] for u in report["unloaded_modules"] if u["truncated"]] == [
        name for name in unloaded if "." not in name]  # a small dump keeps 12 characters of a name
    assert report["process"]["name"] == process_name
    facts = {f["label"]: f["value"] for f in report["facts"]}
    assert facts["broken driver (the small dump's copy of nt!KiBugCheckDriver)"] == "none recorded"
    # Every stack candidate lies inside the module the report names, as the module list has it.
    by_name = {m["name"]: m for m in report["modules"]}
    stack = report["stack"]
    assert stack["method"] == "scan" and stack["candidates"]
    for candidate in stack["candidates"]:
        module_record = by_name[candidate["module"]]
        value = int(candidate["value"], 16)
        assert int(module_record["base"], 16) <= value < int(module_record["end"], 16)
        assert candidate["symbol"] == f"{candidate['module']}+{value - int(module_record['base'], 16):#x}"
    slots = [int(c["slot"], 16) for c in stack["candidates"]]
    assert slots == sorted(slots) and slots[0] >= int(stack["base"], 16)
    if arch == "x64":
        assert code == EXIT_SUSPECT
        assert report["suspects"][0]["image"] == "amdppm.sys" and report["suspects"][0]["confidence"] == "medium"
        assert report["suspects"][0]["evidence"] == [
            "P2, the address where the exception occurred, is in amdppm.sys (amdppm+0x334c)"]
        assert report["process"]["id"] == 4
        thread = report["thread"]
        assert thread["process_id"] == 4 and thread["thread_id"] == 0x108 and thread["start_module"] == "nt"
        registers = {r["name"]: r for r in report["registers"]}
        assert registers["rip"]["value"] == "0xfffff8048b58334c" and registers["rip"]["symbol"] == "amdppm+0x334c"
    else:  # 0x1C8 has no hunt: what a kernel dump would add to a hunt is not said
        assert code == EXIT_NO_SUSPECT and report["suspects"] == [] and report["hunt_possible"] is True
        assert not any("MDL" in w or "the hunt reads and searches" in w for w in report["warnings"])
        registers = {r["name"]: r for r in report["registers"]}
        assert list(registers) == ["pc", "sp", "fp", "lr"] + [f"x{n}" for n in range(29)]
        # KeBugCheckEx's caller keeps the bug check's parameters in callee-saved registers: P1 and P2 are in
        # x25 and x26 of this dump's context record (X0-X28 from 0x8, 8 bytes each).
        assert (registers["x25"]["value"], registers["x26"]["value"]) == (parameters[0]["value"], parameters[1]["value"])
        assert registers["pc"]["symbol"].startswith("nt+")  # KeBugCheckEx's caller chain runs in nt
        assert registers["sp"]["value"] == stack["base"]  # the stack copy starts at the stack pointer
        assert any("_EPROCESS layout is unknown" in w for w in report["warnings"])
    # Neither bug check has a hunt: what a kernel dump would add to one is not said.
    assert not any("small memory dump" in w for w in report["warnings"])


@needs_samples
def test_the_text_report_of_a_real_small_dump_stays_short(capsys):
    main(["analyze", TRIAGE_X64])
    text = capsys.readouterr().out
    assert "P2 is amdppm+0x334c (amdppm.sys)" in text
    assert "STACK (k, unwound from the exception's context" in text and "not an unwound stack" not in text
    assert "151 loaded (-v lists them, like lm t)" in text
    assert "dam.sys" in text and "ntoskrnl.exe" not in text.split("MODULES")[1]
    main(["analyze", TRIAGE_X64, "-v"])
    verbose = capsys.readouterr().out
    assert "ntoskrnl.exe" in verbose.split("MODULES")[1] and "rdpbus.sys" in verbose
    assert "not an unwound stack" in verbose  # -v adds the scan of the whole stack copy


@pytest.mark.skipif(not os.path.exists(ISF_19041), reason="the real 19041 symbol table is not here")
@pytest.mark.parametrize("name", ["_EPROCESS", "_KTHREAD", "_ETHREAD", "_KLOCK_ENTRY", "_LOCK_HEADER", "_LOCK_TRACKER"])
def test_the_19041_offsets_are_those_of_its_real_symbol_table(name):
    types = json.load(lzma.open(ISF_19041))["user_types"]

    def offset(structure, path):
        total = 0
        for part in path.split("."):
            member = types[structure]["fields"][part]
            total += member["offset"]
            kind = member["type"]
            while kind["kind"] == "array":
                kind = kind["subtype"]
            structure = kind.get("name")
        return total

    layout = builtin_layout(name, 8, 19041)
    assert layout.size == types[name]["size"]
    for field, value in layout.offsets.items():
        assert offset(name, field) == value, field


# ---- generated small dumps: each checked against its scenario's truth ---------------------------

def module(data, image):
    return next(m for m in data.modules if m.image == image)


def test_a_small_dump_of_legacy_0xcb_names_the_driver(tmp_path, capsys):
    scenario = case_0xcb("x64", "legacy", noise_pages=1)
    data = scenario.data
    p1, p2, p3, p4 = data.bugcheck.parameters
    culprit, nt = module(data, scenario.expected["culprit_image"]), module(data, "ntoskrnl.exe")
    thread = crashing_thread(data, scenario.expected["process"], nt.base + 0x3000)
    path = str(tmp_path / "Mini-0xcb.dmp")
    write_small_dump(data, path, thread, scenario.expected["process"], blocks=[(p3, 0x40)],
                     stack_values=[nt.base + 0x1234, 0x1000, p1, p2, nt.base + 0x5678],
                     broken_driver="leakyflt.sys", unloaded=[("olddrv.sys", 0xFFFFF80700000000, 0xFFFFF80700010000)])
    code, report = json_report(capsys, path)
    assert code == EXIT_SUSPECT
    top = report["suspects"][0]
    assert top["image"] == scenario.expected["culprit_image"] and top["confidence"] == "high"
    assert any("legacy 0xCB: P1" in e for e in top["evidence"])
    assert any("copy of nt!KiBugCheckDriver names leakyflt.sys" in e for e in top["evidence"])
    parameters = report["bugcheck"]["parameters"]
    assert parameters[0]["symbol"] == f"leakyflt+{p1 - culprit.base:#x}" and parameters[0]["module"] == "leakyflt.sys"
    assert parameters[1]["symbol"] == f"leakyflt+{p2 - culprit.base:#x}"
    # P3's MDL is in a data block: decoded; what holds it would need the search a small dump cannot do.
    assert [m["address"] for m in report["mdls"]] == [hex(p3)] and report["mdls"][0]["pages"] == p4
    assert report["hunt_possible"] is False
    assert any("memory search is not possible" in w for w in report["warnings"])
    assert report["process"]["name"] == report["thread"]["process_name"] == "leakapp.exe"
    assert report["thread"]["thread_id"] == 0x1F4 and report["thread"]["start_symbol"] == "nt+0x3000"
    facts = {f["label"]: f["value"] for f in report["facts"]}
    assert facts["broken driver (the small dump's copy of nt!KiBugCheckDriver)"] == "leakyflt.sys"
    assert "nt!KiBugCheckDriver" not in facts  # the dump's copy answers what the symbol could not
    assert [c["value"] for c in report["stack"]["candidates"]] == [hex(nt.base + 0x1234), hex(p1), hex(p2),
                                                                   hex(nt.base + 0x5678)]
    assert int(report["stack"]["base"], 16) == SMALL_DUMP_STACK_VA
    assert report["unloaded_modules"] == [{"image": "olddrv.sys", "start": "0xfffff80700000000",
                                           "end": "0xfffff80700010000", "truncated": False}]


def test_a_small_dump_of_0x76_says_what_it_can_and_exits_4(tmp_path, capsys):
    scenario = case_0x76("x64", "irp", noise_pages=1)
    data = scenario.data
    victim = scenario.expected["process"]
    nt = module(data, "ntoskrnl.exe")
    thread = crashing_thread(data, victim, nt.base + 0x3000)
    path = str(tmp_path / "Mini-0x76.dmp")
    write_small_dump(data, path, thread, victim, stack_values=[nt.base + 0x1234])
    code, report = json_report(capsys, path)
    assert code == EXIT_NO_HUNT and report["suspects"] == [] and report["hunt_possible"] is False
    explanation = [w for w in report["warnings"] if "small memory dump" in w]
    assert len(explanation) == 1 and explanation[0].count(". ") == 0
    assert "Kernel memory dump" in explanation[0] and "CrashDumpEnabled" in explanation[0]
    assert report["process"] == {"address": hex(victim), "name": "leakapp.exe", "id": 0x3A8}  # the scene's first PID
    facts = {f["label"]: f["value"] for f in report["facts"]}
    assert facts["EPROCESS.NumberOfLockedPages"] == str(scenario.expected["locked_pages"])
    explanation = [w for w in report["warnings"] if "small memory dump" in w]
    assert len(explanation) == 1 and "Kernel memory dump" in explanation[0]
    assert scenario.expected["culprit_image"] not in json.dumps(report["suspects"])


def test_a_small_dump_of_0x153_names_the_lock_owner(tmp_path, capsys):
    scenario = case_0x153("x64", "image-lock", noise_pages=1)
    data = scenario.data
    truth = scenario.expected
    ethread = builtin_layout("_ETHREAD", 8, 19045)
    path = str(tmp_path / "Mini-0x153.dmp")
    write_small_dump(data, path, truth["thread"], truth["process"], thread_size=ethread.size,
                     stack_values=[truth["start"]])
    code, report = json_report(capsys, path)
    assert code == EXIT_SUSPECT
    assert report["suspects"][0]["image"] == truth["culprit_image"]
    assert report["suspects"][0]["confidence"] == truth["confidence"]
    assert report["lock"]["location"] == truth["lock_location"]
    assert int(report["thread"]["address"], 16) == truth["thread"]


def test_a_parameter_in_an_unloaded_driver_names_it(tmp_path, capsys):
    scenario = case_0x76("x64", "nothing", noise_pages=1)
    data = scenario.data
    data.bugcheck = type(data.bugcheck)(0x1000007E, (0xC0000005, 0xFFFFF80700001234, 0, 0))
    nt = module(data, "ntoskrnl.exe")
    path = str(tmp_path / "Mini-unloaded.dmp")
    write_small_dump(data, path, crashing_thread(data, scenario.expected["process"], nt.base + 0x3000),
                     scenario.expected["process"],
                     unloaded=[("gonedrv.sys", 0xFFFFF80700000000, 0xFFFFF80700010000)])
    code, report = json_report(capsys, path)
    assert code == EXIT_SUSPECT
    parameter = report["bugcheck"]["parameters"][1]
    assert (parameter["module"], parameter["symbol"], parameter["unloaded"]) == ("gonedrv.sys", "gonedrv+0x1234",
                                                                                 True)
    assert report["suspects"][0]["image"] == "gonedrv.sys"
    assert "loaded before it was unloaded" in report["suspects"][0]["evidence"][0]
    capsys.readouterr()
    main(["analyze", path])
    assert "P2 is gonedrv+0x1234 (gonedrv.sys, unloaded before the crash)" in capsys.readouterr().out


# ---- damaged triage sections --------------------------------------------------------------------

def small_dump(tmp_path):
    scenario = case_0x76("x64", "nothing", noise_pages=1)
    data = scenario.data
    nt = module(data, "ntoskrnl.exe")
    data.bugcheck = type(data.bugcheck)(0x7E, (0xC0000005, module(data, "ntoskrnl.exe").base + 0x4444, 0, 0))
    path = str(tmp_path / "Mini.dmp")
    write_small_dump(data, path, crashing_thread(data, scenario.expected["process"], nt.base + 0x3000),
                     scenario.expected["process"], stack_values=[nt.base + 0x1234])
    return path


def patch(path, offset, value, width=4):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(value.to_bytes(width, "little") if isinstance(value, int) else value)


def triage_field(path, name):
    from pykd_ext.targets.triage import TRIAGE64_TAIL, TRIAGE_FIELDS, TRIAGE_TAIL_FIELDS
    with open(path, "rb") as handle:
        if name in TRIAGE_FIELDS:
            handle.seek(0x2000 + 4 * TRIAGE_FIELDS.index(name))
        else:
            handle.seek(0x2000 + TRIAGE64_TAIL + 4 * TRIAGE_TAIL_FIELDS.index(name))
        return struct.unpack("<I", handle.read(4))[0]


@pytest.mark.parametrize("damage", ["TRGD", "DriverCount", "name outside the pool", "block past the end",
                                    "string pool past the end", "unloaded count"])
def test_a_damaged_triage_section_is_a_warning_and_the_header_report(tmp_path, capsys, damage):
    path = small_dump(tmp_path)
    if damage == "TRGD":
        patch(path, triage_field(path, "ValidOffset"), b"XXXX")
    elif damage == "DriverCount":
        patch(path, 0x2000 + 4 * 13, 0xFFFFFF)
    elif damage == "name outside the pool":
        patch(path, triage_field(path, "DriverListOffset"), 0x10)
    elif damage == "block past the end":
        patch(path, triage_field(path, "DataBlocksOffset") + 8, 0x7FFFFFF0)
    elif damage == "string pool past the end":
        patch(path, 0x2000 + 4 * 15, 0x7FFFFFFF)
    else:
        patch(path, triage_field(path, "UnloadedDriversOffset"), 0x10000)
    code, report = json_report(capsys, path)
    assert code == EXIT_NO_SUSPECT  # 0x7E has no hunt: nothing was hunted, the damage is said
    assert report["bugcheck"]["code"] == "0x7e" and report["modules"] == []
    damaged = [w for w in report["warnings"] if "triage section of Mini.dmp is damaged" in w]
    assert len(damaged) == 1 and "only its header is read" in damaged[0]
    assert not any("the hunt reads and searches" in w for w in report["warnings"])


def test_the_generated_small_dump_is_intact_before_damage(tmp_path, capsys):
    """The control of the damage tests: the undamaged file gives modules, a thread and a suspect."""
    path = small_dump(tmp_path)
    code, report = json_report(capsys, path)
    assert report["modules"] and not any("damaged" in w for w in report["warnings"])
    assert report["thread"] and report["stack"]["candidates"]
    assert any(f["label"].startswith("P2 (") and f["value"].startswith("nt+") for f in report["facts"])


# ---- the faulting code address on any source with modules ---------------------------------------

@pytest.mark.parametrize("code, index", [(0xD1, 4), (0x1000008E, 2), (0x50, 3), (0x3B, 2), (0xA, 4)])
def test_the_faulting_code_address_names_its_driver_on_a_snapshot(code, index):
    scenario = case_0x76("x64", "nothing", noise_pages=1)
    data = scenario.data
    driver = module(data, "innocent.sys")
    parameters = [0x10, 2, 0, 0]
    parameters[index - 1] = driver.base + 0x1A2B
    data.bugcheck = type(data.bugcheck)(code, tuple(parameters))
    report = analyze(SnapshotTarget(data))
    assert [s.image for s in report.suspects] == ["innocent.sys"]
    assert report.suspects[0].confidence == "medium"
    assert report.suspects[0].evidence[0].startswith(f"P{index}, ") and "innocent+0x1a2b" in report.suspects[0].evidence[0]
    assert report.bugcheck.parameters[index - 1].symbol == "innocent+0x1a2b"
    assert "innocent+0x1a2b (innocent.sys)" in render_text(report)


def test_a_fault_in_nt_names_no_suspect_and_says_why():
    scenario = case_0x76("x64", "nothing", noise_pages=1)
    data = scenario.data
    nt = module(data, "ntoskrnl.exe")
    data.bugcheck = type(data.bugcheck)(0x7E, (0xC0000005, nt.base + 0x4444, 0, 0))
    report = analyze(SnapshotTarget(data))
    assert report.suspects == []
    fact = next(f for f in report.facts if f.label.startswith("P2 ("))
    assert fact.value == "nt+0x4444" and "usually caused by a driver" in fact.note


def test_a_zero_or_unplaced_code_address_names_nobody():
    scenario = case_0x76("x64", "nothing", noise_pages=1)
    data = scenario.data
    for parameters, warning in (((0x10, 2, 0, 0), "P3, the address of the instruction that referenced the memory, is 0"),
                                ((0x10, 2, 0xFFFFF80799990000, 0), "is in no loaded or unloaded image")):
        data.bugcheck = type(data.bugcheck)(0x50, parameters)
        report = analyze(SnapshotTarget(data))
        assert report.suspects == [] and any(warning in w for w in report.warnings)


# ---- recording a small dump ---------------------------------------------------------------------

@pytest.mark.parametrize("output", ["json", "text"])
def test_a_recorded_small_dump_replays_to_the_same_bytes(tmp_path, capsys, output):
    paths = [TRIAGE_X64, TRIAGE_ARM64] if os.path.exists(TRIAGE_X64) else []
    scenario = case_0xcb("x64", "legacy", noise_pages=1)
    data = scenario.data
    generated = str(tmp_path / "Mini.dmp")
    write_small_dump(data, generated, crashing_thread(data, scenario.expected["process"], data.modules[0].base + 0x3000),
                     scenario.expected["process"], blocks=[(data.bugcheck.parameters[2], 0x40)],
                     stack_values=[data.modules[0].base + 0x1234], broken_driver="leakyflt.sys",
                     unloaded=[("olddrv.sys", 0xFFFFF80700000000, 0xFFFFF80700010000)])
    for dump in paths + [generated]:
        snapshot = str(tmp_path / (os.path.basename(dump) + ".snap"))
        analyzed = main(["analyze", dump, "--format", output, "--record", snapshot])
        recorded = capsys.readouterr().out
        replayed_code = main(["replay", snapshot, "--format", output])
        replayed = capsys.readouterr().out
        assert analyzed == replayed_code and recorded == replayed, dump
        if output == "json":
            report = json.loads(replayed)
            assert report["stack"]["candidates"] and report["unloaded_modules"]
            assert report["hunt_possible"] is (dump != generated)  # 0xCB has a hunt; the real dumps' codes none
            assert all(m["timestamp"] for m in report["modules"])


def test_a_recording_refuses_what_a_small_dump_did_not_hold(tmp_path, capsys):
    """Pages a small dump holds in part replay in part: a read beyond the held bytes fails as it did."""
    from pykd_ext.run import run_analysis
    from pykd_ext.analyses import Options

    scenario = case_0x76("x64", "nothing", noise_pages=1)
    data = scenario.data
    nt = data.modules[0]
    path = str(tmp_path / "Mini.dmp")
    process = scenario.expected["process"]
    write_small_dump(data, path, crashing_thread(data, process, nt.base + 0x3000), process,
                     stack_values=[nt.base + 0x1234, nt.base + 0x2345])
    snapshot = str(tmp_path / "case.snap")
    run_analysis(open_dump(path), Options(), record_path=snapshot)
    replay = SnapshotTarget.open(snapshot)
    dump = open_dump(path)
    try:
        assert replay.read(SMALL_DUMP_STACK_VA, 16) == dump.read(SMALL_DUMP_STACK_VA, 16)
        for target in (replay, dump):
            with pytest.raises(MemoryReadError):
                target.read(SMALL_DUMP_STACK_VA - 8, 16)  # the 8 bytes before the stack copy were never held
            with pytest.raises(MemoryReadError):
                target.read(SMALL_DUMP_STACK_VA + 16, 8)
        assert replay.crash_facts() == dump.crash_facts()
        assert replay.modules() == dump.modules()
    finally:
        dump.close()


@needs_samples
@pytest.mark.skipif(not os.path.exists(ISF_19041), reason="the real 19041 symbol table is not here")
def test_the_kernels_own_symbols_fit_a_small_dump_through_its_driver_list(capsys):
    """nt's base comes from the triage driver list; the header's globals check the symbol file against it."""
    code, report = json_report(capsys, TRIAGE_X64, "--symbols", ISF_19041)
    assert code == EXIT_SUSPECT
    assert report["layouts"]["_EPROCESS"].startswith("isf ntkrnlmp.pdb 5278AFF86C341677D7D7835C85B7B844-1")
    assert report["process"] == {"address": "0xffffc08bdce94180", "name": "System", "id": 4}
    assert report["thread"]["thread_id"] == 0x108
    assert not any("does not fit" in w for w in report["warnings"])


def test_a_small_dump_that_kept_the_0xcb_tracker_names_its_locker(tmp_path, capsys):
    """Current-format 0xCB: P1 is the lock tracker; when a data block holds it, its saved stack names the driver."""
    scenario = case_0xcb("x64", "current", noise_pages=1)
    data = scenario.data
    p1, _, p3, _ = data.bugcheck.parameters
    tracker = builtin_layout("_LOCK_TRACKER", 8, 19045)
    nt = module(data, "ntoskrnl.exe")
    path = str(tmp_path / "Mini-0xcb-current.dmp")
    write_small_dump(data, path, crashing_thread(data, scenario.expected["process"], nt.base + 0x3000),
                     scenario.expected["process"], blocks=[(p1 - 0x10, tracker.size + 0x10), (p3, 0x40)],
                     stack_values=[nt.base + 0x1234])
    code, report = json_report(capsys, path)
    assert code == EXIT_SUSPECT
    assert [t["address"] for t in report["trackers"]] == [hex(p1)] and report["trackers"][0]["mdl"] == hex(p3)
    assert report["suspects"][0]["image"] == scenario.expected["culprit_image"]
    assert any("lock tracker P1" in e for e in report["suspects"][0]["evidence"])
    assert report["hunt_possible"] is False


def test_a_32_bit_small_dump_gives_its_triage_section(tmp_path, capsys):
    """The 32-bit layout (section at 0x1000, 32-bit pointers) as leakhunt reads it; no real sample checks it."""
    scenario = case_0x76("x86", "irp", noise_pages=1)
    data = scenario.data
    victim = scenario.expected["process"]
    nt = module(data, "ntoskrnl.exe")
    culprit = module(data, "leakyflt.sys")
    data.bugcheck = type(data.bugcheck)(0x8E, (0xC0000005, culprit.base + 0x1A2B, 0, 0))
    path = str(tmp_path / "Mini32.dmp")
    write_small_dump(data, path, crashing_thread(data, victim, nt.base + 0x3000), victim, process_size=0x300,
                     thread_size=0x300, stack_values=[nt.base + 0x1234, culprit.base + 0x1A2B],
                     unloaded=[("olddrv.sys", 0x9A000000, 0x9A010000)], broken_driver="leakyflt.sys")
    code, report = json_report(capsys, path)
    assert code == EXIT_SUSPECT and report["target"]["pointer_size"] == 4
    assert report["suspects"][0]["image"] == "leakyflt.sys" and report["suspects"][0]["confidence"] == "high"
    assert report["bugcheck"]["parameters"][1]["symbol"] == "leakyflt+0x1a2b"
    assert len(report["modules"]) == len(data.modules)
    assert [c["symbol"] for c in report["stack"]["candidates"]] == ["nt+0x1234", "leakyflt+0x1a2b"]
    assert report["unloaded_modules"][0]["image"] == "olddrv.sys"
    assert report["process"]["address"] == hex(victim) and report["registers"] == []
    assert not any("damaged" in w for w in report["warnings"])


# ---- a small dump cut short is refused, never analyzed as if it were whole ------------------------------

def size_of_dump(path):
    """TRIAGE_DUMP.SizeOfDump, the second dword of the triage section at 0x2000 (rizin's dmp_specs.h)."""
    with open(path, "rb") as handle:
        handle.seek(0x2000 + 4)
        return struct.unpack("<I", handle.read(4))[0]


@needs_samples
@pytest.mark.parametrize("sample", [TRIAGE_X64, TRIAGE_ARM64], ids=["x64", "arm64"])
@pytest.mark.parametrize("keep", [20000, 700000, "SizeOfDump-1", 0x2010])
def test_a_real_small_dump_cut_short_is_refused_as_truncated(tmp_path, capsys, sample, keep):
    with open(sample, "rb") as handle:
        whole = handle.read()
    keep = size_of_dump(sample) - 1 if keep == "SizeOfDump-1" else keep
    path = tmp_path / "cut.dmp"
    path.write_bytes(whole[:keep])
    assert main(["analyze", str(path)]) == EXIT_INPUT
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "is truncated" in captured.err and "short" in captured.err
    code = struct.unpack_from("<I", whole, 0x38)[0]  # DUMP_HEADER64.BugCheckCode: still said
    assert f"bug check {code:#x}" in captured.err


@needs_samples
def test_a_small_dump_without_its_secondary_data_is_still_whole(tmp_path, capsys):
    """The triage section ends at SizeOfDump; what follows (secondary data) is not needed."""
    with open(TRIAGE_X64, "rb") as handle:
        whole = handle.read()
    path = tmp_path / "triage-only.dmp"
    path.write_bytes(whole[:size_of_dump(TRIAGE_X64)])
    code, report = json_report(capsys, str(path))
    assert code == EXIT_SUSPECT and report["suspects"][0]["image"] == "amdppm.sys"


@needs_samples
def test_the_exception_of_the_real_x64_dump_is_decoded_as_exr_does(capsys):
    """0x1000007E P3 points at the EXCEPTION_RECORD64 in the stack copy. Expected values: the bug check
    parameters (the header's) and winnt.h's record layout read here with struct, not leakhunt's reader."""
    target = open_dump(TRIAGE_X64)
    try:
        p1, p2, p3, _ = target.bugcheck().parameters
        raw = target.read(p3, 0x98)
    finally:
        target.close()
    code, _, _, address, count = struct.unpack_from("<IIQQI", raw)
    access, accessed = struct.unpack_from("<2Q", raw, 0x20)
    assert (code, address, count, access) == (p1 & 0xFFFFFFFF, p2, 2, 1)  # a write
    _, report = json_report(capsys, TRIAGE_X64)
    exception = report["exception"]
    assert exception["address"] == hex(p3) and exception["code"] == "0xc0000005"
    assert exception["code_text"] == "c0000005 (Access violation) STATUS_ACCESS_VIOLATION"
    assert exception["exception_address"] == hex(p2) and exception["exception_symbol"] == "amdppm+0x334c"
    assert exception["access"] == "write" and exception["accessed_address"] == hex(accessed)
    assert exception["problems"] == []
    assert report["bugcheck"]["parameters"][0]["status"] == "c0000005 STATUS_ACCESS_VIOLATION"
    main(["analyze", TRIAGE_X64])
    text = capsys.readouterr().out
    assert "ExceptionCode: c0000005 (Access violation) STATUS_ACCESS_VIOLATION" in text
    assert f"Attempt to write to address {accessed >> 32:08x}`{accessed & 0xFFFFFFFF:08x}" in text
