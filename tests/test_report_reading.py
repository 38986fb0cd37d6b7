"""The report as a WinDbg user reads it, on the bundled cases and on dumps written by mocks/dumpwriter.py:
suspects only on evidence of holding the leak, one top-confidence driver per MDL, the IRP as !irp shows
it, one address style, wrapped lines, sub-steps, advice for the variant and nothing already done."""
import json
import os
import re

import pytest

from mocks.dumpwriter import write_dump
from mocks.make_snapshots import BUNDLED
from mocks.scenarios import IRP_MJ_READ, KernelScene
from mocks.scenarios_family import case_0x76_tracked, case_0xcb
from pykd_ext.sources import open_dump
from pykd_ext.analyses import analyze
from pykd_ext.analyses.common import SuspectBoard
from pykd_ext.evidence import IRP_CURRENT_LOCATION, LOCKER_STACK
from pykd_ext.render.jsonout import render_json
from pykd_ext.render.text import DEFAULT_WIDTH, render_dml, render_text
from pykd_ext.report import HIGH, LOW, MEDIUM, NextStep, bugcheck_code_text, step_text
from pykd_ext.targets.base import BugCheck
from pykd_ext.targets.snapshot import SnapshotTarget

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOTS = os.path.join(ROOT, "mocks", "snapshots")
BUNDLED_NAMES = [name for name, _ in BUNDLED]


def bundled(name):
    return analyze(SnapshotTarget.open(os.path.join(SNAPSHOTS, name)))


def from_dump(data, tmp_path, name="MEMORY.DMP"):
    path = str(tmp_path / name)
    write_dump(data, path)
    target = open_dump(path)
    try:
        return analyze(target)
    finally:
        target.close()


def evidence_of(suspect):
    return " ".join(suspect.evidence)


# ---- a P1=1 case in the shape of a real storage stack -------------------------------------------

def unlock_below_a_filter():
    """P1=1: the MDL is held by an IRP whose current location (2) is \\Driver\\dblunlk's, with
    \\Driver\\partmgr above it (3) and \\Driver\\disk below it (1): memory holds disk's device in the
    location below the current one, as an IRP set up ahead of the call leaves it."""
    scene = KernelScene("x64", seed=5)
    victim = scene.process("leakapp.exe")
    disk, culprit, upper = scene.driver("disk"), scene.driver("dblunlk"), scene.driver("partmgr")
    mdl = scene.mdl(victim, pages=2, locked=False)
    irp = scene.irp(mdl, [(disk.devices[0], IRP_MJ_READ, 0), (culprit.devices[0], IRP_MJ_READ, 0),
                          (upper.devices[0], IRP_MJ_READ, upper.module.base + 0x2040)], 2,
                    thread=scene.thread(victim), cancel_routine=culprit.module.base + 0x1B00)
    below = irp + scene.layout("_IRP").size  # location 1
    scene.write_fields("_IO_STACK_LOCATION", below, MajorFunction=IRP_MJ_READ, DeviceObject=disk.devices[0])
    scene.noise(4)
    data = scene.finish(BugCheck(0x76, (1, mdl, 2, 0)), "synthesized 0x76 P1=1 storage stack (x64)")
    return data, {"irp": irp, "mdl": mdl, "disk_device": disk.devices[0], "culprit": culprit}


def test_only_the_current_location_is_a_suspect_on_a_written_dump(tmp_path):
    data, truth = unlock_below_a_filter()
    report = from_dump(data, tmp_path)
    assert [(s.driver, s.confidence) for s in report.suspects] == [("\\Driver\\dblunlk", MEDIUM)]
    stack = {location.number: location for location in report.irps[0].stack}
    assert stack[3].driver == "\\Driver\\partmgr" and not stack[3].current  # in the IRP's story
    # The location below the current one shows what memory holds: disk's device and driver.
    assert stack[1].unused and stack[1].device == truth["disk_device"] and stack[1].driver == "\\Driver\\disk"
    text = render_text(report)
    assert "partmgr.sys  [" not in text and "disk.sys  [" not in text
    assert "below the current one, have not been called" in text


@pytest.mark.parametrize("name", ["0x76-irp-x64.snap", "0x76-irp-x86.snap", "0x76-unlock-x64.snap",
                                  "0x76-unlock-x86.snap"])
def test_the_upper_filter_of_the_bundled_cases_is_no_suspect(name):
    report = bundled(name)
    assert [s.driver for s in report.suspects] == ["\\Driver\\leakyflt"]
    assert any(location.driver == "\\Driver\\ufilter" for irp in report.irps for location in irp.stack)


# ---- one top-confidence culprit per leak ------------------------------------------------------------

@pytest.mark.parametrize("name", ["0xcb-current-x64.snap", "tracked-0x76-x64.snap"])
def test_the_tracker_outranks_the_irp_and_says_they_disagree(name):
    report = bundled(name)
    top, *others = report.suspects
    assert top.image == "leakyflt.sys" and top.confidence == HIGH
    assert [(s.driver, s.confidence) for s in others] == [("\\Driver\\ufilter", LOW)]
    assert "the evidence disagrees" in evidence_of(top) and "ufilter" in evidence_of(top)
    assert "the evidence disagrees" in evidence_of(others[0]) and "stronger evidence" in evidence_of(others[0])


def test_the_same_holds_on_written_dumps(tmp_path):
    for scenario in (case_0xcb("x64", "current", noise_pages=2), case_0x76_tracked("x64", "P4", noise_pages=2)):
        report = from_dump(scenario.data, tmp_path, scenario.name + ".dmp")
        assert [s.confidence for s in report.suspects] == [HIGH, LOW]
        assert report.suspects[0].image == "leakyflt.sys"


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_no_bundled_case_gives_two_drivers_the_top_confidence(name):
    report = bundled(name)
    assert sum(1 for s in report.suspects if s.confidence == HIGH) <= 1


def test_the_same_kind_of_evidence_naming_two_drivers_makes_neither_high():
    board = SuspectBoard()
    board.add("\\Driver\\a", "a.sys", HIGH, 10, "IRP 1 holds MDL 0x1000", mdls=[0x1000], kind=IRP_CURRENT_LOCATION)
    board.add("\\Driver\\b", "b.sys", HIGH, 10, "IRP 2 holds MDL 0x1000", mdls=[0x1000], kind=IRP_CURRENT_LOCATION)
    board.add("\\Driver\\b", "b.sys", HIGH, 10, "IRP 3 holds MDL 0x2000", mdls=[0x2000], kind=IRP_CURRENT_LOCATION)
    ranked = {s.driver: s for s in board.ranked()}
    # a is named for 0x1000 only, where b is named as strongly: medium; b alone holds 0x2000: high.
    assert ranked["\\Driver\\a"].confidence == MEDIUM and ranked["\\Driver\\b"].confidence == HIGH
    assert "also names \\Driver\\b" in evidence_of(ranked["\\Driver\\a"])
    board.add(None, "c.sys", HIGH, 25, "tracker of MDL 0x1000", mdls=[0x1000], kind=LOCKER_STACK)
    ranked = {s.driver or s.image: s for s in board.ranked()}
    assert ranked["\\Driver\\a"].confidence == LOW and ranked["c.sys"].confidence == HIGH


# ---- the IRP as !irp shows it -------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["snapshot", "dump"])
def test_the_irp_reads_like_irp(tmp_path, source):
    report = bundled("0x76-irp-x64.snap") if source == "snapshot" else \
        from_dump(SnapshotTarget.open(os.path.join(SNAPSHOTS, "0x76-irp-x64.snap")).data, tmp_path)
    irp = report.irps[0]
    assert [location.number for location in irp.stack] == list(range(1, irp.stack_count + 1))
    assert irp.flag_names == ["IRP_INPUT_OPERATION"] and irp.cancel is False
    assert irp.cancel_symbol == "leakyflt+0x1b00"
    assert (irp.thread_process_id, irp.thread_id) == (0x3A8, 0x61C) and report.process_id == 0x3A8
    text = render_text(report)
    section = text[text.index("\nIRP "):]
    assert section.index("  >1  IRP_MJ_WRITE(4)") < section.index("   2  IRP_MJ_WRITE(4)")
    assert "Flags 00000040 (IRP_INPUT_OPERATION)" in section and "CancelRoutine leakyflt+0x1b00" in section
    assert "(Cid 03a8.061c)" in section and "1 is current (= ffffa58a`" in section
    assert re.search(r"PROCESS\n  ffffa58a`[0-9a-f]{8}  Cid 03a8  leakapp\.exe", text)
    record = json.loads(render_json(report))["irps"][0]
    assert record["cancel_symbol"] == "leakyflt+0x1b00" and record["thread_id"] == 0x61C
    assert [s["number"] for s in record["stack"]] == [1, 2]
    assert not re.search(r"\b0x[0-9a-f]{9,16}\b", text) and "`" not in render_json(report)


def test_the_lock_entry_thread_shows_its_cid_in_windbg_form():
    text = render_text(bundled("0x153-image-lock-x64.snap"))
    assert re.search(r"Cid [0-9a-f]{4}\.[0-9a-f]{4}", text)


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_the_culprits_irps_come_first(name):
    report = bundled(name)
    if not report.suspects or not report.irps:
        return
    top = {n.lower() for n in (report.suspects[0].driver, report.suspects[0].image) if n}
    at_top = [any((location.driver or "").lower() in top or (location.image or "").lower() in top
                  for location in irp.stack if location.current) for irp in report.irps]
    if any(at_top):
        assert at_top == sorted(at_top, reverse=True)


# ---- layout ---------------------------------------------------------------------------------------------

def table_columns_are_labelled(text):
    lines = text.split("\n")
    for index, rule in enumerate(lines):
        if index and re.fullmatch(r" *-+( +-+)+", rule):
            header = lines[index - 1]
            for match in re.finditer(r"-+", rule):
                assert header[match.start():match.end()].strip(), (header, rule)


@pytest.mark.parametrize("name", BUNDLED_NAMES)
def test_every_bundled_report_keeps_to_one_style(name):
    report = bundled(name)
    text = render_text(report, verbose=True)
    assert max(len(line) for line in text.splitlines()) <= DEFAULT_WIDTH, name
    table_columns_are_labelled(text)
    pattern = r"\b0x[0-9a-f]{9,16}\b" if report.pointer_size == 8 else r"\b0x[0-9a-f]{8}\b"
    assert not re.search(pattern, text)  # every address in WinDbg's form
    assert "`" not in render_json(report)  # and in JSON, 0x...
    code = report.bugcheck.code
    title, heading = text.splitlines()[0], [line for line in text.splitlines() if line.startswith("BUG CHECK ")][0]
    assert heading.startswith(f"BUG CHECK {bugcheck_code_text(code)} ")
    if report.analysis.startswith("0x"):
        assert title.split(": ", 1)[1].startswith(bugcheck_code_text(code))
    if f"{code:#x}" != bugcheck_code_text(code):
        assert f"{code:#x} " not in text
    assert "LAYOUTS" in text and "search passes over memory" in text


def test_verbose_shows_layouts_and_passes_when_nothing_was_rejected():
    report = bundled("0x76-nothing-x64.snap")
    report.rejected = []
    text = render_text(report, verbose=True)
    assert "\nLAYOUTS\n" in text and "search passes over memory: " in text
    assert "LAYOUTS" not in render_text(report)


def test_the_mdl_table_has_a_labelled_pool_column_in_dml_only():
    report = bundled("0x76-irp-x64.snap")
    text, dml = render_text(report), render_dml(report)
    table_columns_are_labelled(text)
    assert " pool\n" not in text and "!pool" not in text
    assert re.search(r"held by +pool\n", dml) and '">!pool</link>' in dml


def test_the_source_line_says_each_fact_once(tmp_path):
    data, _ = unlock_below_a_filter()
    source = render_text(from_dump(data, tmp_path)).splitlines()[1]
    assert source.count("x64") == 1 and source.count("build 19045") == 1 and "processor(s)" in source
    source = render_text(bundled("0x76-irp-x64.snap")).splitlines()[1]
    assert source.count("x64") == 1 and source.count("build 19045") == 1


def test_a_narrower_width_wraps_under_the_text():
    report = bundled("0xcb-current-x64.snap")
    text = render_text(report, width=80)
    prose = [section for section in text.split("\n\n")
             if section.startswith(("VERDICT", "FACTS", "WARNINGS", "NEXT STEPS"))]
    assert len(prose) == 4 and max(len(line) for section in prose for line in section.splitlines()) <= 80
    lines = text.splitlines()
    evidence = [index for index, line in enumerate(lines) if line.startswith("       - ")]
    assert evidence and lines[evidence[0] + 1].startswith("         ") and not lines[evidence[0] + 1][9] == " "



@pytest.mark.parametrize("width", [100, 80, 60])
def test_a_wrapped_fact_continues_under_its_value(width):
    """A FACTS line reads as a label column: what wraps starts under the value, never under the label."""
    report = bundled("tracked-0x76-x64.snap")
    text = render_text(report, width=width)
    facts = text[text.index("FACTS\n"):].split("\n\n")[0].splitlines()[1:]
    labels = {fact.label for fact in report.facts}
    value_column = None
    wrapped = 0
    for line in facts:
        assert len(line) <= width
        label = line[2:].split(": ", 1)[0]
        if line.startswith("  ") and not line.startswith("   ") and label in labels:
            value_column = 2 + len(label) + 2
            continue
        wrapped += 1
        expected = value_column if value_column <= width // 3 else 6
        assert len(line) - len(line.lstrip(" ")) == expected, line
    assert wrapped


# ---- next steps ------------------------------------------------------------------------------------------

def test_sub_steps_are_sub_steps_and_json_keeps_them_whole():
    report = bundled("0x76-orphan-x64.snap")
    procedure = [step for step in report.next_steps if isinstance(step, NextStep)]
    assert procedure and "TrackLockedPages" in procedure[0].substeps[0]
    text = render_text(report)
    steps = text[text.index("NEXT STEPS"):]
    assert re.search(r"\n  1\. Reproduce with locked-page tracking on.*\n     a\. Under HKLM", steps)
    assert not re.search(r"\n  \d+\. Under HKLM", steps)
    whole = json.loads(render_json(report))["next_steps"]
    assert len(whole) == len(report.next_steps)
    assert any(step.startswith("Reproduce with locked-page tracking on") and "(a) Under HKLM" in step
               and "(e) When the investigation is over" in step for step in whole)


@pytest.mark.parametrize("name", ["0x76-unlock-x64.snap", "0x76-unlock-x86.snap"])
def test_p1_1_gets_advice_for_p1_1_only(name):
    steps = " ".join(step_text(step) for step in bundled(name).next_steps)
    assert "MmUnlockPages" in steps and "Run k on the thread that crashed" in steps
    assert "before the process exits" not in steps and "0xCB" not in steps and "TrackLockedPages" not in steps


def test_p1_1_advice_on_a_written_dump(tmp_path):
    data, _ = unlock_below_a_filter()
    steps = " ".join(step_text(step) for step in from_dump(data, tmp_path).next_steps)
    assert "\\Driver\\dblunlk" in steps and "before the process exits" not in steps and "0xCB" not in steps


def test_no_step_asks_for_what_the_report_did():
    report = bundled("0xcb-current-x64.snap")
    steps = " ".join(step_text(step) for step in report.next_steps)
    assert any(f.label == "nt!KiBugCheckDriver" and f.value != "unknown" for f in report.facts) and report.irps
    assert "Run dx KiBugCheckDriver" not in steps and "Run !search for the MDL address (P3)" not in steps
    assert "Run !irp on that IRP" not in steps and "Run !lockedpages" not in steps


def test_a_parameters_only_verdict_stands_alone(tmp_path):
    scene = KernelScene("x64")
    data = scene.finish(BugCheck(0xD1, (0x10, 2, 0, 0xFFFFF80312345678)), "synthesized 0xD1 (x64)")
    report = from_dump(data, tmp_path)
    verdict = json.loads(render_json(report))["verdict"]
    assert "0xD1 DRIVER_IRQL_NOT_LESS_OR_EQUAL" in verdict and "above" not in verdict
    for name in BUNDLED_NAMES:
        assert "above" not in bundled(name).verdict


# ---- --pfn-range in the report ----------------------------------------------------------------------------

def test_a_hunt_limited_by_pfn_range_says_so_and_sends_nobody_to_reboot():
    from pykd_ext.analyses import Options
    from pykd_ext.targets.base import PfnRange

    report = analyze(SnapshotTarget.open(os.path.join(SNAPSHOTS, "0x76-irp-x64.snap")), Options(pfn_range=PfnRange(0, 0xFFF)))
    assert report.suspects == [] and report.pfn_range == (0, 0xFFF)
    assert "--pfn-range" in report.verdict
    steps = " ".join(step_text(step) for step in report.next_steps)
    assert "TrackLockedPages" not in steps and "without --pfn-range" in steps
    assert "Search limited to page frames 0-fff of the source's 0-" in render_text(report)
    assert json.loads(render_json(report))["pfn_range"]["last"] == "0xfff"


def test_hex_casing_of_a_bug_check_code_is_the_same_everywhere(tmp_path):
    scene = KernelScene("x64")
    data = scene.finish(BugCheck(0x1000007E, (0xC0000005, 0xFFFFF8048B58334C, 0, 0)), "synthesized 0x1000007E (x64)")
    text = render_text(from_dump(data, tmp_path))
    assert "BUG CHECK 0x1000007E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M" in text
    assert "Reported as 0x1000007E" in text and "0x1000007e" not in text


def test_a_tiny_terminal_still_gets_every_word():
    report = bundled("0x76-irp-x64.snap")
    def words(text):  # the table rules aside, in any order (table cells wrap onto rows of their own)
        return sorted(word for word in text.split() if set(word) != {"-"})

    assert words(render_text(report, width=1)) == words(render_text(report))  # nothing lost or split
    assert max(len(line) for line in render_text(report, width=1).splitlines()[:12]) <= 40
