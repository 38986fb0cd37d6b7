"""The 0x76 hunt against synthesized memory whose truth is known (mocks/scenarios.py)."""
import pytest

from mocks.scenarios import KINDS_0x76, case_0x76
from pykd_ext.analyses import Options, analyze
from pykd_ext.session import KernelSession
from pykd_ext.kernel.mdl import MDL_PAGES_LOCKED
from pykd_ext.report import step_text
from pykd_ext.targets.base import PfnRange, SearchUnavailable
from pykd_ext.targets.snapshot import SnapshotTarget

ARCHES = ["x64", "x86"]


def run(scenario, symbols=None, **options):
    """Replay the scenario, with ``symbols`` given as the user gives them (--symbol NAME=ADDRESS)."""
    return analyze(KernelSession(SnapshotTarget(scenario.data), addresses=symbols), Options(**options))


@pytest.mark.parametrize("arch", ARCHES)
def test_irp_case_names_the_driver_that_pends_the_irp(arch):
    scenario = case_0x76(arch, "irp")
    report = run(scenario)
    top = report.suspects[0]
    assert (top.driver, top.image, top.confidence) == ("\\Driver\\leakyflt", "leakyflt.sys", "high")
    # The upper filter that passed the IRP down is in the IRP's stack, not among the suspects.
    assert [s.driver for s in report.suspects] == ["\\Driver\\leakyflt"]
    assert any(location.driver == "\\Driver\\ufilter" and not location.current
               for irp in report.irps for location in irp.stack)
    locked = sorted(m.address for m in report.mdls if m.locked)
    assert locked == sorted(scenario.expected["locked_mdls"])
    assert sorted(i.address for i in report.irps) == sorted(scenario.expected["irps"])
    assert report.locked_pages_expected == report.locked_pages_accounted == scenario.expected["locked_pages"]


@pytest.mark.parametrize("arch", ARCHES)
def test_chained_mdl_is_traced_back_to_its_irp(arch):
    scenario = case_0x76(arch, "irp")
    report = run(scenario)
    first, second = scenario.expected["locked_mdls"][:2]
    by_address = {m.address: m for m in report.mdls}
    assert by_address[second].chained_from == first
    assert by_address[second].irps == by_address[first].irps == [scenario.expected["irps"][0]]
    assert any("MDL.Next chain" in e for e in report.suspects[0].evidence)


@pytest.mark.parametrize("arch", ARCHES)
def test_decoys_are_never_suspects_or_locked(arch):
    scenario = case_0x76(arch, "irp")
    report = run(scenario)
    assert "\\Driver\\innocent" not in [s.driver for s in report.suspects]
    mdl_addresses = {m.address for m in report.mdls}
    other_process_mdl = scenario.expected["decoy_mdls"][1]
    assert other_process_mdl not in mdl_addresses  # a locked MDL of another process
    stale = {m.address: m for m in report.mdls}[scenario.expected["stale_mdls"][0]]
    assert stale.classification == "unlocked" and not stale.locked
    assert not set(scenario.expected["unrelated_irps"]) & {i.address for i in report.irps}
    # Every hit of the process pointer inside other structures was examined and rejected with a reason.
    assert report.rejected and all(r.reasons for r in report.rejected)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("kind", ["orphan", "nothing"])
def test_no_guess_when_the_evidence_names_nobody(arch, kind):
    scenario = case_0x76(arch, kind)
    report = run(scenario)
    assert report.suspects == []
    assert "No driver is named" in report.verdict
    steps = " ".join(step_text(step) for step in report.next_steps)
    assert "TrackLockedPages" in steps and "Memory Management" in steps and "delete" in steps.lower()
    assert "Driver Verifier" in steps


@pytest.mark.parametrize("arch", ARCHES)
def test_orphan_mdls_are_found_and_counted(arch):
    scenario = case_0x76(arch, "orphan", leaked=3)
    report = run(scenario)
    locked = [m for m in report.mdls if m.locked]
    assert sorted(m.address for m in locked) == sorted(scenario.expected["locked_mdls"])
    assert all(m.irps == [] for m in locked)
    assert report.locked_pages_accounted == scenario.expected["locked_pages"] == report.locked_pages_expected
    assert any("held by no IRP" in w for w in report.warnings)


def test_nothing_left_reports_the_page_count_gap():
    report = run(case_0x76("x64", "nothing"))
    assert report.locked_pages_accounted == 0 and report.locked_pages_expected == 4
    assert any("kernel counted 4" in w for w in report.warnings)


@pytest.mark.parametrize("arch", ARCHES)
def test_p1_1_explains_why_the_mdl_is_not_locked_and_finds_its_irp(arch):
    scenario = case_0x76(arch, "unlock")
    report = run(scenario)
    (mdl,) = report.mdls
    assert mdl.address == scenario.expected["unlock_mdl"] and not mdl.flags & MDL_PAGES_LOCKED
    assert any("MDL_PAGES_LOCKED is clear" in p for p in mdl.problems)
    assert mdl.irps == scenario.expected["irps"]
    assert report.suspects[0].driver == "\\Driver\\leakyflt" and report.suspects[0].confidence == "medium"


def test_ki_bugcheck_driver_is_read_and_becomes_evidence():
    report = run(case_0x76("x64", "orphan", ki_bugcheck_driver="leakyflt.sys"))
    fact = {f.label: f for f in report.facts}["nt!KiBugCheckDriver"]
    assert fact.value == "leakyflt.sys"
    assert report.suspects[0].image == "leakyflt.sys" and report.suspects[0].confidence == "high"


def test_ki_bugcheck_driver_null_is_said_plainly():
    report = run(case_0x76("x64", "irp"))
    fact = {f.label: f for f in report.facts}["nt!KiBugCheckDriver"]
    assert fact.value == "NULL" and "did not record" in fact.note


def test_missing_ki_bugcheck_driver_symbol_can_be_given():
    scenario = case_0x76("x64", "orphan", ki_bugcheck_driver="leakyflt.sys")
    address = scenario.data.symbols.pop("nt!KiBugCheckDriver")
    report = run(scenario)
    assert {f.label: f for f in report.facts}["nt!KiBugCheckDriver"].value == "unknown"
    report = run(scenario, symbols={"nt!KiBugCheckDriver": address})
    assert {f.label: f for f in report.facts}["nt!KiBugCheckDriver"].value == "leakyflt.sys"


class _NoHeaders(SnapshotTarget):
    """A source that searches for values only, as the debugger's !search does."""

    finds_object_headers = False


def test_search_passes_do_not_grow_with_the_number_of_leaked_mdls():
    few = run(case_0x76("x64", "irp", leaked=1))
    many = run(case_0x76("x64", "irp", leaked=40))
    assert len([m for m in many.mdls if m.locked]) == 41  # the first IRP holds a chain of two
    # The IRPs were collected in the pass that found the MDLs: no search for the MDLs at all.
    assert few.searches == many.searches == 1
    # A source that finds values only: one more pass, for all the MDLs at once, and the same findings.
    classic = analyze(_NoHeaders(case_0x76("x64", "irp", leaked=40).data))
    assert classic.searches == 2
    assert [(m.address, m.irps, m.chained_from) for m in classic.mdls] == \
        [(m.address, m.irps, m.chained_from) for m in many.mdls]
    assert [s.as_dict() for s in classic.suspects] == [s.as_dict() for s in many.suspects]


def test_tracking_on_is_reported_from_p4():
    scenario = case_0x76("x64", "irp")
    code, (p1, p2, p3, _) = scenario.data.bugcheck.code, scenario.data.bugcheck.parameters
    scenario.data.bugcheck = type(scenario.data.bugcheck)(code, (p1, p2, p3, 0xFFFFA58A1DEAD000))
    report = run(scenario)
    assert any(f.label == "locked-page tracking" and f.value == "on" for f in report.facts)
    # Tracking was already on: the steps do not ask to turn it on, only to remove the value afterwards.
    steps = " ".join(step_text(step) for step in report.next_steps)
    assert "Reboot" not in steps and "delete the TrackLockedPages value" in steps


def test_pfn_range_limits_the_search():
    scenario = case_0x76("x64", "irp")
    report = run(scenario, pfn_range=PfnRange(0, 0))
    assert report.mdls == [] and report.suspects == []


def test_process_name_comes_from_the_build_layout():
    report = run(case_0x76("x64", "irp"))
    assert report.process_name == "leakapp.exe"
    x86 = run(case_0x76("x86", "irp"))
    assert x86.process_name is None and any("_EPROCESS layout" in w for w in x86.warnings)


class _NoSearch(SnapshotTarget):
    def search_pointers(self, values, pfn_range=None, progress=None):
        raise SearchUnavailable("this source holds no physical memory")

    def search_pointers_and_headers(self, values, headers, pfn_range=None, progress=None):
        raise SearchUnavailable("this source holds no physical memory")


def test_a_source_that_cannot_search_still_decodes_the_parameters():
    report = analyze(_NoSearch(case_0x76("x64", "irp").data))
    assert report.complete_hunt is False and report.suspects == []
    assert [p.index for p in report.bugcheck.parameters] == [1, 2, 3, 4]
    assert any("not possible" in w for w in report.warnings)


def test_unknown_bug_check_gets_its_parameters_decoded():
    scenario = case_0x76("x64", "nothing", noise_pages=1)
    scenario.data.bugcheck = type(scenario.data.bugcheck)(0x1234, (1, 2, 3, 4))
    report = run(scenario)
    assert not report.bugcheck.known and report.analysis == "parameters only"
    assert [p.value for p in report.bugcheck.parameters] == [1, 2, 3, 4]
    assert report.suspects == []


@pytest.mark.parametrize("kind", KINDS_0x76)
def test_reports_are_deterministic(kind):
    first = run(case_0x76("x64", kind)).as_dict()
    second = run(case_0x76("x64", kind)).as_dict()
    assert first == second
