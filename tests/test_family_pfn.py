"""0x4E PFN_LIST_CORRUPT: subcodes decoded; the MDLs that still list the page found with one batched
search, then their IRPs and drivers (mocks/scenarios_family.case_0x4e holds the truth)."""
import pytest

from mocks.scenarios_family import KINDS_0x4E, case_0x4e
from pykd_ext.analyses import analyze
from pykd_ext.analyses.pfn import NOBODY_NAMED, PAGE_LOCATIONS, SUBCODES, find_mdls_holding_pfn
from pykd_ext.analyses.common import Context, Options
from pykd_ext.bugchecks import lookup
from pykd_ext.targets.base import BugCheck
from pykd_ext.targets.snapshot import SnapshotTarget


def run(scenario):
    return analyze(SnapshotTarget(scenario.data))


@pytest.mark.parametrize("arch", ["x64", "x86"])
@pytest.mark.parametrize("subcode,confidence", [(0x07, "medium"), (0x9A, "medium"), (0x99, "low")])
def test_the_mdl_listing_the_page_leads_to_its_irp_and_driver(arch, subcode, confidence):
    scenario = case_0x4e(arch, subcode)
    report = run(scenario)
    assert report.searches == 2  # one pass for the page frame, one for the MDLs found
    mdls = {m.address: m for m in report.mdls}
    assert list(mdls) == [scenario.expected["mdl"]]
    record = mdls[scenario.expected["mdl"]]
    assert f"lists PFN {scenario.expected['pfn']:#x} in slot {scenario.expected['slot']}" in record.role
    assert record.locked == (subcode != 0x07)
    assert record.irps == scenario.expected["irps"]
    top = report.suspects[0]
    assert (top.driver, top.image, top.confidence) == ("\\Driver\\leakyflt", "leakyflt.sys", confidence)
    assert len(report.suspects) == 1


def test_decoys_holding_the_value_are_not_mdls_of_the_page():
    scenario = case_0x4e("x64", 0x07)
    target = SnapshotTarget(scenario.data)
    found = find_mdls_holding_pfn(Context(target, Options()), scenario.expected["pfn"])
    assert [(m.address, slot) for m, slot in found] == [(scenario.expected["mdl"], scenario.expected["slot"])]
    fake, spare = scenario.expected["decoy_mdls"]
    report = run(scenario)
    assert fake not in {m.address for m in report.mdls} and spare not in {m.address for m in report.mdls}
    assert any(r.address == spare and "past the pages" in r.reasons[0] for r in report.rejected)


def test_page_state_and_counts_are_explained():
    report = run(case_0x4e("x64", 0x9A))
    facts = {f.label: f for f in report.facts}
    assert facts["page state (P3)"].value == PAGE_LOCATIONS[6] == "ActiveAndValid"
    assert facts["reference count (P4)"].value == "2"
    assert facts["what went wrong"].note == SUBCODES[0x9A][0]


def test_every_documented_subcode_is_explained():
    documented = {int(v.key.split("=")[1], 16) for v in lookup(0x4E).variants}
    assert documented == set(SUBCODES)


@pytest.mark.parametrize("kind", [0x01, "nothing"])
def test_no_suspect_without_an_irp_or_a_hunt(kind):
    scenario = case_0x4e("x64", kind)
    report = run(scenario)
    assert report.suspects == [] and report.verdict == NOBODY_NAMED
    assert report.searches == (0 if kind == 0x01 else 2)
    if kind == "nothing":
        assert [m.address for m in report.mdls] == [scenario.expected["mdl"]]
        assert any("held by no IRP" in w for w in report.warnings)


def test_an_undocumented_subcode_is_only_decoded():
    scenario = case_0x4e("x64", 0x07)
    scenario.data.bugcheck = BugCheck(0x4E, (0x55, 1, 2, 3))
    report = run(scenario)
    assert report.suspects == [] and report.searches == 0
    assert any("not a documented 0x4E subcode" in w for w in report.warnings)


@pytest.mark.parametrize("kind", KINDS_0x4E)
def test_every_0x4e_case_names_exactly_its_culprit(kind):
    scenario = case_0x4e("x64", kind)
    report = run(scenario)
    assert (report.suspects[0].image if report.suspects else None) == scenario.expected["culprit_image"]


def test_an_mdl_whose_pfn_array_crosses_a_page_is_found_from_the_next_page():
    from mocks.scenarios_family import FamilyScene
    scene = FamilyScene("x64", 5)
    process = scene.process("leakapp.exe")
    following = scene.alloc(0x10) + 0x10
    page_end = (following + 0x40 + 0xFFF) & ~0xFFF
    scene.alloc(page_end - 0x40 - following)  # the next MDL's header starts 0x40 bytes before a page
    mdl = scene.mdl(process, pages=3)
    assert mdl + 0x30 + 2 * 8 == page_end
    pfn = scene.mdl_facts(mdl)["pfns"][2]  # slot 2: the first word of the next page
    data = scene.finish_family(BugCheck(0x4E, (0x07, pfn, 1, 0)), "page-crossing MDL")
    found = find_mdls_holding_pfn(Context(SnapshotTarget(data), Options()), pfn)
    assert [(m.address, slot) for m, slot in found] == [(mdl, 2)]


def test_the_search_is_bounded_and_says_so(monkeypatch):
    from pykd_ext.analyses import pfn as module
    scenario = case_0x4e("x64", 0x07, noise_pages=1)
    monkeypatch.setattr(module, "MAX_HITS", 1)
    report = run(scenario)
    assert any("only the first 1 occurrences were examined" in w for w in report.warnings)
    monkeypatch.setattr(module, "MAX_HITS", 4096)
    monkeypatch.setattr(module, "MAX_CANDIDATES", 0)
    report = run(scenario)
    assert any("only 0 candidate MDL headers were examined" in w for w in report.warnings)
    assert report.suspects == []
