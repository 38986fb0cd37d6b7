"""0xCB, 0x76 with locked-page tracking and 0xD9 against synthesized memory whose truth is known
(mocks/scenarios_family.py), plus the bounded, cycle-safe walk of the tracker tree."""
import struct

import pytest

from mocks.scenarios_family import (KINDS_0xCB, NT_FRAMES, UNKNOWN_BUILD, case_0x76_tracked, case_0xcb, case_0xd9)
from pykd_ext.analyses import analyze
from pykd_ext.analyses.trackers import NOBODY_NAMED_CB, NOBODY_NAMED_D9
from pykd_ext.bugchecks import lookup
from pykd_ext.kernel.trackers import read_lock_header, walk_tree
from pykd_ext.layouts import Layouts
from pykd_ext.targets.base import BugCheck
from pykd_ext.targets.snapshot import SnapshotTarget


def run(scenario):
    return analyze(SnapshotTarget(scenario.data))


def poke(data, address, value, size=8):
    """Overwrite ``size`` bytes of the snapshot's memory at ``address``."""
    page = address & ~0xFFF
    content = bytearray(data.pages[page])
    content[address - page:address - page + size] = value.to_bytes(size, "little")
    data.pages[page] = bytes(content)


def top(report):
    return report.suspects[0] if report.suspects else None


def variant_title(key):
    return {v.key: v.title for v in lookup(0xCB).variants}[key]


# ---- 0xCB -------------------------------------------------------------------------------------

def test_current_format_is_detected_from_the_tracker_and_decoded():
    scenario = case_0xcb("x64", "current")
    report = run(scenario)
    p1, p2, p3, p4 = scenario.data.bugcheck.parameters
    fact = next(f for f in report.facts if f.label == "0xCB parameter format")
    assert fact.value == "current" and "Mdl is P3" in fact.note
    assert report.bugcheck.variant == variant_title("current")
    tracker = report.trackers[0]
    assert (tracker.address, tracker.mdl, tracker.pages, tracker.process) == (p1, p3, p4, scenario.expected["process"])
    assert tracker.locker == "leakyflt" and tracker.locker_image == "leakyflt.sys" and tracker.pool_tag == "MmLk"
    assert [f.symbol for f in tracker.stack][:3] == [f"nt+{NT_FRAMES[0]:#x}", f"nt+{NT_FRAMES[1]:#x}", "leakyflt+0x1a30"]
    assert report.process_name == "leakapp.exe"


def test_tracked_pages_outweigh_the_irp_that_another_driver_pends():
    scenario = case_0xcb("x64", "current")
    report = run(scenario)
    first, second = report.suspects[:2]
    assert (first.image, first.confidence) == ("leakyflt.sys", "high")
    assert second.driver == "\\Driver\\ufilter" and first.score > second.score
    assert any("lock trackers" in e for e in first.evidence)
    tracked = report.tracked_pages
    assert tracked.source == "EPROCESS.LockedPagesList" and tracked.process == scenario.expected["process"]
    assert sorted(t.address for t in tracked.trackers) == scenario.expected["trackers"]
    assert not set(scenario.expected["decoy_trackers"]) & {t.address for t in tracked.trackers}
    assert [(g.image, len(g.mdls), g.pages) for g in tracked.groups] == [("leakyflt.sys", 3, 6)]
    assert sorted(m.address for m in report.mdls) == scenario.expected["tracked_mdls"]
    assert sorted(i.address for i in report.irps) == sorted(scenario.expected["irps"])


def test_unverified_tables_are_named_in_the_layouts_and_the_warnings():
    report = run(case_0xcb("x64", "current"))
    assert "UNVERIFIED" in report.layouts["_LOCK_TRACKER"] and "UNVERIFIED" in report.layouts["_LOCK_HEADER"]
    assert "UNVERIFIED" not in report.layouts["_EPROCESS"]
    assert any(w.startswith("_LOCK_TRACKER was decoded with a built-in table") for w in report.warnings)


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_legacy_format_names_the_image_of_the_locking_code(arch):
    scenario = case_0xcb(arch, "legacy")
    report = run(scenario)
    fact = next(f for f in report.facts if f.label == "0xCB parameter format")
    assert fact.value == "legacy" and "leakyflt.sys" in fact.note
    assert report.bugcheck.variant == variant_title("legacy")
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "high")
    assert any("leakyflt+0x1a30" in e for e in top(report).evidence)
    assert report.trackers == [] and report.tracked_pages is None
    assert [i.address for i in report.irps] == scenario.expected["irps"]


def test_legacy_io_manager_form_names_the_driver_of_the_device_object():
    scenario = case_0xcb("x64", "iomgr")
    report = run(scenario)
    assert top(report).driver == "\\Driver\\leakyflt"
    assert any("device" in e and "dispatch routine leakyflt+0x1100" in e for e in top(report).evidence)
    assert any(f.label == "P2 (device object)" for f in report.facts)


def test_no_suspect_when_the_tracker_stays_in_the_kernel_and_no_irp_holds_the_mdl():
    report = run(case_0xcb("x64", "nothing"))
    assert report.suspects == [] and report.verdict == NOBODY_NAMED_CB
    assert report.trackers[0].locker is None
    assert any("every saved frame is in nt or hal" in w for w in report.warnings)


def test_unknown_build_without_symbols_warns_and_still_hunts_the_mdl():
    scenario = case_0xcb("x64", "unknown-build")
    report = run(scenario)
    assert report.build == UNKNOWN_BUILD
    assert any("_LOCK_TRACKER from the build 26100 table" in w for w in report.warnings)
    assert report.trackers[0].problems and report.tracked_pages is None  # the guessed table reads no valid tracker
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "medium")
    assert "held by IRP" in top(report).evidence[0] and "capped at medium" in top(report).evidence[-1]


def test_symbols_describe_a_tracker_layout_no_table_has():
    scenario = case_0xcb("x64", "symbols")
    report = run(scenario)
    assert report.layouts["_LOCK_TRACKER"] == "debugger symbols"
    assert not any(w.startswith("_LOCK_TRACKER was decoded") for w in report.warnings)
    tracker = report.trackers[0]
    assert tracker.mdl == scenario.data.bugcheck.parameters[2] and tracker.locker == "leakyflt"
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "high")
    assert report.irps == []  # the MDL is private: only the tracker names the driver


def test_x86_current_format_uses_the_x86_tracker_table():
    scenario = case_0xcb("x86", "current")
    report = run(scenario)
    assert report.trackers[0].locker == "leakyflt" and top(report).image == "leakyflt.sys"
    assert report.layouts["_LOCK_TRACKER"].startswith("built-in x86 build 19045 table")


def test_a_p1_that_is_not_a_tracker_concludes_nothing_from_it():
    scenario = case_0xcb("x64", "current")
    p1, p2, p3, p4 = scenario.data.bugcheck.parameters
    scenario.data.bugcheck = BugCheck(0xCB, (p3, 0, p3, p4))  # P1 = the MDL itself: not a tracker
    report = run(scenario)
    assert any("does not read as the tracker of P3" in w for w in report.warnings)
    assert any("does not read as a valid lock tracker" in w for w in report.warnings)
    assert not any("lock tracker P1" in e for s in report.suspects for e in s.evidence)


@pytest.mark.parametrize("kind", KINDS_0xCB)
def test_every_0xcb_case_names_exactly_its_culprit(kind):
    scenario = case_0xcb("x64", kind)
    report = run(scenario)
    expected = scenario.expected["culprit_image"]
    assert (top(report).image if report.suspects else None) == expected
    assert next(f.value for f in report.facts if f.label == "0xCB parameter format") == scenario.expected["format"]


# ---- 0x76 with locked-page tracking -------------------------------------------------------------

@pytest.mark.parametrize("via", ["P4", "eprocess"])
def test_0x76_walks_the_trackers_when_tracking_is_on(via):
    scenario = case_0x76_tracked("x64", via)
    report = run(scenario)
    tracked = report.tracked_pages
    assert tracked.source == scenario.expected["source"] and tracked.header == scenario.expected["header"]
    assert sorted(t.address for t in tracked.trackers) == scenario.expected["trackers"]
    assert sum(t.pages for t in tracked.trackers) == scenario.expected["pages"] == tracked.count
    first, second = report.suspects[:2]
    assert first.image == "leakyflt.sys" and second.driver == "\\Driver\\ufilter" and first.score > second.score
    assert [i.address for i in report.irps] == scenario.expected["irps"]


def test_0x76_p1_1_walks_p4_without_knowing_the_process():
    scenario = case_0x76_tracked("x64", "P4")
    mdl = scenario.expected["tracked_mdls"][0]
    scenario.data.bugcheck = BugCheck(0x76, (1, mdl, 6, scenario.expected["header"]))
    report = run(scenario)
    assert report.tracked_pages.process is None
    assert sorted(t.address for t in report.tracked_pages.trackers) == scenario.expected["trackers"]
    assert top(report).image == "leakyflt.sys"


# ---- the tree walk --------------------------------------------------------------------------------

def _tree(scenario):
    target = SnapshotTarget(scenario.data)
    layouts = Layouts(target)
    header = read_lock_header(target, layouts, scenario.expected["header"])
    return target, layouts, header


def test_walk_visits_every_node_once_in_order():
    scenario = case_0x76_tracked("x64", "P4")
    target, layouts, header = _tree(scenario)
    walk = walk_tree(target, layouts, header.lock_tree)
    assert walk.nodes == scenario.expected["trackers"] and not walk.problems and not walk.truncated


def test_walk_is_bounded_by_its_cap():
    target, layouts, header = _tree(case_0x76_tracked("x64", "P4"))
    walk = walk_tree(target, layouts, header.lock_tree, limit=2)
    assert walk.truncated and len(walk.nodes) <= 2 and any("more than 2 nodes" in p for p in walk.problems)


def test_walk_stops_at_a_link_back_up_the_tree():
    scenario = case_0x76_tracked("x64", "P4")
    target, layouts, header = _tree(scenario)
    root = header.lock_tree
    leaf = min(scenario.expected["trackers"])
    poke(scenario.data, leaf + 8, root)  # leaf.Right -> root: a cycle
    walk = walk_tree(target, layouts, root)
    assert walk.nodes == scenario.expected["trackers"]
    assert any("a cycle" in p for p in walk.problems)


def test_walk_does_not_follow_a_child_that_belongs_to_another_parent():
    scenario = case_0x76_tracked("x64", "P4")
    target, layouts, header = _tree(scenario)
    left, right = min(scenario.expected["trackers"]), max(scenario.expected["trackers"])
    poke(scenario.data, left + 8, right)  # left leaf's Right -> the right leaf, whose parent is the root
    walk = walk_tree(target, layouts, header.lock_tree)
    assert walk.nodes == scenario.expected["trackers"]
    assert any(f"{right:#x} does not point back to its parent {left:#x}" in p for p in walk.problems)


def test_walk_reports_a_node_reached_twice():
    scenario = case_0x76_tracked("x64", "P4")
    target, layouts, header = _tree(scenario)
    root = header.lock_tree
    left = struct.unpack("<Q", target.read(root, 8))[0]
    poke(scenario.data, root + 8, left)  # root.Right = root.Left: the same child twice
    walk = walk_tree(target, layouts, root)
    assert walk.nodes.count(left) == 1 and any("reached twice" in p for p in walk.problems)


def test_a_damaged_tree_still_gives_a_report_and_drops_bad_trackers():
    scenario = case_0x76_tracked("x64", "P4")
    victim = scenario.expected["trackers"][0]
    poke(scenario.data, victim + 0x28, 0)  # Count = 0: not a tracker any more
    report = run(scenario)
    assert victim not in {t.address for t in report.tracked_pages.trackers}
    assert any(r.address == victim and "Count" in " ".join(r.reasons) for r in report.rejected)
    assert any("_LOCK_HEADER.Count" in w for w in report.warnings)
    assert top(report).image == "leakyflt.sys"


# ---- 0xD9 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("subcode", [1, 2, 3, 4])
def test_0xd9_decodes_the_trackers_and_the_mdl(subcode):
    scenario = case_0xd9("x64", subcode)
    report = run(scenario)
    assert [t.address for t in report.trackers] == scenario.expected["trackers"]
    assert all(t.mdl == scenario.expected["mdl"] for t in report.trackers)
    assert any(f.label == "what went wrong" and f.value == f"subcode {subcode}" for f in report.facts)
    assert [m.address for m in report.mdls] == [scenario.expected["mdl"]]
    assert report.mdls[0].irps == scenario.expected["irps"]
    assert (top(report).image, top(report).confidence) == ("leakyflt.sys", "medium")
    assert report.process_name == "leakapp.exe"


def test_0xd9_names_nobody_without_evidence():
    report = run(case_0xd9("x64", "nothing"))
    assert report.suspects == [] and report.verdict == NOBODY_NAMED_D9


def test_0xd9_undocumented_subcode_only_decodes():
    scenario = case_0xd9("x64", 1)
    scenario.data.bugcheck = BugCheck(0xD9, (9, 0, 0, 0))
    report = run(scenario)
    assert report.suspects == [] and any("not a documented 0xD9 subcode" in w for w in report.warnings)
