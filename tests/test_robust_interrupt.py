"""Interrupted hunts: Ctrl+C (KeyboardInterrupt) or WinDbg's Ctrl+Break (SystemExit("CTRL+BREAK")) raised
from inside a memory search or a read stops the hunt at once and the report shows what was found so
far, marked partial; the command exits 130."""
import contextlib
import io
import json

import pytest

from fuzz.oracles import unsupported_suspects
from mocks.scenarios import case_0x76
from pykd_ext.analyses import analyze
from pykd_ext.analyses.common import is_interrupt
from pykd_ext.cli import main
from pykd_ext.console import EXIT_INTERRUPTED
from pykd_ext.render.jsonout import render_json
from pykd_ext.render.text import render_text
from pykd_ext.targets.snapshot import SnapshotTarget, save_snapshot

SCENARIO = case_0x76("x64", "irp", noise_pages=2, leaked=3)  # three IRPs: interrupts can fall between them


class Interrupting(SnapshotTarget):
    """Raises ``error`` at the n-th read or search; afterwards counts any further call (there must be none:
    stopping promptly means not reading on)."""

    def __init__(self, data, read_at=None, search_at=None, error=KeyboardInterrupt, headers=True):
        super().__init__(data)
        self.headers = headers  # False: the IRPs are searched for as the debugger's !search does
        self.read_at, self.search_at, self.error = read_at, search_at, error
        self.reads = self.searches = 0
        self.after_interrupt = 0
        self.interrupted = False

    def _tick(self, count, at):
        if self.interrupted:
            self.after_interrupt += 1
        elif at is not None and count == at:
            self.interrupted = True
            raise self.error() if isinstance(self.error, type) else self.error

    @property
    def finds_object_headers(self):
        return self.headers

    def read(self, address, size):
        self.reads += 1
        self._tick(self.reads, self.read_at)
        return super().read(address, size)

    def search_pointers(self, values, pfn_range=None, progress=None):
        self.searches += 1
        self._tick(self.searches, self.search_at)
        return super().search_pointers(values, pfn_range, progress)

    def search_pointers_and_headers(self, values, headers, pfn_range=None, progress=None):
        self.searches += 1
        self._tick(self.searches, self.search_at)
        return super().search_pointers_and_headers(values, headers, pfn_range, progress)


def _calls():
    """How many reads and searches the uninterrupted hunt makes."""
    target = Interrupting(SCENARIO.data)
    analyze(target)
    return target.reads, target.searches


READS, SEARCHES = _calls()


@pytest.mark.parametrize("search_at", range(1, SEARCHES + 1))
def test_an_interrupted_search_gives_a_partial_report_at_once(search_at):
    target = Interrupting(SCENARIO.data, search_at=search_at)
    report = analyze(target)
    assert target.interrupted and report.partial and target.after_interrupt == 0
    assert any("interrupted" in warning for warning in report.warnings)
    assert "PARTIAL" in render_text(report) and json.loads(render_json(report))["partial"] is True


def test_the_mdls_found_before_the_interrupt_are_in_the_report():
    """Interrupted while looking for the holders (in a pass of their own, as inside WinDbg): the locked
    MDLs of the first search are shown."""
    report = analyze(Interrupting(SCENARIO.data, search_at=2, headers=False))
    assert set(SCENARIO.expected["locked_mdls"]) <= {record.address for record in report.mdls}
    assert report.suspects == []  # no holder was found yet: nobody is named


def test_holders_found_before_the_interrupt_are_blamed():
    """Interrupted after the culprit's IRP was validated but before the hunt ended: the partial report
    already names the driver (and every name it gives rests on a validated chain)."""
    named = []
    for read_at in range(1, READS + 1):
        report = analyze(Interrupting(SCENARIO.data, read_at=read_at))
        assert report.partial and not unsupported_suspects(SCENARIO.data, report)
        if report.suspects:
            named.append(report.suspects[0].driver)
    assert named and set(named) == {SCENARIO.expected["culprit"]}


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit("CTRL+BREAK")], ids=["ctrl-c", "ctrl-break"])
def test_an_interrupt_at_every_read_gives_a_partial_report_at_once(error):
    for read_at in range(1, READS + 1):
        target = Interrupting(SCENARIO.data, read_at=read_at, error=error)
        report = analyze(target)
        assert target.interrupted and target.after_interrupt == 0, read_at
        assert report.partial, read_at
        render_text(report, verbose=True)


def test_is_interrupt_knows_ctrl_c_and_ctrl_break_only():
    assert is_interrupt(KeyboardInterrupt())
    assert is_interrupt(SystemExit("CTRL+BREAK"))
    assert not is_interrupt(SystemExit(0)) and not is_interrupt(SystemExit("other"))
    assert not is_interrupt(ValueError("CTRL+BREAK"))


def test_a_system_exit_that_is_not_ctrl_break_is_not_swallowed():
    with pytest.raises(SystemExit):
        analyze(Interrupting(SCENARIO.data, search_at=1, error=SystemExit(3)))


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_command_prints_the_partial_report_and_exits_130(tmp_path, monkeypatch):
    path = str(tmp_path / "case.snap")
    save_snapshot(case_0x76("x64", "orphan", noise_pages=2, leaked=3).data, path)

    def interrupted(self, values, pfn_range=None, progress=None):
        raise KeyboardInterrupt

    # The first pass finds the MDLs; the second, for what holds them, is interrupted.
    monkeypatch.setattr(SnapshotTarget, "search_pointers", interrupted)
    code, out, err = _run(["replay", path])
    assert code == EXIT_INTERRUPTED
    assert "PARTIAL" in out and "MDLs" in out and "Traceback" not in err


def test_an_interrupt_while_loading_exits_130_with_one_line(tmp_path, monkeypatch):
    path = str(tmp_path / "case.snap")
    save_snapshot(SCENARIO.data, path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pykd_ext.targets.snapshot._build", interrupted)
    code, out, err = _run(["replay", path])
    assert code == EXIT_INTERRUPTED and out == "" and err == "leakhunt: interrupted\n"


ORPHANS = case_0x76("x64", "orphan", noise_pages=2)  # MDLs no IRP holds: a second pass looks for their holders


@pytest.mark.parametrize("scenario, search_at, where", [(SCENARIO, 1, "during its pass 1 over memory"),
                                                        (ORPHANS, 2, "during its pass 2 over memory, after 1 had "
                                                                     "finished")], ids=["irp", "orphan"])
def test_a_partial_report_says_how_far_the_hunt_got_and_to_run_it_again(scenario, search_at, where):
    report = analyze(Interrupting(scenario.data, search_at=search_at))
    assert report.partial and report.verdict.startswith(f"The hunt was interrupted {where}:")
    assert "not looked at" in report.verdict and "not a finding" in report.verdict
    assert "No driver is named by the evidence" not in report.verdict
    steps = " ".join(str(step) for step in report.next_steps)
    assert "Run leakhunt again" in steps and "TrackLockedPages" not in steps and "Reboot" not in steps
    text = render_text(report)
    assert "accounted for by locked MDLs found: not counted (the hunt was interrupted)" in text
    assert "REG_DWORD value TrackLockedPages" not in text  # the reboot procedure is not given
    document = json.loads(render_json(report))
    assert document["partial"] is True and document["verdict"] == report.verdict


def test_an_interrupt_after_the_last_pass_says_so():
    """Interrupted while reading what the last pass found (the last read of the hunt)."""
    report = analyze(Interrupting(SCENARIO.data, read_at=READS))
    assert report.partial and f"after its pass {SEARCHES} over memory had finished" in report.verdict
