"""The leakhunt command as a user runs it: replay, inspect, JSON contract, exit codes, errors."""
import json
import os
import subprocess
import sys

import pytest

import pykd_ext.search
from pykd_ext import __version__
from pykd_ext.cli import main
from pykd_ext.console import EXIT_INPUT, EXIT_NO_SUSPECT, EXIT_SUSPECT, EXIT_USAGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOTS = os.path.join(ROOT, "mocks", "snapshots")


def snapshot(name):
    return os.path.join(SNAPSHOTS, name)


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_replay_names_the_driver_in_text(capsys, arch):
    assert main(["replay", snapshot(f"0x76-irp-{arch}.snap")]) == EXIT_SUSPECT
    out = capsys.readouterr().out
    assert "PROCESS_HAS_LOCKED_PAGES" in out
    assert "Most likely culprit: \\Driver\\leakyflt (leakyflt.sys)" in out
    assert "<link" not in out  # plain text outside WinDbg


@pytest.mark.parametrize("kind, code", [("irp", EXIT_SUSPECT), ("unlock", EXIT_SUSPECT),
                                        ("orphan", EXIT_NO_SUSPECT), ("nothing", EXIT_NO_SUSPECT)])
def test_exit_codes_say_whether_a_driver_was_named(capsys, kind, code):
    assert main(["replay", snapshot(f"0x76-{kind}-x64.snap")]) == code


def test_json_report_keeps_the_documented_contract(capsys):
    assert main(["replay", snapshot("0x76-irp-x64.snap"), "--format", "json"]) == EXIT_SUSPECT
    report = json.loads(capsys.readouterr().out)
    assert report["schema"] == "1.0"
    assert report["bugcheck"]["code"] == "0x76" and report["bugcheck"]["name"] == "PROCESS_HAS_LOCKED_PAGES"
    assert [p["index"] for p in report["bugcheck"]["parameters"]] == [1, 2, 3, 4]
    top = report["suspects"][0]
    assert top["driver"] == "\\Driver\\leakyflt" and top["image"] == "leakyflt.sys" and top["confidence"] == "high"
    assert top["evidence"]
    for mdl in report["mdls"]:
        assert set(mdl) >= {"address", "process", "flags", "pages", "locked", "irps"}
        assert mdl["address"].startswith("0x") and mdl["address"] == mdl["address"].lower()
    for irp in report["irps"]:
        assert set(irp) >= {"address", "current_location", "stack"}
    assert report["locked_pages"] == {"expected": 3, "accounted": 3}
    assert isinstance(report["warnings"], list)


def test_json_output_is_identical_across_runs(capsys):
    main(["replay", snapshot("0x76-orphan-x86.snap"), "--format", "json"])
    first = capsys.readouterr().out
    main(["replay", snapshot("0x76-orphan-x86.snap"), "--format", "json"])
    assert capsys.readouterr().out == first


def test_verbose_shows_rejected_candidates(capsys):
    main(["replay", snapshot("0x76-irp-x64.snap")])
    assert "-v shows them" in capsys.readouterr().out
    main(["replay", snapshot("0x76-irp-x64.snap"), "-v"])
    out = capsys.readouterr().out
    assert "REJECTED CANDIDATES" in out and "is not sizeof(MDL)" in out and "LAYOUTS" in out


def test_inspect_says_what_is_in_a_snapshot(capsys):
    assert main(["inspect", snapshot("0x76-unlock-x86.snap")]) == 0
    out = capsys.readouterr().out
    assert "0x76 PROCESS_HAS_LOCKED_PAGES" in out and "x86" in out and "nt!KiBugCheckDriver" in out
    assert "all of memory" in out


@pytest.mark.parametrize("argv, code, message", [
    (["replay", "/nonexistent/case.snap"], EXIT_INPUT, "no such file"),
    (["replay", ROOT], EXIT_INPUT, "is a directory"),
    (["replay", os.path.join(ROOT, "setup.cfg")], EXIT_INPUT, "neither a leakhunt snapshot"),
    (["replay", snapshot("0x76-irp-x64.snap"), "--pfn-range", "zz"], EXIT_USAGE, "PFN range"),
    (["analyze", "/nonexistent/MEMORY.DMP", "--symbol", "KiBugCheckDriver"], EXIT_USAGE, "NAME=ADDRESS"),
    (["frobnicate"], EXIT_USAGE, "invalid choice"),
])
def test_bad_input_is_one_line_and_a_documented_exit_code(capsys, argv, code, message):
    try:
        result = main(argv)
    except SystemExit as exit_:  # argparse reports usage errors itself
        result = exit_.code
    assert result == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_python_dash_m_and_the_console_script_name(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pykd_ext", "--version"], cwd=ROOT, capture_output=True, text=True)
    engine = pykd_ext.search.preferred_engine
    assert result.returncode == 0 and result.stdout.strip() == f"leakhunt {__version__} ({engine} search engine)"
    result = subprocess.run([sys.executable, "-m", "pykd_ext", "replay", str(tmp_path / "missing.snap")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == EXIT_INPUT
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_bundled_snapshots_match_their_generator():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "mocks", "make_snapshots.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_m_form_code_is_reported_as_the_dump_gives_it(capsys):
    """0x1000007E decodes as 0x7E but automation must see the code the crash really carried."""
    sample = os.path.join(ROOT, "..", "shared", "samples", "triage_x64.dmp")
    if not os.path.exists(sample):
        pytest.skip("the sample dumps (../shared/samples) are not beside this checkout")
    main(["analyze", sample, "--format", "json"])
    bugcheck = json.loads(capsys.readouterr().out)["bugcheck"]
    assert bugcheck["code"] == "0x1000007e" and bugcheck["name"] == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
