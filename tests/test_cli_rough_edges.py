"""The command's rough edges: the file's kind decides the command, bare ``leakhunt``, Ctrl+C while it
starts, --pfn-range against the source, what --version and --help load, the terminal's width, the
``!py`` script outside WinDbg, and what the sdist carries."""
import configparser
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from mocks.dumpwriter import write_dump
from mocks.scenarios import case_0x76
from pykd_ext import sources
from pykd_ext.cli import main
from pykd_ext.console import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_SUSPECT, EXIT_USAGE
from pykd_ext.targets.snapshot import load_snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SNAPSHOT = os.path.join(ROOT, "mocks", "snapshots", "0x76-irp-x64.snap")
SCRIPT = os.path.join(ROOT, "scripts", "leakhunt.py")


def leakhunt(*args, env=None, cwd=ROOT):
    environment = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "pykd_ext"] + list(args), cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dump") / "MEMORY.DMP")
    write_dump(case_0x76("x64", "irp", noise_pages=2).data, path)
    return path


def one_error_line(stderr):
    return stderr.count("\n") == 1 and stderr.startswith("leakhunt: error: ") and "Traceback" not in stderr


# ---- the file's kind decides ---------------------------------------------------------------------

def test_kind_of_file_reads_the_magic(dump, tmp_path):
    assert sources.kind_of_file(dump) == sources.KERNEL_DUMP
    assert sources.kind_of_file(SNAPSHOT) == sources.SNAPSHOT
    (tmp_path / "user.dmp").write_bytes(b"MDMP\x93\xa7" + bytes(64))
    assert sources.kind_of_file(str(tmp_path / "user.dmp")) == sources.USER_MINIDUMP
    assert sources.kind_of_file(os.path.join(ROOT, "setup.cfg")) == sources.OTHER
    assert sources.kind_of_file(str(tmp_path / "missing")) is None and sources.kind_of_file(ROOT) is None


def test_replay_of_a_dump_analyzes_it(dump, capsys):
    assert main(["replay", dump, "--format", "json"]) == EXIT_SUSPECT
    captured = capsys.readouterr()
    assert json.loads(captured.out)["suspects"][0]["driver"] == "\\Driver\\leakyflt"
    assert captured.err.count("\n") == 1 and "is a kernel crash dump" in captured.err and "analyzing it" in captured.err


def test_analyze_of_a_snapshot_replays_it(capsys):
    assert main(["analyze", SNAPSHOT]) == EXIT_SUSPECT
    captured = capsys.readouterr()
    assert "Most likely culprit: \\Driver\\leakyflt" in captured.out
    assert captured.err.count("\n") == 1 and "is a leakhunt snapshot: replaying it" in captured.err
    assert main(["analyze", SNAPSHOT, "--record", "x.snap"]) == EXIT_USAGE
    assert "--record apply to dump files" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["replay", "inspect", "analyze"])
def test_a_file_of_neither_kind_is_refused_in_leakhuntʼs_words(command, tmp_path, capsys):
    other = tmp_path / "notes.txt"
    other.write_text("not a dump\n")
    broken_zip = tmp_path / "broken.snap"
    broken_zip.write_bytes(b"PK\x03\x04" + bytes(100))
    for path in (other, broken_zip):
        assert main([command, str(path)]) == EXIT_INPUT
        err = capsys.readouterr().err
        assert one_error_line(err) and "zip file" not in err.lower() and "File is not" not in err


def test_inspect_of_a_dump_says_to_analyze_it(dump, capsys):
    assert main(["inspect", dump]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert one_error_line(err) and f"leakhunt analyze {dump}" in err


# ---- bare leakhunt, Ctrl+C while starting -----------------------------------------------------------

def test_bare_leakhunt_is_a_one_line_usage_error():
    result = leakhunt()
    assert result.returncode == EXIT_USAGE and result.stdout == "" and one_error_line(result.stderr)
    assert "no command given" in result.stderr


def test_ctrl_c_while_the_commands_load_exits_130_without_a_traceback(tmp_path):
    """numpy is the first module a command imports: a stand-in that raises KeyboardInterrupt while it
    is imported is Ctrl+C pressed during start-up."""
    (tmp_path / "numpy.py").write_text("raise KeyboardInterrupt\n")
    result = leakhunt("replay", SNAPSHOT, env={"PYTHONPATH": str(tmp_path) + os.pathsep + ROOT})
    assert result.returncode == EXIT_INTERRUPTED
    assert result.stderr == "leakhunt: interrupted\n" and result.stdout == ""


# ---- --pfn-range against the source -------------------------------------------------------------------

def test_a_pfn_range_past_the_source_is_a_usage_error_naming_both_ranges(dump, capsys):
    last = load_snapshot(SNAPSHOT).max_pfn
    assert main(["replay", SNAPSHOT, "--pfn-range", f"1000-{last + 1:x}"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert one_error_line(err) and f"1000-{last + 1:x}" in err and f"PFNs 0-{last:x}" in err
    assert main(["analyze", dump, "--pfn-range", "0-fffffffff"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert one_error_line(err) and "0-fffffffff" in err and "its memory is PFNs 0-" in err


def test_the_pfn_range_in_effect_is_in_the_report(dump, capsys):
    assert main(["analyze", dump, "--pfn-range", "1000-1fff", "--format", "json"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["pfn_range"]["first"] == "0x1000"
    main(["replay", SNAPSHOT, "--pfn-range", "1000-1fff"])
    assert "Search limited to page frames 1000-1fff" in capsys.readouterr().out
    main(["replay", SNAPSHOT, "--format", "json"])
    assert json.loads(capsys.readouterr().out)["pfn_range"] is None


# ---- what --version and --help load -------------------------------------------------------------------

LOADED = ("import sys\nfrom pykd_ext.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
          "print(sorted(m for m in ('numpy', 'tabulate', 'pykd_ext.analyses', 'pykd_ext.render.text', "
          "'pykd_ext.targets.snapshot') if m in sys.modules))")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["replay", "--help"]])
def test_version_and_help_load_nothing_they_do_not_use(args):
    result = subprocess.run([sys.executable, "-c", LOADED] + args, cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def test_a_usage_error_loads_no_analysis():
    result = subprocess.run([sys.executable, "-c", LOADED], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def test_a_command_loads_what_it_needs():
    result = subprocess.run([sys.executable, "-c", LOADED, "replay", SNAPSHOT], cwd=ROOT, capture_output=True,
                            text=True)
    assert "'numpy'" in result.stdout and "'pykd_ext.analyses'" in result.stdout


# ---- the terminal's width ----------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_text_wraps_at_the_terminals_width(monkeypatch):
    for columns, longest in (("160", 160), ("72", 72)):
        monkeypatch.setenv("COLUMNS", columns)
        terminal = Terminal()
        monkeypatch.setattr(sys, "stdout", terminal)
        main(["replay", os.path.join(ROOT, "mocks", "snapshots", "0xcb-current-x64.snap")])
        verdict = terminal.getvalue().split("\n\nVERDICT\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert max(len(line) for line in verdict) <= longest
        if columns == "160":
            assert max(len(line) for line in verdict) > 100  # not the pipe's 100 columns


def test_a_pipe_gets_100_columns():
    result = leakhunt("replay", os.path.join(ROOT, "mocks", "snapshots", "0xcb-current-x64.snap"),
                      env={"COLUMNS": "200"})
    verdict = result.stdout.split("\n\nVERDICT\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert 90 < max(len(line) for line in verdict) <= 100


# ---- the !py script outside WinDbg -----------------------------------------------------------------------

def test_the_windbg_script_explains_itself_without_pykd(tmp_path):
    environment = dict(os.environ, PYTHONPATH="")
    result = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=str(tmp_path), env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    assert "pykd is not installed in this Python" in result.stdout and "leakhunt analyze MEMORY.DMP" in result.stdout
    assert "!py leakhunt" in result.stdout
    result = subprocess.run([sys.executable, SCRIPT, "MEMORY.DMP"], cwd=str(tmp_path), env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_INPUT and one_error_line(result.stderr) and "pip install pykd" in result.stderr
    assert "`leakhunt analyze MEMORY.DMP` reads the dump offline" in result.stderr  # what to do instead


def test_with_pykd_the_script_prints_its_own_options(tmp_path):
    environment = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "mocks"))
    result = subprocess.run([sys.executable, SCRIPT, "--help"], cwd=str(tmp_path), env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: leakhunt.py" in result.stdout and "--search" in result.stdout


# ---- packaging ---------------------------------------------------------------------------------------------

def test_the_license_matches_the_metadata():
    metadata = configparser.ConfigParser()
    metadata.read(os.path.join(ROOT, "setup.cfg"))
    assert metadata["metadata"]["license"] == "MIT" and metadata["metadata"]["license_files"].strip() == "LICENSE"
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as handle:
        assert handle.readline().strip() == "MIT License"


def test_the_sdist_carries_what_the_test_command_needs(tmp_path):
    result = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist",
                             "--dist-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "invalid command" in result.stderr:
        pytest.skip("this setuptools cannot build an sdist from setup.py")
    assert result.returncode == 0, result.stderr
    archive = [name for name in os.listdir(tmp_path) if name.endswith(".tar.gz")][0]
    with tarfile.open(tmp_path / archive) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in ("LICENSE", "README.md", "setup.cfg", "pyproject.toml", "pykd_ext/_wordscan.c", ".ci/run",
                   "tests/conftest.py", "tests/test_report_reading.py", "mocks/dumpwriter.py",
                   "mocks/pykd/__init__.py", "mocks/snapshots/0x76-irp-x64.snap", "docs/windbg.md",
                   "fuzz/fuzz_snapshot.py", "benchmarks/bench_startup.py", "benchmarks/README.md",
                   "scripts/leakhunt.py", "tests/data/testkernel/ntkrnlmp.pdb", "tests/data/testkernel/ntoskrnl.exe",
                   "tests/data/symbols/windows/ntkrnlmp.pdb/LICENSE"):
        assert needed in names, needed
    assert not [name for name in names if name.endswith((".pyc", ".so"))]
    data = [os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
            for folder, _, files in os.walk(os.path.join(ROOT, "tests", "data")) for name in files]
    assert data and not set(data) - names  # every test data file
    with zipfile.ZipFile(SNAPSHOT) as bundled:  # the snapshots are archives of their own, carried as they are
        assert "snapshot.json" in bundled.namelist()


# ---- one-line usage errors, one spelling, every command listed ------------------------------------------

@pytest.mark.parametrize("arguments", [["analyze"], ["bogus"], ["analyze", "--frob", "x.dmp"],
                                       ["replay", SNAPSHOT, "--pfn-range", "zz"], ["replay", SNAPSHOT, "--format", "xml"],
                                       ["triage", SNAPSHOT, "--out", "o", "--jobs", "0"], ["inspect"]])
def test_every_usage_error_is_one_line_naming_the_help(arguments):
    result = leakhunt(*arguments)
    assert result.returncode == EXIT_USAGE and one_error_line(result.stderr), result.stderr
    assert "--help lists the options" in result.stderr and result.stdout == ""


def test_bare_leakhunt_names_every_command():
    result = leakhunt()
    for command in ("analyze", "replay", "inspect", "triage"):
        assert f"leakhunt {command}" in result.stderr


def test_inspect_gives_json_too(capsys):
    assert main(["inspect", SNAPSHOT, "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bugcheck"]["code"] == "0x76" and summary["target"]["arch"] == "x64"
    assert summary["pages"] == len(load_snapshot(SNAPSHOT).pages) and summary["complete"] is True


def test_the_command_spells_analyze_one_way(dump, tmp_path):
    outputs = [leakhunt("--help").stdout, leakhunt("triage", "--help").stdout, leakhunt("analyze", "--help").stdout,
               leakhunt("replay", SNAPSHOT, "-v").stdout, leakhunt("analyze", dump, "-v").stdout,
               leakhunt("triage", SNAPSHOT, str(tmp_path / "nothing.txt"), "--out", str(tmp_path / "out")).stderr]
    triaged = leakhunt("triage", SNAPSHOT, "--out", str(tmp_path / "out2"))
    outputs += [triaged.stdout, triaged.stderr]
    for text in outputs:
        assert "analy" + "se" not in text.lower()  # the command is analyze: one spelling


def test_no_report_line_ends_in_a_space(dump):
    for arguments in (["replay", SNAPSHOT, "-v"], ["analyze", dump, "-v"]):
        lines = leakhunt(*arguments).stdout.splitlines()
        assert lines and [line for line in lines if line != line.rstrip()] == []


def test_piped_modules_keep_one_line_per_module(dump):
    text = leakhunt("analyze", dump, "-v").stdout
    table = text.split("\nMODULES\n", 1)[1].split("\n\n", 1)[0].splitlines()
    header, rule, rows = table[0], table[1], table[2:]
    assert header.split() == ["start", "end", "timestamp", "module"]
    assert set(rule.replace(" ", "")) == {"-"} and len(rule.split()) == 4
    assert all(len(row.split()) >= 4 and row.split()[-1].lower().endswith((".sys", ".exe", ".dll")) for row in rows)


def test_sizes_have_one_style():
    from pykd_ext.targets.dumpheader import format_size

    assert [format_size(n) for n in (700, 576597, 1444532, 3 << 30)] == ["700 bytes", "563.1 KiB", "1.4 MiB",
                                                                          "3.0 GiB"]


def test_front_ends_share_the_console_module_not_the_command():
    """The fleet and the WinDbg entry point take exit codes and writers from pykd_ext.console; only the
    command imports the fleet (no import cycle through cli.py)."""
    import ast

    for relative in ("pykd_ext/windbg.py", *(f"pykd_ext/fleet/{n}" for n in os.listdir(os.path.join(ROOT, "pykd_ext",
                                                                                                       "fleet"))
                                             if n.endswith(".py"))):
        with open(os.path.join(ROOT, relative), encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert "cli" not in imported and not any(m.endswith(".cli") for m in imported), relative


def test_inspect_of_a_recording_without_a_module_list_of_its_own(tmp_path, capsys):
    """A recording of a source that had no module list keeps "modules": null (its replay walks the list)."""
    from pykd_ext.targets.snapshot import save_snapshot

    data = load_snapshot(SNAPSHOT)
    data.modules = None
    path = str(tmp_path / "walked.snap")
    save_snapshot(data, path)
    assert main(["inspect", path]) == 0 and "modules:    0" in capsys.readouterr().out
    assert main(["inspect", path, "--format", "json"]) == 0 and json.loads(capsys.readouterr().out)["modules"] == []
