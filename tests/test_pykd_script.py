"""scripts/leakhunt.py run the way WinDbg's ``!py leakhunt`` runs it, over the stand-in pykd.

``_control.run_script`` does what the bootstrapper does: sys.argv = [full script path, args...],
sys.stdout/sys.stderr objects with write and writedml, a fresh ``__main__`` namespace, pykd already
initialised with the target loaded. Nothing may escape the script: every test would fail on an exception.
"""
import contextlib
import io
import json
import os
import runpy
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCKS = os.path.join(ROOT, "mocks")
if MOCKS not in sys.path:
    sys.path.insert(0, MOCKS)

import pykd  # noqa: E402,F401  (the stand-in)
from pykd import _control  # noqa: E402

from mocks.scenarios import KINDS_0x76, case_0x76  # noqa: E402
from pykd_ext import windbg  # noqa: E402
from pykd_ext.console import EXIT_INPUT, EXIT_NO_SUSPECT, EXIT_SUSPECT, EXIT_USAGE  # noqa: E402
from pykd_ext.cli import main as leakhunt  # noqa: E402
from pykd_ext.targets.base import BugCheck  # noqa: E402
from pykd_ext.targets.snapshot import load_snapshot, save_snapshot  # noqa: E402

SCRIPT = os.path.join(ROOT, "scripts", "leakhunt.py")


@pytest.fixture(autouse=True)
def no_target():
    yield
    _control.unload()


def bang_py(*args, via="runpy"):
    """``!py leakhunt args...``: returns (stdout, stderr) as the debugger output window received them."""
    return _control.run_script(SCRIPT, args, via=via)


def exit_code(*args):
    """windbg.main's exit code under !py (the script itself discards it there)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _control.DebuggerOutput(), _control.DebuggerOutput()
    try:
        return windbg.main(list(args))
    finally:
        sys.stdout, sys.stderr = saved


def replay_json(path):
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        leakhunt(["replay", path, "--format", "json"])
    return output.getvalue()


# ---- the report inside WinDbg ---------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_report_is_dml_with_debugger_links(arch):
    scenario = case_0x76(arch, "irp")
    _control.load(scenario)
    out, err = bang_py()
    dml = out.written("dml")
    assert out.written("text") == "" and err.written() == ""
    assert "Most likely culprit: \\Driver\\leakyflt (leakyflt.sys) (high confidence)." in dml
    irp = scenario.expected["irps"][0]
    mdl = scenario.expected["locked_mdls"][0]
    for command in (f"!irp {irp:#x} 1", f"dt nt!_MDL {mdl:#x}", f"!pool {mdl:#x} 2", "lmvm leakyflt", "!thread 0x"):
        assert f'<link cmd="{command}' in dml, command
    assert "&gt;" in dml  # the current stack location marker is escaped for DML


@pytest.mark.parametrize("arch", ["x64", "x86"])
@pytest.mark.parametrize("kind", KINDS_0x76)
@pytest.mark.parametrize("types", [True, False], ids=["symbols", "no-symbols"])
def test_every_case_through_the_script(arch, kind, types):
    scenario = case_0x76(arch, kind)
    _control.load(scenario, types=types)
    report = json.loads(bang_py("--format", "json")[0].written("text"))
    culprit = scenario.expected["culprit"]
    assert [s["driver"] for s in report["suspects"][:1]] == ([culprit] if culprit else [])
    assert report["layouts"]["_MDL"] == ("debugger symbols" if types else f"built-in {arch} table")
    if not culprit:
        assert report["verdict"].startswith("No driver is named")


def test_help_version_and_bad_arguments_print_and_return():
    _control.load(case_0x76("x64", "irp"))
    out, err = bang_py("--help")
    assert "usage: !py leakhunt" in out.written("text") and "--pfn-range" in out.written("text")
    assert "--search {native,scan}" in out.written("text") and err.written() == ""
    out, _ = bang_py("--version")
    assert out.written().startswith("leakhunt ")
    for bad in (["--no-such-option"], ["--pfn-range", "zz"], ["--format", "xml"]):
        out, err = bang_py(*bad)
        assert out.written() == "" and err.written().count("\n") == 1
        assert err.written().startswith("leakhunt: error: ")
    assert exit_code("--pfn-range", "9-1") == EXIT_USAGE


def test_verbose_shows_rejected_candidates_and_layout_sources():
    _control.load(case_0x76("x64", "irp"), types=False)
    dml = bang_py("-v")[0].written("dml")
    assert "REJECTED CANDIDATES" in dml and "LAYOUTS" in dml and "_MDL: built-in x64 table" in dml


def test_json_is_plain_text_and_the_exit_code_is_the_cli_s():
    _control.load(case_0x76("x86", "irp"))
    out, _ = bang_py("--format", "json")
    assert out.written("dml") == ""
    report = json.loads(out.written("text"))
    assert report["target"] == {"arch": "x86", "pointer_size": 4, "build": 19045}
    assert report["source"].startswith("WinDbg via pykd 0.3.4.15")
    assert exit_code("--format", "json") == EXIT_SUSPECT
    _control.load(case_0x76("x86", "nothing"))
    assert exit_code("--format", "json") == EXIT_NO_SUSPECT


def test_pfn_range_limits_the_search():
    scenario = case_0x76("x64", "irp")
    mdl_pfns = {scenario.data.physical[m & ~0xFFF] >> 12 for m in scenario.expected["locked_mdls"]}
    below = min(mdl_pfns) - 1  # the frames below every MDL's
    _control.load(scenario)
    report = json.loads(bang_py("--format", "json", "--pfn-range", f"0-{below:x}")[0].written())
    assert report["suspects"] == [] and not [m for m in report["mdls"] if m["locked"]]
    assert report["pfn_range"]["first"] == "0x0" and report["pfn_range"]["last"] == hex(below)
    assert "--pfn-range" in report["verdict"] and "TrackLockedPages" not in " ".join(report["next_steps"])
    low, high = min(mdl_pfns), max(mdl_pfns)
    _control.load(scenario)
    within = json.loads(bang_py("--format", "json", "--pfn-range", f"{low:x}-{high:x}")[0].written())
    assert {m["address"] for m in within["mdls"] if m["locked"]} <= {hex(m) for m in scenario.expected["locked_mdls"]}


# ---- interrupts and errors --------------------------------------------------------------------------

@pytest.mark.parametrize("method, function, call", [
    ("native", "dbgCommand", 2),  # during the second !search
    ("native", "loadBytes", 6),  # while reading the candidate MDLs between the searches
    ("scan", "loadQWords", 2),  # during the physical scan
])
def test_ctrl_break_during_the_search_prints_a_partial_report(method, function, call):
    scenario = case_0x76("x64", "irp")
    _control.load(scenario)
    _control.interrupt(function, call=call)
    out, err = bang_py("--search", method)
    dml = out.written("dml")
    assert "(PARTIAL: interrupted)" in dml and "the hunt was interrupted" in dml and err.written() == ""
    _control.load(scenario)
    _control.interrupt(function, call=call)
    report = json.loads(bang_py("--format", "json", "--search", method)[0].written())
    assert report["partial"] is True and report["suspects"] == []


def test_ctrl_break_before_the_hunt_is_one_line():
    _control.load(case_0x76("x64", "irp"))
    _control.interrupt("getModulesList")
    out, err = bang_py()
    assert out.written() == ""
    assert err.written() == "leakhunt: interrupted (Ctrl+Break) before the hunt started: nothing to report\n"


def test_memory_that_cannot_be_read_is_reported_not_raised():
    scenario = case_0x76("x64", "irp")
    irp_page = scenario.expected["irps"][0] & ~0xFFF
    _control.load(scenario, unreadable=[irp_page, scenario.data.symbols["nt!KiBugCheckDriver"]])
    report = json.loads(bang_py("--format", "json")[0].written())
    assert {"label": "nt!KiBugCheckDriver", "value": "unreadable"}.items() <= report["facts"][0].items()
    assert hex(scenario.expected["irps"][0]) not in {i["address"] for i in report["irps"]}
    _control.load(scenario, unreadable=list(scenario.data.pages))
    out, err = bang_py()
    assert "BUG CHECK 0x76" in out.written("dml") and err.written() == ""


@pytest.mark.parametrize("options, message", [
    ({"kernel": False}, "user-mode target"),
    ({"bugcheck_data": False, "bugcheck_command": False}, "no bug check data"),
])
def test_a_target_that_is_not_a_crashed_kernel_is_one_line(options, message):
    _control.load(case_0x76("x64", "irp"), **options)
    out, err = bang_py()
    assert out.written() == "" and err.written().count("\n") == 1 and message in err.written()
    assert exit_code() == EXIT_INPUT


def test_bug_check_code_zero_and_unknown_codes():
    scenario = case_0x76("x64", "irp")
    _control.load(scenario.data.__class__(**{**scenario.data.__dict__, "bugcheck": BugCheck(0, (0, 0, 0, 0))}))
    assert "has not crashed" in bang_py()[1].written()
    _control.load(scenario.data.__class__(**{**scenario.data.__dict__, "bugcheck": BugCheck(0xA, (0, 2, 0, 0))}))
    out, err = bang_py()
    assert "leakhunt has no hunt for bug check" in out.written("dml") and err.written() == ""


def test_an_internal_error_is_one_line(monkeypatch):
    _control.load(case_0x76("x64", "irp"))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(windbg, "run_analysis", broken)
    out, err = bang_py()
    assert out.written() == "" and err.written().startswith("leakhunt: internal error: RuntimeError: boom.")


def test_progress_lines_during_a_long_search(monkeypatch):
    _control.load(case_0x76("x64", "irp"))
    monkeypatch.setattr(windbg, "PROGRESS_INTERVAL", 0.0)
    assert "leakhunt: searching memory: " in bang_py()[1].written()
    ticks = iter([0.0, 1.0, 6.0, 7.0, 12.0])
    lines = []
    progress = windbg.LineProgress(lines.append, interval=5.0, clock=lambda: next(ticks))
    for done in (10, 20, 30, 40):
        progress(done, 100)
    assert [line.split("%")[0] for line in lines] == ["leakhunt: searching memory: 20", "leakhunt: searching memory: 40"]


# ---- recording in WinDbg, replaying anywhere --------------------------------------------------------

@pytest.mark.parametrize("arch", ["x64", "x86"])
@pytest.mark.parametrize("types", [True, False], ids=["symbols", "no-symbols"])
def test_record_in_windbg_then_replay_gives_the_same_json(tmp_path, arch, types):
    scenario = case_0x76(arch, "irp")
    path = str(tmp_path / "case.snap")
    _control.load(scenario, types=types)
    out, err = bang_py("--record", path, "--format", "json")
    assert "recorded this session to" in err.written()
    recording = load_snapshot(path)
    assert not recording.complete and len(recording.pages) < len(scenario.data.pages)
    assert any(info is not None for info in recording.types.values()) == types
    assert replay_json(path) == out.written()  # byte for byte


def test_record_then_replay_with_the_leakhunt_command(tmp_path):
    path = str(tmp_path / "case.snap")
    _control.load(case_0x76("x86", "unlock"))
    live = bang_py("--record", path, "--format", "json")[0].written()
    result = subprocess.run([sys.executable, "-m", "pykd_ext", "replay", path, "--format", "json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_SUSPECT, result.stderr
    assert result.stdout == live


def test_a_search_that_was_not_possible_replays_the_same(tmp_path):
    path = str(tmp_path / "case.snap")
    _control.load(case_0x76("x64", "irp"), search_extension=False)
    live = bang_py("--record", path, "--format", "json")[0].written()
    assert json.loads(live)["hunt_possible"] is False
    assert load_snapshot(path).failed_searches
    assert replay_json(path) == live


def test_record_refuses_to_overwrite_and_skips_an_interrupted_hunt(tmp_path):
    path = tmp_path / "case.snap"
    path.write_bytes(b"precious")
    _control.load(case_0x76("x64", "irp"))
    out, err = bang_py("--record", str(path))
    assert out.written() == "" and "already exists" in err.written() and path.read_bytes() == b"precious"
    bang_py("--record", str(path), "--force")
    assert load_snapshot(str(path)).searches
    odd = tmp_path / "case\x1b[2J\n.snap"  # a name that would clear the screen and break the line
    odd.write_bytes(b"")
    err = bang_py("--record", str(odd))[1].written()
    assert err.count("\n") == 1 and "\\x1b[2J\\n.snap already exists" in err
    other = tmp_path / "interrupted.snap"
    _control.load(case_0x76("x64", "irp"))
    _control.interrupt("dbgCommand", call=1)
    out, _ = bang_py("--record", str(other))
    assert "the recording was not written" in out.written("dml") and not other.exists()


# ---- the other ways to start it ------------------------------------------------------------------

def test_the_bootstrapper_sets_no_file_variable():
    _control.load(case_0x76("x64", "irp"))
    assert "Most likely culprit" in bang_py(via="exec")[0].written("dml")


def test_run_as_a_module():
    _control.load(case_0x76("x64", "orphan"))
    out = _control.DebuggerOutput()
    saved = sys.argv, sys.stdout, sys.modules.pop("pykd_ext.windbg")  # as in a fresh interpreter
    sys.argv, sys.stdout = ["pykd_ext.windbg", "--format", "json"], out
    try:
        runpy.run_module("pykd_ext.windbg", run_name="__main__", alter_sys=True)
    finally:
        sys.argv, sys.stdout, sys.modules["pykd_ext.windbg"] = saved
    assert json.loads(out.written())["suspects"] == []


def run_standalone(*args, with_pykd=True):
    """``python scripts/leakhunt.py ...`` outside WinDbg, in a fresh interpreter."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = MOCKS if with_pykd else ""
    return subprocess.run([sys.executable, SCRIPT] + list(args), cwd=str(os.path.dirname(ROOT)), env=environment,
                          capture_output=True, text=True, timeout=120)


def test_standalone_opens_the_dump_itself(tmp_path):
    scenario = case_0x76("x64", "irp")
    dump = str(tmp_path / "MEMORY.snap")  # the stand-in's loadDump opens snapshot files
    save_snapshot(scenario.data, dump)
    result = run_standalone(dump, "--format", "json")
    assert result.returncode == EXIT_SUSPECT, result.stderr
    assert json.loads(result.stdout)["suspects"][0]["driver"] == "\\Driver\\leakyflt"
    text = run_standalone(dump)
    assert "<link" not in text.stdout and "Most likely culprit" in text.stdout
    missing = run_standalone(str(tmp_path / "missing.dmp"))
    assert missing.returncode == EXIT_INPUT and missing.stderr.startswith("leakhunt: error: cannot open ")
    assert missing.stderr.count("\n") == 1
    usage = run_standalone()
    assert usage.returncode == EXIT_USAGE and "the following arguments are required: dump" in usage.stderr


def test_without_pykd_it_says_how_to_install_it():
    result = run_standalone("MEMORY.DMP", with_pykd=False)
    assert result.returncode == EXIT_INPUT
    assert result.stderr.startswith("leakhunt: error: pykd is not available") and "pip install pykd" in result.stderr
